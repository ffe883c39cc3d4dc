"""How a CLI command runs: registry, clock, session, output and errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table as RichTable

from gateway.services.base import Actor, Clock, Context, FixedClock, SystemClock
from gateway.services.center import CardCenter
from protocol.cards.clock import fmt_local
from protocol.errors import OnecardError
from storage.sql import SqlRegistry

T = TypeVar("T")

DEFAULT_DB = "var/onecard.sqlite3"
EXIT_REFUSED = 2
EXIT_USAGE = 64


@dataclass
class Options:
    db: str
    json: bool

    @property
    def session_file(self) -> Path:
        explicit = os.environ.get("ONECARD_SESSION")
        if explicit:
            return Path(explicit)
        key = hashlib.sha256(str(Path(self.db).expanduser().resolve()).encode()).hexdigest()[:12]
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "onecard"
        return base / f"session-{key}.json"


def make_clock() -> Clock:
    """ONECARD_NOW (ISO 8601 with offset) fixes business time for training and the scripted
    README session; every audit row still records who acted."""
    fixed = os.environ.get("ONECARD_NOW")
    if not fixed:
        return SystemClock()
    moment = datetime.fromisoformat(fixed)
    if moment.tzinfo is None:
        raise click.UsageError("ONECARD_NOW needs an offset, e.g. 2026-11-26T10:05+08:00")
    return FixedClock(moment)


def console() -> Console:
    return Console(soft_wrap=True)


def to_jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in asdict(value).items() if k != "password_hash"}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items() if k != "password_hash"}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def fail(opts: Options, exc: OnecardError) -> NoReturn:
    if opts.json:
        error = {
            "code": exc.code.value,
            "rule": exc.rule,
            "message": f"{exc.message_zh} / {exc.message_en}",
        }
        click.echo(json.dumps({"ok": False, "error": error}, ensure_ascii=False))
    else:
        click.echo(f"错误 / error: {exc}", err=True)
    sys.exit(EXIT_REFUSED)


async def _with_center(
    opts: Options, body: Callable[[CardCenter], Awaitable[T]], migrate: bool
) -> T:
    registry = await SqlRegistry.open(opts.db, migrate=migrate)
    try:
        ctx = Context(registry=registry, clock=make_clock(), wall_clock=SystemClock())
        return await body(CardCenter.build(ctx))
    finally:
        await registry.close()


def run(opts: Options, body: Callable[[CardCenter], Awaitable[T]], *, migrate: bool = False) -> T:
    if "://" not in opts.db:
        Path(opts.db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_with_center(opts, body, migrate))
    except OnecardError as exc:
        fail(opts, exc)


def run_as(opts: Options, body: Callable[[CardCenter, Actor], Awaitable[T]]) -> T:
    """Run ``body`` as the logged-in operator (ACC-3 checked by authenticate)."""
    token = read_token(opts)

    async def authed(center: CardCenter) -> T:
        actor = await center.operators.authenticate(token)
        return await body(center, actor)

    return run(opts, authed)


def read_token(opts: Options) -> str:
    path = opts.session_file
    try:
        data = json.loads(path.read_text())
        return str(data["token"])
    except (OSError, ValueError, KeyError):
        click.echo("请先登录 / not logged in: run `onecard login USER`", err=True)
        sys.exit(EXIT_REFUSED)


def write_token(opts: Options, token: str, username: str) -> None:
    path = opts.session_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"token": token, "user": username, "db": opts.db}, fh)


def read_secret(prompt: str, stdin: bool) -> str:
    if stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.UsageError(f"expected {prompt} on standard input")
        return line.rstrip("\n")
    return str(click.prompt(prompt, hide_input=True))


def emit(opts: Options, data: Any, human: str | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or ``human`` text."""
    if opts.json:
        click.echo(
            json.dumps({"ok": True, "data": to_jsonable(data)}, ensure_ascii=False, default=str)
        )
    elif human is not None:
        click.echo(human)


def emit_table(
    opts: Options, title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]
) -> None:
    if opts.json:
        keys = [h.split(" / ")[-1] for h in headers]
        emit(opts, [dict(zip(keys, row, strict=True)) for row in rows])
        return
    table = RichTable(title=title)
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console().print(table)


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return fmt_local(value)
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)
