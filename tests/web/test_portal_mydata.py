"""Issue 15, PIPL art. 45: a holder downloads everything held about them from the self-service
portal (in process, real services and SQLite); the download is audited like a counter export."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from starlette.testclient import TestClient

from tests.web.site import PURCHASES_PER_STUDENT, Person
from tests.web.test_portal_http import _audit_actions, change_password, login, site

__all__ = ["site"]  # the fixture


def test_holder_downloads_own_data_audited(
    site: tuple[TestClient, list[Person]], tmp_path: Path
) -> None:
    client, (alice, bob, *_) = site
    anonymous = client.get("/mydata.json", follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/login"
    login(client, alice)  # LOSS-1: the default password (last 6 of the ID) still logs in
    change_password(client, alice)
    assert "/mydata.json" in client.get("/cards").text
    got = client.get("/mydata.json")
    assert got.status_code == 200
    assert got.headers["content-disposition"].startswith("attachment")
    assert got.headers["cache-control"] == "no-store"
    data = json.loads(got.content.decode("utf-8"))
    assert data["holder"]["national_id"] == alice.national_id
    assert data["holder"]["number"] == alice.number
    assert "password_hash" not in data["holder"]
    assert "national_id_enc" not in data["holder"] and "national_id_hmac" not in data["holder"]
    assert len(data["transfers"]) >= PURCHASES_PER_STUDENT + 1  # purchases and the top-up
    assert bob.national_id not in got.text and bob.number not in got.text
    actions = asyncio.run(_audit_actions(tmp_path / "web.sqlite3"))
    assert ("pii.export", "web") in actions
