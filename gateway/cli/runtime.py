"""How a CLI command runs: registry, clock, session, output and errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from gateway.logs import mask_id_docs
from gateway.services.base import Actor, Clock, Context, FixedClock, SystemClock
from gateway.services.center import CardCenter
from protocol.cards.clock import fmt_local
from protocol.cards.identity import mask_id_doc
from protocol.errors import ErrorCode, OnecardError
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


def mass_block_threshold() -> int:
    """The mass-block guard-rail's N for the CLI: the console's setting
    (``ONECARD_CONSOLE__MASS_BLOCK_THRESHOLD``), 50 when unset, as ``[console]`` says."""
    from gateway.config import ConsoleConfig

    raw = os.environ.get("ONECARD_CONSOLE__MASS_BLOCK_THRESHOLD")
    if raw is None:
        return ConsoleConfig().mass_block_threshold
    try:
        return ConsoleConfig(mass_block_threshold=int(raw)).mass_block_threshold
    except ValueError as exc:
        raise click.UsageError(
            f"ONECARD_CONSOLE__MASS_BLOCK_THRESHOLD 须为 0..1000000 的整数 / must be an integer "
            f"0..1000000: {raw!r}"
        ) from exc


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


#: options whose value is an identity document number: shown back masked
MASKED_PARAMS = frozenset({"presented_id", "national_id", "id_no", "purpose"})  # purpose: issue 15


def typed_args() -> dict[str, str]:
    """What the operator typed for the running command (a mistyped card number is no secret;
    identity document numbers are shown masked, flags and empty options left out)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    typed: dict[str, str] = {}
    for param in ctx.command.params:
        name = param.name
        if name is None or name == "help":
            continue
        value = ctx.params.get(name)
        if value is None or isinstance(value, bool) or value in ((), ""):
            continue
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        typed[name] = mask_id_doc(text) if name in MASKED_PARAMS else text
    return typed


def print_error(
    as_json: bool,
    code: str,
    message_zh: str,
    message_en: str,
    *,
    rule: str | None = None,
    typed: dict[str, str] | None = None,
    usage: str | None = None,
    data: Any = None,
) -> None:
    """A refusal, error or usage error: one JSON object on standard output (``"ok": false``)
    with ``--json``, else ``错误 / error: RULE: 中文 / English`` and what was typed on stderr.
    An ID number in any of it (typed where a card or student number goes) is shown masked."""
    message_zh, message_en = mask_id_docs(message_zh), mask_id_docs(message_en)
    typed = {k: mask_id_docs(v) for k, v in typed.items()} if typed else typed
    if as_json:
        error: dict[str, Any] = {
            "code": code,
            "rule": rule,
            "message": f"{message_zh} / {message_en}",
            "message_zh": message_zh,
            "message_en": message_en,
        }
        if typed:
            error["typed"] = typed
        if usage:
            error["usage"] = usage
        body: dict[str, Any] = {"ok": False, "error": error}
        if data is not None:
            body["data"] = to_jsonable(data)
        click.echo(json.dumps(body, ensure_ascii=False, default=str))
        return
    if usage:
        click.echo(usage, err=True)
    prefix = f"{rule}: " if rule else ""
    click.echo(f"错误 / error: {prefix}{message_zh} / {message_en}", err=True)
    if typed:
        shown = ", ".join(f"{k}={v}" for k, v in typed.items())
        click.echo(f"  您输入的 you typed: {shown}", err=True)


def fail(opts: Options, exc: OnecardError) -> NoReturn:
    print_error(
        opts.json,
        exc.code.value,
        exc.message_zh,
        exc.message_en,
        rule=exc.rule,
        typed=typed_args(),
    )
    sys.exit(EXIT_REFUSED)


def refuse(
    opts: Options,
    message_zh: str,
    message_en: str,
    *,
    code: ErrorCode | str = ErrorCode.INVALID_INPUT,
    rule: str | None = None,
    data: Any = None,
) -> NoReturn:
    """Refuse the running command (exit status 2), with ``data`` (e.g. the bad rows) in JSON."""
    print_error(
        opts.json, str(code), message_zh, message_en, rule=rule, typed=typed_args(), data=data
    )
    sys.exit(EXIT_REFUSED)


async def _with_center(
    opts: Options, body: Callable[[CardCenter], Awaitable[T]], migrate: bool
) -> T:
    registry = await SqlRegistry.open(opts.db, migrate=migrate)
    try:
        ctx = Context(
            registry=registry,
            clock=make_clock(),
            wall_clock=SystemClock(),
            mass_block_threshold=mass_block_threshold(),
        )
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
    except (OSError, ValueError, KeyError, TypeError):
        refuse(
            opts,
            "请先登录：onecard login 账号",
            "not logged in: run `onecard login USER`",
            code=ErrorCode.AUTH_FAILED,
        )


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


#: a cell that must never be cut or wrapped: serials, numbers, amounts, dates, campus times, UIDs
ATOMIC_CELL = re.compile(r"^(?:[\w.:#+-]+|\d{4}-\d\d-\d\d \d\d:\d\d)$")


def emit_table(
    opts: Options, title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]
) -> None:
    """A table on screen that fits the terminal (80 columns when not a terminal) without
    cutting a serial, number, amount or date: text columns wrap; when even that cannot fit, each
    row is printed as a block of ``header: value`` lines."""
    if opts.json:
        keys = [h.split(" / ")[-1] for h in headers]
        emit(opts, [dict(zip(keys, row, strict=True)) for row in rows])
        return
    out = console()
    cells = [[_cell(v) for v in row] for row in rows]
    atomic = [
        max((cell_len(row[i]) for row in cells if ATOMIC_CELL.match(row[i])), default=1)
        for i in range(len(headers))
    ]
    table = RichTable(title=Text(title))
    for header, width in zip(headers, atomic, strict=True):
        table.add_column(Text(header), min_width=width, overflow="fold")
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))  # data, never rich markup
    with out.capture() as captured:
        out.print(table)
    rendered = captured.get()
    if max((cell_len(line) for line in rendered.splitlines()), default=0) > out.width:
        _print_records(out, title, headers, cells)
    else:
        click.echo(rendered, nl=False)


def _print_records(
    out: Console, title: str, headers: Sequence[str], cells: list[list[str]]
) -> None:
    """Too many columns for the width: one block per row, ``header: value`` per line, long
    values wrapped between words."""
    lines = [Text(title)]
    for number, row in enumerate(cells, 1):
        lines.append(Text(f"— {number} —"))
        lines.extend(
            Text(f"  {header}: {value}", overflow="fold")
            for header, value in zip(headers, row, strict=True)
        )
    for line in lines:
        out.print(line, soft_wrap=False)


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return fmt_local(value)
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)
