"""One error boundary for every ``onecard`` command: no tracebacks, one exit status per kind of
failure, and with ``--json`` every output, usage errors and refusals included, is one JSON object.

Exit status: 0 done, 1 a check found differences (``ledger verify``), 2 refused (a rule, a
permission, a file that cannot be read or written, the operator cancelled), 64 usage (a mistyped
command or option, EX_USAGE), 70 internal error (a bug: rerun with ONECARD_DEBUG=1 for the
traceback), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from gateway.cli.runtime import EXIT_REFUSED, EXIT_USAGE, print_error
from protocol.errors import OnecardError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
JSON_FLAG = "--json"


def hoist_json(args: Sequence[str]) -> tuple[list[str], bool]:
    """``--json`` anywhere before a ``--`` moves to the front, where the group's option reads it:
    ``onecard card show 1 --json`` is ``onecard --json card show 1``."""
    argv = list(args)
    end = argv.index("--") if "--" in argv else len(argv)
    found = JSON_FLAG in argv[:end]
    if found:
        argv = [JSON_FLAG] + [a for a in argv[:end] if a != JSON_FLAG] + argv[end:]
    return argv, found


def _param_name(param: click.Parameter | None) -> str:
    if param is None:
        return ""
    if isinstance(param, click.Option):
        return " " + "/".join(param.opts)
    return " " + (param.human_readable_name or "")


def usage_zh(exc: click.UsageError) -> str:
    """The Chinese half of a usage error (click gives the English)."""
    if isinstance(exc, click.MissingParameter):
        return f"缺少参数{_param_name(exc.param)}"
    if isinstance(exc, click.NoSuchOption):
        return f"没有这个选项 {exc.option_name}"
    if isinstance(exc, click.BadParameter):
        hint = exc.param_hint if isinstance(exc.param_hint, str) else None
        name = f" {hint}" if hint and exc.param is None else _param_name(exc.param)
        return f"参数{name} 的值无效"
    if isinstance(exc, click.BadOptionUsage):
        return f"选项 {exc.option_name} 用法有误"
    if "No such command" in exc.message:
        return "没有这个命令"
    return "命令用法有误"


def report(exc: BaseException, as_json: bool) -> int:
    """Print ``exc`` for the operator and return the exit status."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        # `onecard card` alone: the group's help, then the usage status
        if as_json:
            print_error(
                as_json,
                "usage",
                "缺少子命令",
                f"missing command: see {exc.ctx.command_path} --help",
                usage=exc.ctx.get_usage(),
            )
        else:
            click.echo(exc.format_message(), err=True)
        return EXIT_USAGE
    if isinstance(exc, click.UsageError):
        ctx = exc.ctx
        usage = None
        if ctx is not None:
            hint = f"帮助 help: {ctx.command_path} --help"
            usage = f"{ctx.get_usage()}\n{hint}"
        print_error(as_json, "usage", usage_zh(exc), exc.format_message(), usage=usage)
        return EXIT_USAGE
    if isinstance(exc, click.Abort | EOFError):
        print_error(as_json, "cancelled", "已取消，未办理", "cancelled: nothing done")
        return EXIT_REFUSED
    if isinstance(exc, KeyboardInterrupt):
        print_error(as_json, "interrupted", "已中断", "interrupted")
        return EXIT_INTERRUPTED
    if isinstance(exc, click.ClickException):
        print_error(as_json, "refused", "无法办理", exc.format_message())
        return EXIT_REFUSED
    if isinstance(exc, OnecardError):
        print_error(
            as_json,
            exc.code.value,
            exc.message_zh,
            exc.message_en,
            rule=exc.rule,
        )
        return EXIT_REFUSED
    if isinstance(exc, OSError):
        what = f" {exc.filename}" if exc.filename else ""
        print_error(
            as_json,
            "os_error",
            f"无法读写文件或设备{what}",
            f"cannot read or write{what}: {exc.strerror or exc}",
        )
        return EXIT_REFUSED
    if os.environ.get("ONECARD_DEBUG"):
        traceback.print_exception(exc, file=sys.stderr)
    print_error(
        as_json,
        "internal",
        "系统内部错误，未完成；请报告管理员",
        f"internal error ({type(exc).__name__}); nothing more was done: please report it"
        " (ONECARD_DEBUG=1 shows the traceback)",
    )
    return EXIT_INTERNAL


class OnecardGroup(click.Group):
    """The root group: its ``main`` is the boundary every command runs inside."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv, as_json = hoist_json(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - this is the boundary
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                sys.exit(0)  # the reader went away (onecard ... | head)
            sys.exit(report(exc, as_json))
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)
