"""Issue 15: national IDs encrypted at rest, audited reads, export, rotation, retention — the same
checks on a real SQLite file and on the local PostgreSQL (its own database, dropped after).

SQLite is checked by grepping the raw bytes of the registry file and its WAL; PostgreSQL by
casting every row of every table to text."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import insert

from gateway.services.base import Actor, Context, FixedClock
from gateway.services.center import CardCenter
from gateway.services.holders import check_holder_password
from gateway.services.privacy import (
    PURGED_NAME,
    PURGED_SNAPSHOT,
    PrivacyService,
    RetentionDue,
    RetentionPolicy,
    clean_purpose,
)
from protocol.cards.identity import mask_id_doc
from protocol.errors import AccessDenied, ErrorCode, InvalidInput, OnecardError
from protocol.ledger import deposit
from protocol.types import CardKind, HolderKind, Permission
from storage import pii, piidb
from storage import schema as s
from storage.engine import open_engines
from storage.migrate import upgrade
from storage.pgtap import PgTapExecutor
from storage.sql import SqlRegistry
from storage.tapwriter import SqliteTapWriter
from tests.conftest import T0, Counter, student_rows
from tests.gateway.services import helpers as h
from tests.storage.test_postgres_contract import PG_HOST, PG_PORT, PG_USER, pg_server, pg_url

__all__ = ["pg_server", "pg_url"]  # fixtures

pytestmark = pytest.mark.asyncio
RawText = Callable[[], Awaitable[bytes]]


@pytest.fixture(autouse=True)
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "keys" / "pii.key"
    pii.write_key_file(path, pii.new_keyring())
    monkeypatch.setenv(pii.ENV_KEY_FILE, str(path))
    monkeypatch.delenv(pii.ENV_KEY, raising=False)
    return path


async def _counter(registry: SqlRegistry, path: Path) -> Counter:
    clock = FixedClock(T0)
    center = CardCenter.build(Context(registry=registry, clock=clock))
    admin = Actor(name="chief", permissions=frozenset(Permission), operator_id=1)
    await center.stock.purchase(admin, CardKind.TEMP, 100, "2026")
    await center.stock.requisition(admin, CardKind.TEMP, 50, issued_by="王科长", usage_note="t")
    await center.receipts.add_book(admin, "B0001", 1, 50)
    return Counter(center, clock, registry, admin, path)


def sqlite_raw(path: Path) -> RawText:
    async def read() -> bytes:
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())

    return read


def pg_raw(url: str) -> RawText:
    async def read() -> bytes:
        database = url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=database)
        try:
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            out = []
            for t in tables:
                rows = await conn.fetch(f'SELECT CAST(t AS text) AS r FROM "{t[0]}" t')
                out += [r["r"] for r in rows]
            return "\n".join(out).encode()
        finally:
            await conn.close()

    return read


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, RawText]:
    """A registry target and how to read everything it stores (raw file bytes on SQLite)."""
    if request.param == "sqlite":
        path = tmp_path / "r.sqlite3"
        return str(path), sqlite_raw(path)
    url = request.getfixturevalue("pg_url")
    return url, pg_raw(url)


async def test_ids_sealed_lookups_audited_reads_export_rotation_retention(
    site: tuple[str, RawText], tmp_path: Path, key_file: Path
) -> None:
    target, raw = site
    reg = await SqlRegistry.open(target, migrate=True)
    try:
        c = await _counter(reg, tmp_path / "r.sqlite3")
        rows = student_rows(3)
        report = await c.center.holders.import_roster(c.admin, HolderKind.STUDENT, rows)
        visitor, card = await h.visitor_with_temp(c)
        assert visitor.national_id is not None and visitor.number is not None
        numbers = [r.national_id for r in rows if r.national_id] + [visitor.national_id]
        dump = await raw()
        for nid in numbers:  # a stolen registry without the key reveals no ID number
            assert nid.encode() not in dump
        assert mask_id_doc(visitor.national_id).encode() in dump
        async with reg.read() as tx:  # lookup by the keyed hash
            (found,) = await tx.holders_where(national_id=rows[1].national_id)
        assert found.id == report.holder_ids[1]
        assert found.national_id == rows[1].national_id
        # ISS-11 work number and LOSS-1 default password (last 6) still work
        assert visitor.number == visitor.national_id[-6:]
        who = await c.center.holders.authenticate(
            visitor.number, visitor.national_id[-6:], channel="web"
        )
        assert who.holder_id == visitor.id
        with pytest.raises(OnecardError) as dup:  # uniqueness through the hash
            await c.center.cards.register_temporary_holder(
                c.op, name="重复", national_id=visitor.national_id.lower(),
                category=visitor.category, valid_through=T0.date() + timedelta(days=90),
                application_ref="x-1",
            )  # fmt: skip
        assert dup.value.code is ErrorCode.DUPLICATE

        # audited reads with a purpose; a read without one is refused
        svc = PrivacyService(c.center.ctx)
        student = report.holder_ids[0]
        with pytest.raises(InvalidInput):
            await svc.read_id(c.op, student, "  ")
        with pytest.raises(AccessDenied):
            await svc.read_id(h.actor("guest"), student, "好奇 curious")
        assert await svc.read_id(c.op, student, f"核对 {rows[0].national_id} 补卡") == (
            rows[0].national_id
        )
        history = await svc.history(c.op, visitor.id, "争议交易核查 dispute")
        assert 3000 in [x["amount"] for x in history]  # the ISS-10 deposit
        logged = await h.audit(c, "pii.read_id")
        assert len(logged) == 1
        assert logged[0]["actor"] == "chief"
        assert rows[0].national_id not in (logged[0]["after"] or "")  # masked in the purpose
        assert "核对" in logged[0]["after"]
        counts = {(r.operator, r.action): r.reads for r in await svc.reads_report()}
        assert counts == {("chief", "pii.read_id"): 1, ("chief", "pii.read_history"): 1}
        assert await svc.reads_report(since=T0 + timedelta(seconds=1)) == []
        assert len(await svc.reads_report(since=T0, until=T0 + timedelta(days=1))) == 2

        # the export holds every record of the holder
        out = await svc.export(c.op, visitor.id, "本人书面申请 2026-01")
        assert out.holder["national_id"] == visitor.national_id
        assert "password_hash" not in out.holder and "national_id_enc" not in out.holder
        for table in ("accounts", "cards", "receipts", "holder_archive", "holder_sessions"):
            assert len(out.tables[table]) == await h.count(c, table, holder_id=visitor.id)
        assert out.tables["accounts"] and out.tables["receipts"]
        assert [x["serial"] for x in out.tables["cards"]] == [card.serial]
        assert len(out.tables["card_events"]) == await h.count(c, "card_events", card_id=card.id)
        mine = {a["id"] for a in out.tables["accounts"]}
        every = await h.rows(c, "SELECT id, source, dest FROM transfers")
        assert {t["id"] for t in out.tables["transfers"]} == {
            t["id"] for t in every if t["source"] in mine or t["dest"] in mine
        }
        assert any(a["action"] == "holder.register" for a in out.tables["audit_log"])
        self_export = await svc.export(who, visitor.id)  # the holder's own request: no purpose
        assert self_export.count() == out.count() + 1  # and it shows who read their data
        assert [a["actor"] for a in self_export.tables["audit_log"]][-2:] == ["chief", "chief"]
        assert len(await h.audit(c, "pii.export")) == 2

        # key rotation re-encrypts every number; the old key can then go
        old = pii.read_key_file(key_file)
        new = pii.Keyring(old.hmac_key, (pii.new_keyring().enc_keys[0], *old.enc_keys))
        pii.write_key_file(key_file, new)
    finally:
        await reg.close()
    reg = await SqlRegistry.open(target)
    try:
        assert await piidb.rekey(reg.engines.writer, new) == len(numbers)
        assert (await piidb.status(reg.engines.writer))["by_key"] == {new.current_kid: 4}
    finally:
        await reg.close()
    pii.write_key_file(key_file, pii.Keyring(new.hmac_key, new.enc_keys[:1]))
    pii._KNOWN.pop(old.current_kid)  # a process that never saw the old key
    reg = await SqlRegistry.open(target)
    try:
        async with reg.read() as tx:
            (again,) = await tx.holders_where(national_id=visitor.national_id)
        assert again.national_id == visitor.national_id
        c = Counter(
            CardCenter.build(Context(registry=reg, clock=c.clock)), c.clock, reg, c.admin, c.path
        )
        svc = PrivacyService(c.center.ctx)

        # retention: the dry run lists the holder once the period has passed; the purge keeps
        # the ledger balanced and leaves the holder unreadable
        await c.center.cards.refund(
            c.op, card.serial, card_ok=True, presented_id=visitor.number,
            receipt_no=await h.deposit_receipt_no(c, visitor.id),
        )  # fmt: skip
        policy = RetentionPolicy(after_graduation_days=365, after_termination_days=730)
        assert await svc.retention_plan(policy) == []
        c.clock.advance(hours=24 * 31)  # past a 30-day graduation period, not the refund's
        forged = RetentionDue(visitor.id, "访*", "graduation", c.clock.now(), c.clock.now())
        short = RetentionPolicy(after_graduation_days=30, after_termination_days=730)
        with pytest.raises(InvalidInput):  # the reason is the archive's, not the caller's
            await svc.purge(c.op, forged, short)
        c.clock.advance(hours=24 * 700)
        (due,) = await svc.retention_plan(policy)
        assert (due.holder_id, due.reason, due.blocked) == (visitor.id, "refund", None)
        with pytest.raises(AccessDenied):
            await svc.purge(h.actor("clerk", Permission.CARD_HANDLING), due, policy)
        ledger = await h.rows(c, "SELECT * FROM transfers ORDER BY id")
        await svc.purge(c.op, due, policy)
        await piidb.checkpoint(reg.engines.writer)
        gone = await h.holder(c, visitor.id)
        assert (gone.name, gone.national_id, gone.number, gone.photo_ref) == (
            PURGED_NAME,
            None,
            None,
            None,
        )
        (row,) = await h.find(c, "holders", id=visitor.id)
        assert row["national_id_enc"] is None and row["national_id_masked"] is None
        (snap,) = await h.find(c, "holder_archive", holder_id=visitor.id)
        assert snap["snapshot"] == PURGED_SNAPSHOT
        total = await h.rows(c, "SELECT COALESCE(SUM(balance), 0) AS s FROM accounts")
        assert total[0]["s"] == 0  # Σ = 0: every transfer is still there
        assert await h.rows(c, "SELECT * FROM transfers ORDER BY id") == ledger  # untouched
        assert await h.count(c, "transfers", dest=deposit(visitor.id)) == 1
        assert await svc.retention_plan(policy) == []
        (purged,) = await h.audit(c, "pii.purge")
        assert purged["entity_id"] == str(visitor.id)
        dump = await raw()
        assert visitor.national_id.encode() not in dump
        assert mask_id_doc(visitor.national_id).encode() not in dump
        assert str(visitor.application_ref).encode() not in dump
    finally:
        await reg.close()


async def test_conversion_in_place_resumes_and_half_converted_is_refused(
    site: tuple[str, RawText], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, raw = site
    engines = open_engines(target)
    rows = student_rows(5)
    try:
        await upgrade(engines.writer)
        async with engines.writer.begin() as conn:  # a registry from before issue 15
            await conn.execute(
                insert(s.holders),
                [
                    {
                        "kind": "student", "category": "student", "number": r.student_number,
                        "name": r.name, "national_id": r.national_id, "created_at": T0,
                    }
                    for r in rows
                ],
            )  # fmt: skip
        ring = pii.load_keyring(str(engines.writer.url.render_as_string(hide_password=False)))
        monkeypatch.setattr(piidb, "BATCH", 2)
        assert await piidb.convert(engines.writer, ring, max_batches=1) == 2  # interrupted
    finally:
        await engines.dispose()
    with pytest.raises(piidb.HalfConverted) as refused:
        await SqlRegistry.open(target)
    assert "onecard db upgrade" in refused.value.message_en
    reg = await SqlRegistry.open(target, migrate=True)  # resumes where it stopped
    try:
        assert await piidb.status(reg.engines.writer) == {
            "clear": 0,
            "by_key": {ring.current_kid: 5},
        }
        async with reg.read() as tx:
            for r in rows:
                (one,) = await tx.holders_where(national_id=r.national_id)
                assert one.number == r.student_number
    finally:
        await reg.close()
    dump = await raw()
    for r in rows:
        assert str(r.national_id).encode() not in dump


async def test_wrong_key_is_refused(tmp_path: Path, key_file: Path) -> None:
    target = tmp_path / "r.sqlite3"
    reg = await SqlRegistry.open(target, migrate=True)
    await reg.close()
    other = tmp_path / "other.key"
    pii.write_key_file(other, pii.new_keyring())
    _copy(other, key_file)
    with pytest.raises(pii.PiiKeyError) as wrong:
        await SqlRegistry.open(target)
    assert "not this registry's" in wrong.value.message_en
    _loosen(key_file)
    with pytest.raises(pii.PiiKeyError, match="chmod"):
        await SqlRegistry.open(target)


async def test_sealed_values_are_authenticated_and_keys_validated() -> None:
    ring = pii.new_keyring()
    token = ring.seal("11010519491231002x")
    assert pii.open_id(token) == "11010519491231002X"
    assert ring.lookup("11010519491231002x") == ring.lookup(" 11010519491231002X")
    head, body = token.rsplit(":", 1)
    flipped = head + ":" + body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(pii.PiiKeyError, match="authentication"):
        pii.open_id(flipped)
    with pytest.raises(pii.PiiKeyError):
        pii.open_bytes(token, b"another column")
    with pytest.raises(pii.PiiKeyError):
        pii.Keyring(ring.enc_keys[0], ring.enc_keys)  # the lookup key is not an encryption key
    with pytest.raises(pii.PiiKeyError):
        pii.parse("enc " + "A" * 44, "test")  # no hmac line
    env_form = f"hmac:{pii._b64(ring.hmac_key)},enc:{pii._b64(ring.enc_keys[0])}"
    assert pii.parse(env_form, "env").current_kid == ring.current_kid


def _copy(src: Path, dst: Path) -> None:
    dst.write_text(src.read_text())


def _loosen(path: Path) -> None:
    path.chmod(0o644)


async def test_a_key_added_by_another_process_is_picked_up(tmp_path: Path, key_file: Path) -> None:
    """After `privacy rotate` in another process, a value under the new key still decrypts in a
    process started before it: the key file is read again once."""
    started = pii.read_key_file(key_file)
    rotated = pii.Keyring(started.hmac_key, (pii.new_keyring().enc_keys[0], *started.enc_keys))
    token = rotated.seal("11010519491231002X")
    pii.write_key_file(key_file, rotated)
    pii._KNOWN.pop(rotated.current_kid)
    assert pii.open_id(token) == "11010519491231002X"
    pii._KNOWN.pop(rotated.current_kid)
    pii.write_key_file(key_file, started)  # a key that is nowhere: refused, never guessed
    with pytest.raises(pii.PiiKeyError, match="no key"):
        pii.open_id(token)


async def test_the_tap_path_reads_the_number_for_the_default_password(
    site: tuple[str, RawText], tmp_path: Path
) -> None:
    """LOSS-1 at a kiosk: the gateway's tap transaction (SQLite writer thread or PostgreSQL
    executor) reads the holder with the number decrypted, so the default password still works."""
    target, _ = site
    reg = await SqlRegistry.open(target, migrate=True)
    executor: SqliteTapWriter | PgTapExecutor
    try:
        c = await _counter(reg, tmp_path / "r.sqlite3")
        visitor, _card = await h.visitor_with_temp(c)
        if target.startswith("postgresql"):
            executor = PgTapExecutor(target)
            await executor.start()
        else:
            executor = SqliteTapWriter(target)
            executor.start()
        try:
            seen = await executor.run(lambda tx: tx.get_holder(visitor.id))
        finally:
            await executor.close()
        assert seen.national_id == visitor.national_id
        assert check_holder_password(seen, str(visitor.national_id)[-6:])
        assert not check_holder_password(seen, "000000")
    finally:
        await reg.close()


async def test_purpose_masks_numbers_not_words() -> None:
    """A purpose keeps the clerk's words ("transaction dispute", "identity") and masks what
    looks like a document number typed into it (an ID, a passport number)."""
    nid = "11010519491231002X"
    assert clean_purpose("transaction dispute identity check") == (
        "transaction dispute identity check"
    )
    text = clean_purpose(f"核对 {nid} passport E12345678 ISS-9")
    assert nid not in text and mask_id_doc(nid) in text
    assert "E12345678" not in text and "ISS-9" in text and "passport" in text
    with pytest.raises(InvalidInput):
        clean_purpose("  ab ")


async def test_purge_pseudonymises_the_collection_register_and_audit_values_keeps_receipts(
    site: tuple[str, RawText], tmp_path: Path
) -> None:
    """docs/privacy.md §7 (migration 0011): after the purge the collection register names no
    collector and the audit entries about the holder keep who/what/when without the personal
    values (an EXC-4 name change, a purpose naming them); receipts keep the payer (FEE-2/3,
    accounting records). The append-only triggers allow exactly that change, once."""
    target, raw = site
    reg = await SqlRegistry.open(target, migrate=True)
    try:
        c = await _counter(reg, tmp_path / "r.sqlite3")
        svc = PrivacyService(c.center.ctx)
        visitor, card = await h.visitor_with_temp(c)
        first = visitor.name
        await c.center.holders.update(c.op, visitor.id, {"name": "更名后乙"}, reason="更名 EXC-4")
        await svc.read_id(c.op, visitor.id, f"核对{first}的更名申请")
        async with reg.transaction() as tx:  # a class monitor collected the card (ISS-4)
            await tx.insert(
                "hand_overs",
                {
                    "card_id": card.id, "rule": "ISS-4", "at": c.clock.now(), "actor": "chief",
                    "collector_name": "班长王五", "collector_doc": "2024000009",
                    "collector_is_holder": False, "signed": True,
                },
            )  # fmt: skip
        await c.center.cards.refund(
            c.op, card.serial, card_ok=True, presented_id=visitor.number,
            receipt_no=await h.deposit_receipt_no(c, visitor.id),
        )  # fmt: skip
        c.clock.advance(hours=24 * 800)
        policy = RetentionPolicy(after_graduation_days=365, after_termination_days=730)
        (due,) = await svc.retention_plan(policy)
        await svc.purge(c.op, due, policy)
        await piidb.checkpoint(reg.engines.writer)

        (hand,) = await h.find(c, "hand_overs", card_id=card.id)
        assert (hand["collector_name"], hand["collector_doc"]) == (PURGED_NAME, None)
        assert (hand["rule"], hand["signed"], hand["actor"]) == ("ISS-4", True, "chief")
        (changed,) = await h.audit(c, "holder.update")
        assert changed["redacted_at"] is not None and changed["actor"] == c.op.name
        assert first not in str(changed["before"]) and "更名后乙" not in str(changed["after"])
        assert "更名 EXC-4" in str(changed["after"])  # the reason stays
        (read,) = await h.audit(c, "pii.read_id")
        assert first not in str(read["after"]) and "更名申请" in str(read["after"])
        (purged,) = await h.audit(c, "pii.purge")
        assert h.loads(purged["after"])["hand_overs_pseudonymised"] == 1
        payers = {r["payer"] for r in await h.find(c, "receipts", holder_id=visitor.id)}
        assert payers == {first}  # FEE-2/3: kept for finance
        dump = await raw()
        for gone in ("更名后乙", "班长王五", "2024000009", f"核对{first}"):
            assert gone.encode() not in dump, gone
        # the triggers: nothing else may change, and an entry is rewritten once only
        for sql in (
            "UPDATE audit_log SET action = 'x' WHERE id = :i",
            "UPDATE audit_log SET after = NULL, redacted_at = at WHERE id = :i",
            "UPDATE hand_overs SET signed = false WHERE card_id = :c",
            "DELETE FROM audit_log WHERE id = :i",
        ):
            with pytest.raises(Exception, match="append-only"):
                async with reg.transaction() as tx:
                    await tx.rows(sql, {"i": changed["id"], "c": card.id})
    finally:
        await reg.close()
