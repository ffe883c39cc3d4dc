"""``onecard init|db|login|logout|passwd|whoami|operator``: set-up and function accounts
(ACC-1..3; one module per command group, ARCHITECTURE.md §10)."""

from __future__ import annotations

import click

from gateway.cli.common import (
    pass_opts,
)
from gateway.cli.runtime import (
    Options,
    emit,
    emit_table,
    read_secret,
    read_token,
    run,
    run_as,
    write_token,
)
from gateway.services.base import Actor
from gateway.services.center import CardCenter
from protocol.types import Permission


@click.command()
@click.option("--admin", "username", required=True, help="first account (section chief)")
@click.option("--name", "real_name", required=True, help="real name (ACC-2)")
@click.option("--password-stdin", is_flag=True)
@pass_opts
def init(opts: Options, username: str, real_name: str, password_stdin: bool) -> None:
    """Create/upgrade the registry and the first operator account (initial password, ACC-3)."""
    password = read_secret("initial password", password_stdin)
    op_id = run(opts, lambda c: c.operators.bootstrap(username, real_name, password), migrate=True)
    emit(
        opts,
        {"operator_id": op_id},
        f"已初始化 initialised {opts.db}; 首次登录须修改密码 change the password at first login",
    )


@click.group()
def db() -> None:
    """Schema migrations."""


@db.command("upgrade")
@pass_opts
def db_upgrade(opts: Options) -> None:
    """Bring the schema to this version's head (refuses a newer schema)."""

    async def body(_: CardCenter) -> None:
        return None

    run(opts, body, migrate=True)
    emit(opts, {"upgraded": True}, "数据库已是最新 schema at head")


@click.command()
@click.argument("username")
@click.option("--password-stdin", is_flag=True)
@pass_opts
def login(opts: Options, username: str, password_stdin: bool) -> None:
    """Log in; the session is kept (mode 600) for the following commands."""
    password = read_secret("password", password_stdin)
    session = run(opts, lambda c: c.operators.login(username, password))
    write_token(opts, session.token, username)
    note = (
        "；首次登录请先修改密码：onecard passwd / change your initial password first"
        if session.must_change_password
        else ""
    )
    emit(
        opts,
        {"user": username, "must_change_password": session.must_change_password},
        f"已登录 logged in as {username}{note}",
    )


@click.command()
@pass_opts
def logout(opts: Options) -> None:
    token = read_token(opts)
    run(opts, lambda c: c.operators.logout(token))
    opts.session_file.unlink(missing_ok=True)
    emit(opts, {"logged_out": True}, "已退出 logged out")


@click.command()
@click.option("--stdin", "from_stdin", is_flag=True, help="read old and new password as two lines")
@pass_opts
def passwd(opts: Options, from_stdin: bool) -> None:
    """Change your password (ACC-3: required at first use)."""
    token = read_token(opts)
    old = read_secret("current password", from_stdin)
    new = read_secret("new password", from_stdin)
    run(opts, lambda c: c.operators.change_password(token, old, new))
    emit(opts, {"changed": True}, "密码已修改 password changed")


@click.command()
@pass_opts
def whoami(opts: Options) -> None:
    actor = run_as(opts, lambda _c, a: _actor(a))
    emit(opts, actor, f"{actor.name}: {', '.join(sorted(actor.permissions))}")


async def _actor(actor: Actor) -> Actor:
    return actor


@click.group()
def operator() -> None:
    """Function accounts (ACC-1..3)."""


@operator.command("add")
@click.argument("username")
@click.option("--name", "real_name", required=True)
@click.option("--department", required=True)
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    required=True,
    type=click.Choice([p.value for p in Permission]),
)
@click.option("--approved-by", required=True, help="center head who approved (ACC-2)")
@click.option(
    "--application", "application_ref", required=True, help="written application reference"
)
@click.option("--password-stdin", is_flag=True)
@pass_opts
def operator_add(
    opts: Options,
    username: str,
    real_name: str,
    department: str,
    permissions: tuple[str, ...],
    approved_by: str,
    application_ref: str,
    password_stdin: bool,
) -> None:
    """ACC-2: a real-name account with the approved permissions."""
    initial = read_secret("initial password", password_stdin)
    op_id = run_as(
        opts,
        lambda c, a: c.operators.create(
            a,
            username=username,
            real_name=real_name,
            department=department,
            permissions=[Permission(p) for p in permissions],
            approved_by=approved_by,
            application_ref=application_ref,
            initial_password=initial,
        ),
    )
    emit(opts, {"operator_id": op_id}, f"账号已创建 account {username} created (id {op_id})")


