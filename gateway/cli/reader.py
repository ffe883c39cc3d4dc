"""``onecard console`` (the operator console) and ``onecard reader-agent`` (the counter PC's card
reader for it, with the MEAL-3/MEAL-4 type write-back), issue 11."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.cli.runtime import Options

if TYPE_CHECKING:
    from gateway.readers.agent import ReaderAgent

pass_opts = click.make_pass_decorator(Options)
CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="配置文件 TOML config ([console] section)",
)


def _settings(opts: Options, config_path: Path | None):  # type: ignore[no-untyped-def]
    from gateway.config import load_settings

    overrides = {} if "ONECARD_DB" not in os.environ and config_path else {"db": opts.db}
    return load_settings(config_path, **overrides)


@click.command()
@CONFIG
@pass_opts
def console(opts: Options, config_path: Path | None) -> None:
    """运行智能卡中心操作台 run the operator console (uvicorn; [console] section).

    例 example: onecard console --config /etc/onecard/onecard.toml
    """
    import uvicorn

    from gateway.bootstrap import console_app
    from gateway.logs import setup_logging
    from gateway.web.app import server_logging

    settings = _settings(opts, config_path)
    setup_logging(settings.log_level)
    server_logging()
    c = settings.console
    scheme = "https" if c.cookie_secure else "http"
    click.echo(f"操作台 operator console: {scheme}://{c.host}:{c.port}/")
    uvicorn.run(
        console_app(settings),
        host=c.host,
        port=c.port,
        server_header=False,
        log_config=None,
        access_log=False,
    )


@asynccontextmanager
async def _write_back(db: str) -> AsyncIterator[tuple[object, object]]:
    """(pending lookup, confirm) over the registry: the MEAL-3/4 write-back's two calls."""
    from gateway.services.base import Actor, Context, SystemClock
    from gateway.services.console_view import ConsoleViews
    from gateway.services.meal import MealService
    from storage.sql import SqlRegistry

    registry = await SqlRegistry.open(db)
    try:
        ctx = Context(registry=registry, clock=SystemClock())
        views, meal = ConsoleViews(ctx), MealService(ctx)
        agent_actor = Actor(name=f"reader-agent@{os.uname().nodename}"[:64], channel="counter")

        async def confirm(serial: str, group: int) -> None:
            await meal.card_written(agent_actor, serial, group)

        yield views.pending_write, confirm
    finally:
        await registry.close()


async def run_agent(
    db: str,
    *,
    origin: str,
    port: int,
    readers: list[str] | None,
    ready: Callable[[ReaderAgent], None] | None = None,
) -> None:
    """The agent over the registry at ``db`` until SIGINT/SIGTERM (``ready`` sees it first)."""
    from gateway.readers.agent import ReaderAgent, serve
    from gateway.readers.pcsc import PcscReaderBridge

    async with _write_back(db) as (pending, confirm):
        agent = ReaderAgent(
            PcscReaderBridge(readers=readers),
            console_origin=origin,
            port=port,
            pending_group=pending,  # type: ignore[arg-type]
            confirm_written=confirm,  # type: ignore[arg-type]
        )
        if ready is not None:
            ready(agent)
        await serve(agent)


@click.command("reader-agent")
@CONFIG
@click.option("--port", type=int, default=None, help="本机端口 loopback port (default from URL)")
@click.option("--reader", "readers", multiple=True, help="只用这些读卡器 only these PC/SC readers")
@pass_opts
def reader_agent(
    opts: Options, config_path: Path | None, port: int | None, readers: tuple[str, ...]
) -> None:
    """柜台读卡代理 the counter PC's card reader for the console (loopback only).

    放卡即在操作台打开持卡人；待写卡类型（MEAL-3/4）自动写入并核对。
    Put a card on the reader and the console opens its holder; a pending card type (MEAL-3/4)
    is written onto the card, read back, and the registry's flag cleared.

    例 example: onecard reader-agent --config /etc/onecard/onecard.toml
    """
    from urllib.parse import urlsplit

    from gateway.logs import setup_logging

    settings = _settings(opts, config_path)
    setup_logging(settings.log_level)
    c = settings.console
    port = port or urlsplit(c.reader_agent_url).port or 8765
    click.echo(f"读卡代理 reader agent: http://127.0.0.1:{port}/events (console {c.origin})")
    asyncio.run(run_agent(settings.db, origin=c.origin, port=port, readers=list(readers) or None))
