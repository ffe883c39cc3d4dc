"""Finding holders and cards at the counter (issue 10): `onecard find` by number, a part of the
name (no pinyin), a whole ID document (shown masked), card serial or UID; deregistered holders
stay findable; the search text is data, never a pattern."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cli import invoke, onecard
from tests.gateway.clerk_site import counter_site, register_anna


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = counter_site(tmp_path_factory.mktemp("clerk-find"))
    onecard(env, "card", "issue-temp", "2026000001", "--uid", "04:a1:b2:c3:d4:e5:f6")
    second = json.loads(onecard(env, "--json", "card", "issue-temp", "2026000002"))
    serial = second["data"]["card"]["serial"]
    onecard(env, "card", "terminate", serial, "--reason", "dropout", "--id-doc", "2026000002")
    register_anna(env)
    return env


def found(env: dict[str, str], text: str) -> list[dict[str, Any]]:
    reply = json.loads(onecard(env, "find", text, "--json"))
    assert reply["ok"] is True
    hits: list[dict[str, Any]] = reply["data"]["hits"]
    return hits


def test_by_number_name_and_id_document(site: dict[str, str]) -> None:
    [hit] = found(site, "2026000001")
    assert (hit["name"], hit["matched_by"]) == ("王芳", "number")
    assert hit["cards"][0]["uid"] == "04A1B2C3D4E5F6"
    [hit] = found(site, "２０２６０００００１")  # typed with a Chinese input method
    assert hit["number"] == "2026000001"
    assert [h["number"] for h in found(site, "王")] == ["2026000001"]
    assert [h["name"] for h in found(site, "anna")] == ["Anna Schmidt"]  # any case

    [hit] = found(site, "511502200703010107")
    assert hit["matched_by"] == "id_doc" and hit["id_doc_masked"] == "5115**********0107"
    text = onecard(site, "find", "511502200703010107")
    assert "511502200703010107" not in text and "5115**********0107" in text
    [hit] = found(site, "c01x00t47")  # a passport, as typed
    assert hit["name"] == "Anna Schmidt" and "C01X00T47" not in json.dumps(hit)


def test_by_card_serial_and_uid_and_deregistered(site: dict[str, str]) -> None:
    serial = found(site, "2026000001")[0]["cards"][0]["serial"]
    [hit] = found(site, serial)
    assert (hit["number"], hit["matched_by"]) == ("2026000001", "serial")
    [hit] = found(site, "04A1B2C3D4E5F6")
    assert (hit["number"], hit["matched_by"]) == ("2026000001", "uid")
    [hit] = found(site, "2026000002")  # dropped out: terminated, still findable
    assert hit["status"] == "deregistered"
    assert hit["cards"][0]["state"] == "terminated"
    assert all(len(line) <= 80 for line in onecard(site, "find", "王芳").splitlines())
    text = onecard(site, "holder", "find", "李伟")
    assert "已注销 deregistered" in text and serial not in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_nothing_found_and_no_wildcards(site: dict[str, str]) -> None:
    for text in ("%", "_", "王%", "nobody"):
        done = invoke(site, "--json", "find", text)
        assert done.returncode == 2, (text, done.stdout)
        error = json.loads(done.stdout)["error"]
        assert error["code"] == "not_found" and error["typed"] == {"text": text}
    done = invoke(site, "find", "x" * 65)
    assert done.returncode == 2 and "too long" in done.stderr
