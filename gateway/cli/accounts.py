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
@click.option(
    "--admin", "username", required=True, help="第一个账号（科长） / first account (section chief)"
)
@click.option("--name", "real_name", required=True, help="真实姓名（ACC-2） / real name (ACC-2)")
@click.option(
    "--password-stdin",
    is_flag=True,
    help=("从标准输入读初始密码 / read the initial password from standard input"),
)
@pass_opts
def init(opts: Options, username: str, real_name: str, password_stdin: bool) -> None:
    """建立或升级登记库，并建立第一个操作员账号（初始密码，首次登录须修改，ACC-3） / create or
    upgrade the registry and the first operator account (an initial password, changed at first
    login, ACC-3).

    \b
    例 example:
      echo 'First-pass-1' | onecard init --admin chief --name 王科长 \\
          --password-stdin
    """
    password = read_secret("initial password", password_stdin)
    op_id = run(opts, lambda c: c.operators.bootstrap(username, real_name, password), migrate=True)
    emit(
        opts,
        {"operator_id": op_id},
        f"已初始化 initialised {opts.db}; 首次登录须修改密码 change the password at first login",
    )


@click.group()
def db() -> None:
    """数据库结构升级 / schema migrations."""


@db.command("upgrade")
@pass_opts
def db_upgrade(opts: Options) -> None:
    """把数据库结构升级到本版本（拒绝更新的结构），并分批加密尚未加密的证件号码 / bring the schema
    to this version's head (a newer schema is refused) and encrypt ID numbers still in clear, in
    committed batches (interrupted: run it again; docs/privacy.md).

    \b
    例 example:
      onecard db upgrade
    """

    async def body(_: CardCenter) -> None:
        return None

    run(opts, body, migrate=True)
    emit(opts, {"upgraded": True}, "数据库已是最新 schema at head")


@click.command()
@click.argument("username")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="从标准输入读密码 / read the password from standard input",
)
@pass_opts
def login(opts: Options, username: str, password_stdin: bool) -> None:
    """登录；会话保存在本机（权限 600），供后续命令使用 / log in; the session is kept (mode 600)
    for the following commands.

    \b
    例 examples:
      onecard login chief
      echo "$PASSWORD" | onecard login chief --password-stdin
    """
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
    """退出登录，结束本机会话 / log out and end this session.

    \b
    例 example:
      onecard logout
    """
    token = read_token(opts)
    run(opts, lambda c: c.operators.logout(token))
    opts.session_file.unlink(missing_ok=True)
    emit(opts, {"logged_out": True}, "已退出 logged out")


@click.command()
@click.option(
    "--stdin",
    "from_stdin",
    is_flag=True,
    help=("从标准输入读原密码和新密码（两行） / read old and new password as two lines"),
)
@pass_opts
def passwd(opts: Options, from_stdin: bool) -> None:
    """修改自己的密码（ACC-3：首次使用必须修改；至少 8 位，含 4 类字符中的 3 类，不能含账号名） /
    change your password (ACC-3: required at first use; 8 or more characters of 3 of the 4
    classes, not the user name).

    \b
    例 examples:
      onecard passwd
      printf 'Old-pass-1\nNew-pass-2026\n' | onecard passwd --stdin
    """
    token = read_token(opts)
    old = read_secret("current password", from_stdin)
    new = read_secret("new password", from_stdin)
    run(opts, lambda c: c.operators.change_password(token, old, new))
    emit(opts, {"changed": True}, "密码已修改 password changed")


@click.command()
@pass_opts
def whoami(opts: Options) -> None:
    """显示当前登录的账号及其权限 / who is logged in, and their permissions.

    \b
    例 example:
      onecard whoami --json
    """
    actor = run_as(opts, lambda _c, a: _actor(a))
    emit(opts, actor, f"{actor.name}: {', '.join(sorted(actor.permissions))}")


async def _actor(actor: Actor) -> Actor:
    return actor


@click.group()
def operator() -> None:
    """功能户（操作员账号）管理 ACC-1..3 / function (operator) accounts, ACC-1..3."""


@operator.command("add")
@click.argument("username")
@click.option("--name", "real_name", required=True, help="真实姓名 / the person's real name")
@click.option("--department", required=True, help="所在部门 / department")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    required=True,
    type=click.Choice([p.value for p in Permission]),
    help="批准的权限（可重复） / an approved permission (repeat)",
)
@click.option(
    "--approved-by",
    required=True,
    help="审批人（网管中心负责人） / center head who approved (ACC-2)",
)
@click.option(
    "--application",
    "application_ref",
    required=True,
    help="书面申请编号 / written application reference",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help=("从标准输入读初始密码 / read the initial password from standard input"),
)
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
    """ACC-2: 按书面申请和负责人审批建立实名账号，授予批准的权限 / a real-name account with the
    approved permissions, on a written application.

    \b
    例 example:
      onecard operator add cash01 --name 李会计 --department 后勤管理处 --permission \\
          cash_machine --approved-by 网管中心主任 --application 后勤〔2026〕7号
    """
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
    """功能户登记表：账号、姓名、部门、权限、是否停用、审批人 / the function account register.

    \b
    例 example:
      onecard operator list
    """
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
    """ACC-2: 停用账号（立即不能登录；最后一个账号管理员不能停用） / disable an account at once
    (never the last accounts administrator).

    \b
    例 example:
      onecard operator disable cash01
    """
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
    """ACC-2: 解除密码错误锁定（记入审计） / lift a lockout after wrong passwords (audited).

    \b
    例 example:
      onecard operator unlock cash01 --approved-by 网管中心主任
    """
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
    """ACC-2: 重新启用停用的账号（记入审计） / re-enable a disabled account (audited).

    \b
    例 example:
      onecard operator enable cash01 --approved-by 网管中心主任 --application \\
          后勤〔2026〕9号
    """
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
@click.option(
    "--password-stdin",
    is_flag=True,
    help=("从标准输入读新的初始密码 / read the new initial password from standard input"),
)
@pass_opts
def operator_reset_password(
    opts: Options,
    username: str,
    approved_by: str,
    application_ref: str | None,
    password_stdin: bool,
) -> None:
    """ACC-3: 重置为新的初始密码，下次登录须修改，该账号的会话全部结束（记入审计） / a new initial
    password, changed at the next login; the account's sessions end (audited).

    \b
    例 example:
      onecard operator reset-password cash01 --approved-by 网管中心主任
    """
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
    """ACC-1/2: 变更账号权限（书面申请，负责人审批，记入审计） / set an account's permissions
    (written application, approved, audited).

    \b
    例 example:
      onecard operator permissions cash01 --permission cash_machine --permission \\
          reports --approved-by 网管中心主任 --application 后勤〔2026〕8号
    """
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
