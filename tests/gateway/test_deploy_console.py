"""deploy/ for issue 11: the console's and the reader agent's systemd units run real `onecard`
commands with the example config, whose [console] section loads and is safe by default."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import click
import pytest

from gateway.cli.main import cli
from gateway.config import load_settings

DEPLOY = Path(__file__).parents[2] / "deploy"


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / name).read_text())
    return unit


@pytest.mark.parametrize(
    ("name", "command", "wanted_by"),
    [
        ("onecard-console.service", "console", "multi-user.target"),
        ("onecard-reader-agent.service", "reader-agent", "default.target"),  # a user unit
    ],
)
def test_console_units_run_onecard_with_the_example_config(
    name: str, command: str, wanted_by: str
) -> None:
    unit = _unit(name)
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/onecard/.venv/bin/onecard"
    assert argv[1:] == [command, "--config", "/etc/onecard/onecard.toml"]
    ctx = click.Context(cli)
    found = cli.get_command(ctx, command)
    assert found is not None
    assert "--config" in {opt for p in found.params for opt in getattr(p, "opts", [])}
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert unit["Install"]["WantedBy"] == wanted_by
    if command == "console":
        assert service["User"] == "onecard"
        assert service["ProtectSystem"] == "strict"
        assert service["ReadWritePaths"] == "/var/lib/onecard"


def test_example_console_section_is_safe_by_default() -> None:
    c = load_settings(DEPLOY / "onecard.example.toml").console
    assert c.host == "127.0.0.1" and c.cookie_secure
    assert c.origin.startswith("https://")
    assert c.reader_agent_url.startswith("http://127.0.0.1:")
    assert 0 < c.mass_block_threshold <= 100
