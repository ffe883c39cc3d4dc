"""Driving `onecard` as an operator does, for tests: a fresh registry with a logged-in chief."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ONECARD = str(Path(sys.executable).parent / "onecard")


def onecard(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run ``onecard ARGS``; the command must succeed. Returns its standard output."""
    done = subprocess.run(
        [ONECARD, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
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
