"""``onecard serve|web|demo|scheduler``: the long-running processes and due time rules."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from gateway.cli.common import (
    card_line,
    pass_opts,
)
from gateway.cli.runtime import (
    Options,
    emit,
    fail,
    run_as,
)
from protocol.errors import OnecardError


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="配置文件（TOML） / the TOML config file",
)
@click.option(
    "--migrate", is_flag=True, help="先把数据库结构升级到本版本 / bring the schema to head first"
)
@pass_opts
def serve(opts: Options, config_path: Path | None, migrate: bool) -> None:
    """运行终端网关（MQTT），提供 /metrics、/livez、/readyz / run the terminal gateway (MQTT) with
    /metrics, /livez and /readyz.

    \b
    例 example:
      onecard serve --config /etc/onecard/onecard.toml --migrate
    """
    import asyncio
    import signal

    from gateway.bootstrap import open_gateway
    from gateway.config import load_settings
    from gateway.logs import setup_logging

    overrides = {} if "ONECARD_DB" not in os.environ and config_path else {"db": opts.db}
    settings = load_settings(config_path, **overrides)
    setup_logging(settings.log_level)

    async def main() -> None:
        async with open_gateway(settings, migrate=migrate) as gateway:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, gateway.stop.set)
            await gateway.run()

    runner = asyncio.run
    if settings.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            logging.getLogger("onecard.gateway").info("uvloop not installed: asyncio loop")
        else:
            runner = uvloop.run
    try:
        runner(main())
    except OnecardError as exc:
        fail(opts, exc)


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="配置文件（TOML） / the TOML config file",
)
@pass_opts
def web(opts: Options, config_path: Path | None) -> None:
    """运行持卡人自助服务网站（uvicorn；配置的 [web] 部分） / run the cardholder web platform
    (uvicorn; the [web] section of the config).

    \b
    例 example:
      onecard web --config /etc/onecard/onecard.toml
    """
    import uvicorn

    from gateway.bootstrap import web_app
    from gateway.config import load_settings
    from gateway.logs import setup_logging
    from gateway.web.app import server_logging

    overrides = {} if "ONECARD_DB" not in os.environ and config_path else {"db": opts.db}
    settings = load_settings(config_path, **overrides)
    setup_logging(settings.log_level)
    server_logging()
    w = settings.web
    scheme = "https" if w.cookie_secure else "http"
    click.echo(f"持卡人自助服务 cardholder portal: {scheme}://{w.host}:{w.port}/")
    uvicorn.run(
        web_app(settings),
        host=w.host,
        port=w.port,
        proxy_headers=w.proxy_headers,
        forwarded_allow_ips=w.forwarded_allow_ips,
        server_header=False,
        log_config=None,
        access_log=False,
    )


@click.group()
def demo() -> None:
    """演示：MQTT 服务器 + SQLite 上的网关 + 模拟终端（make demo） / the demo: broker + gateway on
    SQLite + a simulated fleet.
    """


@demo.command("run")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default="var/demo-live",
    show_default=True,
    help="演示文件目录 / the demo's directory",
)
@click.option("--students", type=int, default=20_000, show_default=True, help="学生人数 / students")
@click.option("--staff", type=int, default=2_000, show_default=True, help="教职工人数 / staff")
@click.option(
    "--visitors", type=int, default=200, show_default=True, help="其他人员人数 / visitors"
)
@click.option("--terminals", type=int, default=200, show_default=True, help="终端数 / terminals")
@click.option(
    "--duration", type=float, help="运行秒数，默认到 Ctrl-C / seconds; default: until Ctrl-C"
)
@click.option(
    "--no-dashboard",
    is_flag=True,
    help=("只输出日志行，不显示实时面板 / plain log lines instead of the live dashboard"),
)
@click.option(
    "--registry",
    type=click.Choice(["sqlite", "postgres"]),
    default="sqlite",
    show_default=True,
    help=(
        "postgres：在本机 PostgreSQL 新建 onecard_demo "
        "库（ONECARD_DEMO_PG） / postgres: a fresh database onecard_demo on "
        "the local PostgreSQL (ONECARD_DEMO_PG)"
    ),
)
@click.option(
    "--gateways",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help=(
        "同一 MQTT 共享订阅组中的网关数（多于 1 个需 --registry postgres） "
        "/ gateways in one MQTT shared-subscription group (more than one "
        "needs --registry postgres)"
    ),
)
def demo_run(
    directory: Path,
    students: int,
    staff: int,
    visitors: int,
    terminals: int,
    duration: float | None,
    no_dashboard: bool,
    registry: str,
    gateways: int,
) -> None:
    """生成模拟校园，启动 mosquitto、网关和终端；Ctrl-C 全部停止 / seed a synthetic campus, start
    mosquitto, the gateway and the fleet; Ctrl-C stops all.

    \b
    例 example:
      onecard demo run --students 2000 --terminals 50 --duration 60
    """
    from gateway.demo.launcher import DemoSize, run_demo

    if gateways > 1 and registry != "postgres":
        raise click.UsageError(
            "多个网关需要 PostgreSQL 登记库 / several gateways need --registry postgres"
        )
    size = DemoSize(
        students=students,
        staff=staff,
        visitors=visitors,
        terminals=terminals,
        registry=registry,
        gateways=gateways,
    )
    raise SystemExit(run_demo(directory, size, duration=duration, dashboard=not no_dashboard))


# --- scheduler ------------------------------------------------------------------------------
@click.group()
def scheduler() -> None:
    """到期规则 / due time rules."""


@scheduler.command("run-due")
@pass_opts
def scheduler_run_due(opts: Options) -> None:
    """TERM-2/3: 临时卡过期失效，过期满 3 个月的终止 / expire temp cards past validity, terminate
    those expired 3 months ago.

    \b
    例 example:
      onecard scheduler run-due
    """
    changed = run_as(opts, lambda c, a: c.cards.run_due(a))
    emit(
        opts,
        changed,
        f"处理 changed {len(changed)} 张 cards" + "".join(f"\n  {card_line(x)}" for x in changed),
    )
