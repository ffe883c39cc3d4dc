"""`onecard broker render` writes the broker's files from the terminal registry: enabled
terminals only, the listener first, a TLS listener with the same per-listener options."""

from __future__ import annotations

from pathlib import Path

from tests.cli import onecard, operator_site


def test_render_with_a_tls_listener(tmp_path: Path) -> None:
    env = operator_site(tmp_path)
    onecard(
        env,
        "terminal",
        "add",
        "door-001",
        "--kind",
        "door",
        "--password-stdin",
        stdin="door-secret\n",
    )
    onecard(
        env,
        "terminal",
        "add",
        "door-002",
        "--kind",
        "door",
        "--password-stdin",
        stdin="door-secret\n",
    )
    onecard(env, "terminal", "disable", "door-002")
    out = tmp_path / "broker"
    onecard(
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
