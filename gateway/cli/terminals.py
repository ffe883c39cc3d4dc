"""``onecard terminal|broker``: terminal provisioning and the Mosquitto files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from gateway.cli.common import (
    pass_opts,
)
from gateway.cli.runtime import (
    Options,
    emit,
    emit_table,
    read_secret,
    run_as,
)
from protocol.wire import TerminalKind


@click.group()
def terminal() -> None:
    """终端登记（POS、自助机、门禁、水控） / terminal provisioning (POS, kiosks, door readers,
    water controllers).
    """


@terminal.command("add")
@click.argument("terminal_id")
@click.option(
    "--kind",
    type=click.Choice([k.value for k in TerminalKind]),
    required=True,
    help="终端类型 / terminal kind",
)
@click.option("--merchant", "merchant_id", help="所属商户编号 / merchant id")
@click.option("--location", default="", help="安装位置 / where it is")
@click.option(
    "--password-stdin",
    is_flag=True,
    help=(
        "从标准输入读 MQTT 密码（不自动生成） / read the broker password instead of generating one"
    ),
)
@pass_opts
def terminal_add(
    opts: Options,
    terminal_id: str,
    kind: str,
    merchant_id: str | None,
    location: str,
    password_stdin: bool,
) -> None:
    """登记终端，只显示一次其 MQTT 密码（只保存散列） / register a terminal; prints its broker
    password once (only the hash is kept).

    \b
    例 example:
      onecard terminal add pos-001 --kind pos --merchant canteen-1 --location \\
          第一食堂
    """
    from gateway.mqtt.broker_files import mosquitto_password_hash, new_password

    password = read_secret("terminal password", True) if password_stdin else new_password()
    digest = mosquitto_password_hash(password)
    run_as(
        opts,
        lambda c, a: c.terminals.add(
            a,
            terminal_id,
            TerminalKind(kind),
            password_hash=digest,
            merchant_id=merchant_id,
            location=location,
        ),
    )
    shown = None if password_stdin else password
    emit(
        opts,
        {"terminal_id": terminal_id, "password": shown},
        f"终端已登记 terminal {terminal_id} registered"
        + (
            ""
            if password_stdin
            else f"\n  MQTT 用户名 username: {terminal_id}"
            f"\n  密码 password (只显示一次 shown once): {password}"
        )
        + "\n  请运行 onecard broker render 并重载 mosquitto"
        " / then run `onecard broker render` and reload mosquitto",
    )


@terminal.command("disable")
@click.argument("terminal_id")
@pass_opts
def terminal_disable(opts: Options, terminal_id: str) -> None:
    """立即停用终端（每个请求都查登记库） / refuse the terminal at once (every request checks the
    registry).

    \b
    例 example:
      onecard terminal disable pos-001
    """
    run_as(opts, lambda c, a: c.terminals.set_enabled(a, terminal_id, False))
    emit(opts, {"disabled": terminal_id}, f"终端已停用 terminal {terminal_id} disabled")


@terminal.command("enable")
@click.argument("terminal_id")
@pass_opts
def terminal_enable(opts: Options, terminal_id: str) -> None:
    """重新启用终端 / enable a terminal again.

    \b
    例 example:
      onecard terminal enable pos-001
    """
    run_as(opts, lambda c, a: c.terminals.set_enabled(a, terminal_id, True))
    emit(opts, {"enabled": terminal_id}, f"终端已启用 terminal {terminal_id} enabled")


@terminal.command("list")
@pass_opts
def terminal_list(opts: Options) -> None:
    """终端列表：类型、商户、位置、是否启用、黑名单版本、最近联系 / the terminals.

    \b
    例 example:
      onecard terminal list
    """
    rows = run_as(opts, lambda c, a: c.terminals.list(a))
    emit_table(
        opts,
        "终端 / terminals",
        [
            "编号 / id",
            "类型 / kind",
            "商户 / merchant",
            "位置 / location",
            "启用 / enabled",
            "黑名单版本 / denylist_version",
            "最近 / last_seen_at",
        ],
        [
            [
                r["id"],
                r["kind"],
                r["merchant_id"],
                r["location"],
                bool(r["enabled"]),
                r["denylist_version"],
                r["last_seen_at"],
            ]
            for r in rows
        ],
    )


@click.group()
def broker() -> None:
    """根据终端登记生成 Mosquitto 文件 / Mosquitto files generated from the terminal registry."""


@broker.command("render")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="写出文件的目录 / directory for the files",
)
@click.option("--port", type=int, default=1883, show_default=True, help="MQTT 端口 / MQTT port")
@click.option("--bind", default="127.0.0.1", show_default=True, help="监听地址 / listen address")
@click.option(
    "--gateway-user",
    "gateway_users",
    multiple=True,
    default=("gateway",),
    show_default=True,
    help=(
        "网关的 MQTT 账号，多个网关实例各一个（可重复） / the gateway's MQTT user; one per "
        "gateway instance (repeat it: docs/operations.md)"
    ),
)
@click.option(
    "--gateway-password-stdin",
    is_flag=True,
    help=(
        "从标准输入设置网关密码（多个账号：每个尚无密码的账号一行） / set the gateway account's "
        "password (several accounts: one line per account that has none yet)"
    ),
)
@click.option("--no-persistence", is_flag=True, help="不保存消息到磁盘 / no persistence file")
@click.option(
    "--tls-port",
    type=int,
    help=(
        "校园网终端的 TLS 端口（如 8883） / a TLS listener for terminals on "
        "the campus network (e.g. 8883)"
    ),
)
@click.option(
    "--tls-bind", help=("TLS 监听地址（默认全部） / address of the TLS listener (default: all)")
)
@click.option(
    "--certfile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TLS 证书文件 / TLS certificate file",
)
@click.option(
    "--keyfile", type=click.Path(dir_okay=False, path_type=Path), help="TLS 私钥文件 / TLS key file"
)
@click.option(
    "--cafile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="校验终端证书的 CA 文件 / CA file for terminal certificates",
)
@pass_opts
def broker_render(
    opts: Options,
    directory: Path,
    port: int,
    bind: str,
    gateway_users: tuple[str, ...],
    gateway_password_stdin: bool,
    no_persistence: bool,
    tls_port: int | None,
    tls_bind: str | None,
    certfile: Path | None,
    keyfile: Path | None,
    cafile: Path | None,
) -> None:
    """写出 mosquitto.conf、密码文件和 ACL，然后 kill -HUP mosquitto / write mosquitto.conf, the
    password file and the ACL; then `kill -HUP` mosquitto.

    \b
    例 example:
      echo "$GW_PASSWORD" | onecard broker render --dir /etc/mosquitto/onecard \\
          --gateway-password-stdin
    """
    from gateway.mqtt import broker_files as bf

    existing: dict[str, str] = {}
    pw_file = directory / bf.PASSWORD_NAME
    if pw_file.exists():
        for line in pw_file.read_text().splitlines():
            name, _, digest = line.partition(":")
            existing[name] = digest
    gateway_users = tuple(dict.fromkeys(gateway_users))  # each account once, in order
    if gateway_password_stdin:
        # one account: set (or rotate) its password; several: each one that has none yet
        missing = [u for u in gateway_users if len(gateway_users) == 1 or u not in existing]
        for user in missing:
            existing[user] = bf.mosquitto_password_hash(read_secret(f"password of {user}", True))
    lacking = [u for u in gateway_users if u not in existing]
    if lacking:
        raise click.UsageError(
            f"no password yet for {', '.join(lacking)}: pass --gateway-password-stdin once"
        )
    tls = None
    if tls_port is not None:
        if certfile is None or keyfile is None:
            raise click.UsageError("--tls-port needs --certfile and --keyfile")
        tls = bf.TlsListener(
            port=tls_port,
            certfile=certfile.resolve(),
            keyfile=keyfile.resolve(),
            bind=tls_bind,
            cafile=cafile.resolve() if cafile else None,
        )
    rows = run_as(opts, lambda c, a: c.terminals.list(a))
    terminals = [_TerminalRow(r["id"], bool(r["enabled"]), r["mqtt_password_hash"]) for r in rows]
    entries = bf.password_entries(terminals, {u: existing[u] for u in gateway_users})
    files = bf.write_broker_files(
        directory,
        entries=entries,
        gateway_users=list(gateway_users),
        port=port,
        bind=bind,
        persistence=not no_persistence,
        persistence_dir=None if no_persistence else Path("/var/lib/mosquitto"),
        tls=tls,
    )
    emit(
        opts,
        {"conf": str(files.conf), "accounts": len(entries)},
        f"已生成 wrote {files.conf} ({len(entries)} accounts); 请 kill -HUP mosquitto",
    )


@dataclass(frozen=True)
class _TerminalRow:
    id: str
    enabled: bool
    mqtt_password_hash: str
