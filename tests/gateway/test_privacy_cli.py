"""``onecard privacy`` at the counter (issue 15), in process, on a real SQLite registry whose key
file is the default one beside it: the number never in the file, audited reads with a purpose,
the export file, key rotation, a half-converted registry refused (the gateway too)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from storage import pii
from tests.cli import invoke, onecard, operator_site

NID = "11010519491231002X"


def data(env: dict[str, str], *args: str) -> Any:
    reply = json.loads(onecard(env, "--json", *args))
    assert reply["ok"] is True
    return reply["data"]


def test_counter_privacy_commands(tmp_path: Path) -> None:
    env = operator_site(tmp_path)
    env.pop(pii.ENV_KEY_FILE, None)
    env.pop(pii.ENV_KEY, None)
    registered = data(
        env, "holder", "register-temp", "--name", "张三", "--national-id", NID,
        "--category", "retired_staff", "--valid-through", "2027-06-30", "--application", "离退休处 1",
    )  # fmt: skip
    ref = f"#{registered['holder_id']}"
    key = tmp_path / "r.sqlite3.key"  # the default key file: beside the registry, owner only
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    db = tmp_path / "r.sqlite3"
    raw = b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    assert NID.encode() not in raw
    assert key.read_bytes() not in raw

    found = onecard(env, "holder", "find", NID.lower())  # lookup by the whole number (hash)
    assert "1101**********002X" in found
    assert "证件号码 / ID document" in found
    assert NID not in found
    assert NID not in onecard(env, "holder", "show", ref)
    assert "recent" not in data(env, "holder", "show", ref)  # the history needs a purpose

    missing = invoke(env, "privacy", "show-id", ref)
    assert missing.returncode != 0
    assert "--purpose" in missing.stderr
    shown = onecard(env, "privacy", "show-id", ref, "--purpose", "核对退休证明 ISS-9")
    assert NID in shown
    onecard(env, "privacy", "history", ref, "--purpose", "押金争议 dispute")
    reads = data(env, "privacy", "reads")
    assert {(r["operator"], r["action"], r["reads"]) for r in reads} == {
        ("chief", "pii.read_id", 1),
        ("chief", "pii.read_history", 1),
    }

    out = tmp_path / "exports" / "zhang.json"
    done = data(
        env, "privacy", "export", ref, "--purpose", "本人申请 2026-11-29", "--out", str(out)
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    exported = json.loads(out.read_text(encoding="utf-8"))
    assert exported["holder"]["national_id"] == NID
    assert exported["holder"]["name"] == "张三"
    assert done["records"] >= 3  # the account, receipts none yet, the audit trail
    assert "password_hash" not in exported["holder"]

    first = data(env, "privacy", "status")
    assert first["clear"] == 0
    rotated = data(env, "privacy", "rotate")
    assert rotated["reencrypted"] == 1
    assert rotated["current_key"] != first["current_key"]
    assert len(pii.read_key_file(key).enc_keys) == 2  # the old key stays until --prune
    pruned = data(env, "privacy", "rotate", "--prune")
    assert pruned["dropped"] == [first["current_key"]]
    assert len(pii.read_key_file(key).enc_keys) == 1
    assert NID in onecard(env, "privacy", "show-id", ref, "--purpose", "轮换后核对 check")
    assert data(env, "privacy", "status")["by_key"] == {rotated["current_key"]: 1}

    # an interrupted conversion: one number left in clear -> every command and the gateway
    # refuse until `onecard db upgrade` finishes it
    with sqlite3.connect(db) as con:
        con.execute("UPDATE holders SET national_id = ?", (NID,))
    con.close()
    refused = invoke(env, "holder", "show", ref)
    assert refused.returncode != 0
    assert "onecard db upgrade" in refused.stdout + refused.stderr
    assert NID not in refused.stdout + refused.stderr
    gateway = invoke(env, "serve")
    assert gateway.returncode != 0
    assert "onecard db upgrade" in gateway.stdout + gateway.stderr
    onecard(env, "db", "upgrade")
    assert data(env, "privacy", "status")["clear"] == 0
    trail = data(env, "privacy", "reads")
    assert sum(r["reads"] for r in trail) == 4  # two reads, the export, the read after rotation


def test_retention_dry_run_then_apply(tmp_path: Path) -> None:
    env = operator_site(tmp_path)
    registered = data(
        env, "holder", "register-temp", "--name", "李四", "--national-id", NID,
        "--category", "retired_staff", "--valid-through", "2027-06-30", "--application", "离退休处 2",
    )  # fmt: skip
    hid = registered["holder_id"]
    db = tmp_path / "r.sqlite3"
    with sqlite3.connect(db) as con:  # deregistered four years ago (the counter did it then)
        con.execute(
            "UPDATE holders SET status = 'deregistered', deregistered_at = ? WHERE id = ?",
            ("2022-01-01 00:00:00.000000", hid),
        )
    con.close()
    plan = data(env, "privacy", "retention")
    assert [(r["holder_id"], r["purged"]) for r in plan] == [(hid, False)]
    assert data(env, "privacy", "retention", "--after-termination-days", "3650") == []
    assert invoke(env, "privacy", "retention", "--apply").returncode != 0  # needs --archive-dir
    archive = tmp_path / "archive"
    applied = data(env, "privacy", "retention", "--apply", "--archive-dir", str(archive))
    assert [(r["holder_id"], r["purged"]) for r in applied] == [(hid, True)]
    (sealed,) = archive.iterdir()
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    body = sealed.read_text().strip()
    assert NID not in body and "李四" not in body  # the archive is encrypted
    restored = json.loads(pii.open_bytes(body, pii.AAD_EXPORT))
    assert restored["holder"]["national_id"] == NID
    raw = b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    assert "李四".encode() not in raw  # nor the name in the registry file (secure_delete)
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT name, national_id_enc, national_id_masked, purged_at FROM holders WHERE id = ?",
            (hid,),
        ).fetchone()
    con.close()
    assert row[0] != "李四" and row[1] is None and row[2] is None and row[3] is not None
    assert data(env, "privacy", "retention") == []


def test_a_configured_key_file_is_created_first_and_used(tmp_path: Path) -> None:
    key = tmp_path / "etc" / "pii.key"
    env = {
        **os.environ,
        "ONECARD_DB": str(tmp_path / "r.sqlite3"),
        "ONECARD_SESSION": str(tmp_path / "s.json"),
        pii.ENV_KEY_FILE: str(key),
    }
    env.pop(pii.ENV_KEY, None)
    init = ("init", "--admin", "chief", "--name", "王科长", "--password-stdin")
    missing = invoke(env, *init, stdin="First-pass-1\n")
    assert missing.returncode != 0
    assert f"onecard privacy init-key {key}" in missing.stdout + missing.stderr
    made = data(env, "privacy", "init-key", str(key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert invoke(env, "privacy", "init-key", str(key)).returncode != 0  # never overwritten
    onecard(env, *init, stdin="First-pass-1\n")
    assert not (tmp_path / "r.sqlite3.key").exists()  # the configured file, not a default one
    assert pii.read_key_file(key).current_kid == made["key"]


def test_a_refused_read_never_echoes_an_id_typed_into_the_purpose(tmp_path: Path) -> None:
    env = operator_site(tmp_path)
    done = invoke(env, "privacy", "show-id", "#999", "--purpose", f"核对 {NID} 的申请")
    assert done.returncode != 0
    assert "#999" in done.stdout + done.stderr
    assert NID not in done.stdout + done.stderr
