"""deploy/ for several gateways agrees with the single-gateway files and the code (issue 12)."""

from __future__ import annotations

import configparser
from pathlib import Path

from gateway.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / name).read_text())
    return unit


def test_instance_template_keeps_the_hardening_and_names_its_own_config() -> None:
    single, template = _unit("onecard-gateway.service"), _unit("onecard-gateway@.service")
    service = template["Service"]
    assert service["ExecStart"].endswith("onecard serve --config /etc/onecard/%i.toml")
    assert "%i" in service["ReadWritePaths"]
    different = {"ExecStart", "ReadWritePaths", "StateDirectory", "WorkingDirectory"}
    for key, value in single["Service"].items():
        if key not in different:
            assert service.get(key) == value, key


def test_example_config_has_the_ha_section() -> None:
    settings = load_settings(DEPLOY / "onecard.example.toml")
    assert settings.ha.leader_retry_s == 1.0
    assert settings.instance_id == settings.mqtt.client_id


def test_emqx_acl_lets_only_gateway_accounts_read_every_request() -> None:
    acl = (DEPLOY / "emqx" / "acl.conf").read_text()
    gateway_rules = [line for line in acl.splitlines() if "req/+" in line and "gw[0-9]" in line]
    assert gateway_rules, "gateways may subscribe to the requests"
    terminal_rules = [line for line in acl.splitlines() if line.startswith("{allow, all")]
    assert all("${username}" in line or "blacklist" in line for line in terminal_rules)
    assert acl.rstrip().endswith("{deny, all}.")
