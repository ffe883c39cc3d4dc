"""Schema migrations: upgrade to head, and refuse to run against a newer schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from protocol.errors import ErrorCode, OnecardError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class SchemaMismatch(OnecardError):
    code = ErrorCode.UNAVAILABLE


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _check_known(current: str | None) -> None:
    if current is None:
        return
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaMismatch(
            f"数据库结构版本 {current} 比本程序新，拒绝运行",
            f"the database schema ({current}) is newer than this onecard: refusing to run",
        )


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine) -> str:
    """Bring the schema to head; refuse a schema from a newer onecard. Returns the head."""
    _check_known(await current_revision(engine))
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
    return head_revision()


async def require_head(engine: AsyncEngine) -> None:
    """Refuse to run against an older or newer schema than this code's head."""
    current = await current_revision(engine)
    _check_known(current)
    if current != head_revision():
        raise SchemaMismatch(
            "数据库未初始化或版本过旧，请运行 onecard db upgrade",
            f"database schema is {current or 'empty'}, expected {head_revision()}: "
            "run `onecard db upgrade` (or `onecard init`)",
        )
