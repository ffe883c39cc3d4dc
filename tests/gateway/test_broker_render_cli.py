"""`onecard broker render` writes the broker's files from the terminal registry: enabled
terminals only, the listener first, a TLS listener with the same per-listener options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ONECARD = str(Path(sys.executable).parent / "onecard")


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
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


def test_render_with_a_tls_listener(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ONECARD_DB": str(tmp_path / "r.sqlite3"),
        "ONECARD_SESSION": str(tmp_path / "s.json"),
    }
    env.pop("ONECARD_NOW", None)
    _cli(
        env,
        "init",
        "--admin",
        "chief",
        "--name",
        "王科长",
        "--password-stdin",
        stdin="First-pass-1\n",
    )
    _cli(env, "login", "chief", "--password-stdin", stdin="First-pass-1\n")
    _cli(env, "passwd", "--stdin", stdin="First-pass-1\nCounter-2026\n")
    _cli(
        env,
        "terminal",
        "add",
        "door-001",
        "--kind",
        "door",
        "--password-stdin",
        stdin="door-secret\n",
    )
    _cli(
        env,
        "terminal",
        "add",
        "door-002",
        "--kind",
        "door",
        "--password-stdin",
        stdin="door-secret\n",
    )
    _cli(env, "terminal", "disable", "door-002")
    out = tmp_path / "broker"
    _cli(
        env,
        "broker",
        "render",
        "--dir",
        str(out),
        "--port",
        "18883",
        "--no-persistence",
        "--gateway-password-stdin",
        "--tls-port",
        "18884",
        "--certfile",
        str(tmp_path / "c.pem"),
        "--keyfile",
        str(tmp_path / "k.pem"),
        stdin="gw-secret\n",
    )
    conf = (out / "mosquitto.conf").read_text()
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "listener 18883 127.0.0.1"
    assert "listener 18884" in conf
    assert f"certfile {tmp_path / 'c.pem'}" in conf
    assert conf.count("use_username_as_clientid true") == 2  # once per listener
    users = [line.split(":", 1)[0] for line in (out / "passwd").read_text().splitlines()]
    assert users == ["gateway", "door-001"]  # disabled terminals are left out
