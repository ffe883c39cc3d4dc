"""The registry side of storage/pii.py: the key check, the in-place conversion, re-encryption.

- :func:`attach` runs when a registry opens: the lookup key must be the one the registry was
  written with (``pii_meta``); ``onecard db upgrade`` (``migrate=True``) then converts every clear
  number left, and any other open refuses a registry that still holds one (a conversion that was
  interrupted: finish it with ``onecard db upgrade``).
- :func:`convert` and :func:`rekey` work in batches that each commit: killed half-way, the next
  run carries on where the last committed batch ended.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from protocol.cards.identity import mask_id_doc
from protocol.errors import ErrorCode, OnecardError
from storage import schema as s
from storage.pii import (
    AAD_NATIONAL_ID,
    Keyring,
    PiiKeyError,
    holder_row,
    kid_counts,
    load_keyring,
    open_bytes,
)

BATCH = 500
CHECK = "lookup_key_check"
log = logging.getLogger("onecard.storage.pii")
h = s.holders


class HalfConverted(OnecardError):
    code = ErrorCode.UNAVAILABLE


async def attach(engine: AsyncEngine, keyring: Keyring, *, convert_now: bool) -> None:
    await check_key(engine, keyring)
    if convert_now:
        done = await convert(engine, keyring)
        if done:
            await checkpoint(engine)
            log.info("加密了 %d 个证件号码 / encrypted %d ID numbers in place", done, done)
        return
    async with engine.connect() as conn:
        clear = (
            await conn.execute(select(h.c.id).where(h.c.national_id.is_not(None)).limit(1))
        ).first()
    if clear is not None:
        raise HalfConverted(
            "登记库中仍有明文证件号码（加密转换未完成），请先执行 onecard db upgrade",
            "the registry still holds ID numbers in clear (an unfinished conversion): run"
            " `onecard db upgrade` to finish it first",
        )


async def check_key(engine: AsyncEngine, keyring: Keyring) -> None:
    """Remember the lookup key's check value on first use; refuse another key afterwards."""
    mine = keyring.check_value()
    query = select(s.pii_meta.c.value).where(s.pii_meta.c.name == CHECK)
    async with engine.connect() as conn:
        stored = (await conn.execute(query)).scalar_one_or_none()
    if stored is None:
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        async with engine.begin() as conn:
            # two gateways starting on a new registry: the first check value wins, the other
            # is compared with it like any later start
            first = dialect.insert(s.pii_meta).values(name=CHECK, value=mine)
            await conn.execute(first.on_conflict_do_nothing())
            stored = (await conn.execute(query)).scalar_one()
    if stored != mine:
        raise PiiKeyError(
            f"个人信息密钥与登记库不符（{keyring.source}），拒绝运行",
            f"the personal-data key ({keyring.source}) is not this registry's: refusing to run",
        )


async def convert(engine: AsyncEngine, keyring: Keyring, *, max_batches: int | None = None) -> int:
    """Encrypt clear numbers, ``BATCH`` rows per committed transaction; how many."""
    return await _in_batches(
        engine,
        select(h.c.id, h.c.national_id).where(h.c.national_id.is_not(None)),
        keyring.columns,
        max_batches,
    )


async def rekey(engine: AsyncEngine, keyring: Keyring) -> int:
    """Re-encrypt every number not under the current key (key rotation); how many."""
    current = f"pii1:{keyring.current_kid}:%"
    return await _in_batches(
        engine,
        select(h.c.id, h.c.national_id_enc).where(
            h.c.national_id_enc.is_not(None), h.c.national_id_enc.not_like(current)
        ),
        lambda token: {"national_id_enc": keyring.seal(_open({"national_id_enc": token}))},
        None,
    )


async def _in_batches(
    engine: AsyncEngine,
    query: Select[Any],
    new_values: Callable[[str], dict[str, Any]],
    max_batches: int | None,
) -> int:
    """Rewrite the rows ``query`` finds, ``BATCH`` per committed transaction, until none is
    left (or ``max_batches``): killed half-way, a rerun carries on. How many rows."""
    total = batches = last = 0
    while max_batches is None or batches < max_batches:
        async with engine.begin() as conn:
            page = query.where(h.c.id > last).order_by(h.c.id).limit(BATCH)
            rows = (await conn.execute(page)).all()
            if not rows:
                break
            await conn.execute(
                update(h).where(h.c.id == bindparam("hid")),
                [{"hid": r[0], **new_values(r[1])} for r in rows],
            )
        total += len(rows)
        batches += 1
        last = rows[-1][0]  # keyset: each batch starts where the last one ended
    return total


