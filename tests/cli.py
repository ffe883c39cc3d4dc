"""Driving `onecard` as an operator does, for tests: a fresh registry with a logged-in chief.

Commands run in this process through click's test runner (the same ``cli`` object the console
script calls, with the given environment, standard input and exit status): an interpreter start
per command cost a second each and put the suite past its time budget. Tests that are about the
process itself (``onecard serve``, the installed entry point) still start the real executable,
``ONECARD``.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from gateway.cli.main import cli

ONECARD = str(Path(sys.executable).parent / "onecard")


@dataclass(frozen=True, slots=True)
class Done:
    """What a finished command left: the shape of ``subprocess.CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


def invoke(env: dict[str, str], *args: str, stdin: str | None = None) -> Done:
    """Run ``onecard ARGS`` in this process with exactly ``env`` as its environment."""
    overlay: dict[str, str | None] = {key: None for key in os.environ if key not in env}
    overlay.update(env)
    result = CliRunner(env=overlay).invoke(
        cli, list(args), input=stdin, prog_name="onecard", catch_exceptions=True
    )
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # what the real process would print: an uncaught exception is a traceback, status 1
        stderr += "".join(traceback.format_exception(result.exception))
    return Done(result.exit_code, result.stdout, stderr)


def onecard(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run ``onecard ARGS``; the command must succeed. Returns its standard output."""
    done = invoke(env, *args, stdin=stdin)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def operator_site(directory: Path) -> dict[str, str]:
    """A registry in ``directory`` with operator ``chief`` logged in (password changed, ACC-3)."""
    env = {
        **os.environ,
        "ONECARD_DB": str(directory / "r.sqlite3"),
        "ONECARD_SESSION": str(directory / "s.json"),
    }
    env.pop("ONECARD_NOW", None)
    onecard(
        env,
        "init",
        "--admin",
        "chief",
        "--name",
        "王科长",
        "--password-stdin",
        stdin="First-pass-1\n",
    )
    onecard(env, "login", "chief", "--password-stdin", stdin="First-pass-1\n")
    onecard(env, "passwd", "--stdin", stdin="First-pass-1\nCounter-2026\n")
    return env