@operator.command("list")
@pass_opts
def operator_list(opts: Options) -> None:
    rows = run_as(opts, lambda c, a: c.operators.list(a))
    emit_table(
        opts,
        "功能户登记表 / function accounts",
        [
            "账号 / username",
            "姓名 / real_name",
            "部门 / department",
            "权限 / permissions",
            "停用 / disabled",
            "审批 / approved_by",
        ],
        [
            [
                r["username"],
                r["real_name"],
                r["department"],
                r["permissions"],
                r["disabled"],
                r["approved_by"],
            ]
            for r in rows
        ],
    )


@operator.command("disable")
@click.argument("username")
@pass_opts
def operator_disable(opts: Options, username: str) -> None:
    run_as(opts, lambda c, a: c.operators.set_disabled(a, username, True))
    emit(opts, {"disabled": username}, f"账号已停用 {username} disabled")


APPROVED_BY = click.option(
    "--approved-by",
    required=True,
    help="审批人（网管中心负责人） / center head who approved (ACC-2)",
)


@operator.command("unlock")
@click.argument("username")
@APPROVED_BY
@click.option("--application", "application_ref", help="书面申请编号 / written application")
@pass_opts
def operator_unlock(
    opts: Options, username: str, approved_by: str, application_ref: str | None
) -> None:
    """ACC-2: 解除密码错误锁定 / lift a lockout after wrong passwords (audited)."""
    run_as(
        opts,
        lambda c, a: c.operators.unlock(
            a, username, approved_by=approved_by, application_ref=application_ref
        ),
    )
    emit(opts, {"unlocked": username}, f"账号已解锁 {username} unlocked")


@operator.command("enable")
@click.argument("username")
@APPROVED_BY
@click.option("--application", "application_ref", help="书面申请编号 / written application")
@pass_opts
def operator_enable(
    opts: Options, username: str, approved_by: str, application_ref: str | None
) -> None:
    """ACC-2: 重新启用停用的账号 / re-enable a disabled account (audited)."""
    run_as(
        opts,
        lambda c, a: c.operators.enable(
            a, username, approved_by=approved_by, application_ref=application_ref
        ),
    )
    emit(opts, {"enabled": username}, f"账号已启用 {username} enabled")


@operator.command("reset-password")
@click.argument("username")
@APPROVED_BY
@click.option("--application", "application_ref", help="书面申请编号 / written application")
@click.option("--password-stdin", is_flag=True)
@pass_opts
def operator_reset_password(
    opts: Options,
    username: str,
    approved_by: str,
    application_ref: str | None,
    password_stdin: bool,
) -> None:
    """ACC-3: 重置为新的初始密码，下次登录须修改 / a new initial password, changed at the next
    login; the account's sessions end (audited)."""
    initial = read_secret("new initial password", password_stdin)
    run_as(
        opts,
        lambda c, a: c.operators.reset_password(
            a, username, initial, approved_by=approved_by, application_ref=application_ref
        ),
    )
    emit(
        opts,
        {"reset": username, "must_change_password": True},
        f"密码已重置 {username}: 下次登录须修改 must change it at the next login",
    )


@operator.command("permissions")
@click.argument("username")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    required=True,
    type=click.Choice([p.value for p in Permission]),
    help="授予的全部权限（可重复） / every permission the account keeps (repeat)",
)
@APPROVED_BY
@click.option(
    "--application", "application_ref", required=True, help="书面申请编号 / written application"
)
@pass_opts
def operator_permissions(
    opts: Options,
    username: str,
    permissions: tuple[str, ...],
    approved_by: str,
    application_ref: str,
) -> None:
    """ACC-1/2: 变更账号权限（书面申请，负责人审批） / set an account's permissions (audited)."""
    perms = [Permission(p) for p in permissions]
    run_as(
        opts,
        lambda c, a: c.operators.set_permissions(
            a, username, perms, approved_by=approved_by, application_ref=application_ref
        ),
    )
    emit(
        opts,
        {"username": username, "permissions": sorted(permissions)},
        f"权限已变更 {username}: {', '.join(sorted(permissions))}",
    )