async def status(engine: AsyncEngine) -> dict[str, Any]:
    """How many numbers are clear, and how many under each key id."""
    async with engine.connect() as conn:
        clear = (
            await conn.execute(
                select(func.count()).select_from(h).where(h.c.national_id.is_not(None))
            )
        ).scalar_one()
        tokens = (
            await conn.execute(select(h.c.national_id_enc).where(h.c.national_id_enc.is_not(None)))
        ).scalars()
        return {"clear": int(clear), "by_key": kid_counts(tokens)}


def _open(row: dict[str, Any]) -> str:
    value = holder_row(dict(row, national_id=None))["national_id"]
    assert isinstance(value, str)
    return value


def decrypt_back(conn: Connection) -> None:
    """Migration 0010's downgrade: the numbers back into ``national_id`` (needs the key)."""
    rows = conn.execute(
        select(h.c.id, h.c.national_id_enc).where(h.c.national_id_enc.is_not(None))
    ).all()
    if not rows:
        return
    keyring = load_keyring(conn.engine.url.render_as_string(hide_password=False), create=False)
    keys = dict(zip(keyring.kids, keyring.enc_keys, strict=True))
    for hid, token in rows:
        number = open_bytes(token, AAD_NATIONAL_ID, keys).decode()
        conn.execute(update(h).where(h.c.id == hid).values(national_id=number))


# --- the hooks storage/sql.py calls on every holders row ----------------------------------------
def seal_values(keyring: Keyring, table: str, values: Mapping[str, Any]) -> Mapping[str, Any]:
    """What is written instead of ``values``: a national ID sealed (holders), an archived
    snapshot's number masked (holder_archive), a collector's document number masked
    (hand_overs: the register shows no more)."""
    if table == "holders" and "national_id" in values:
        return {**values, **keyring.columns(values["national_id"])}
    if table == "holder_archive" and "snapshot" in values:
        snap = json.loads(values["snapshot"])
        if isinstance(snap, dict) and snap.get("national_id"):
            snap["national_id"] = mask_id_doc(str(snap["national_id"]))
            return {**values, "snapshot": json.dumps(snap, ensure_ascii=False, sort_keys=True)}
    if table == "hand_overs" and values.get("collector_doc"):
        return {**values, "collector_doc": mask_id_doc(str(values["collector_doc"]))}
    return values


def lookup_eq(keyring: Keyring, table: str, eq: dict[str, Any]) -> dict[str, Any]:
    """Equality filters with a national ID replaced by its lookup hash."""
    if table == "holders" and eq.get("national_id") is not None:
        eq = dict(eq)
        eq["national_id_hmac"] = keyring.lookup(str(eq.pop("national_id")))
    return eq


def lookup_in(
    keyring: Keyring, table: str, column: str, values: list[Any]
) -> tuple[str, list[Any]]:
    if table == "holders" and column == "national_id":
        return "national_id_hmac", [keyring.lookup(str(v)) for v in values]
    return column, values


def unseal(table: str, row: dict[str, Any]) -> dict[str, Any]:
    return holder_row(row) if table == "holders" else row


def mask_audit(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Audit before/after values never hold a full ID number (the masked form instead)."""
    if not value or "national_id" not in value:
        return value
    number = value["national_id"]
    return {**value, "national_id": mask_id_doc(str(number)) if number else number}


async def checkpoint(engine: AsyncEngine) -> None:
    """SQLite: fold the WAL into the file and empty it, so page images from before a conversion
    or a purge do not linger there (freed space is zeroed by ``secure_delete``). PostgreSQL:
    ``VACUUM FULL holders`` rewrites the table without the dead row versions that still hold the
    old values (the server's WAL and earlier backups keep them: docs/privacy.md)."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.exec_driver_sql("VACUUM FULL holders")
        return
    if engine.dialect.name != "sqlite":
        return
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
