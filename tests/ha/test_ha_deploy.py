"""deploy/ for several gateways agrees with the single-gateway files and the code (issue 12)."""

from __future__ import annotations

import configparser
from pathlib import Path

from gateway.config import load_settings
from tests.cli import invoke, onecard, operator_site

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


def test_broker_render_writes_one_account_per_gateway_instance(tmp_path: Path) -> None:
    env = operator_site(tmp_path)
    out = tmp_path / "broker"
    render = ("broker", "render", "--dir", str(out), "--no-persistence")
    onecard(
        env,
        *render,
        *("--gateway-user", "gw1", "--gateway-user", "gw2"),
        "--gateway-password-stdin",
        stdin="pw-one\npw-two\n",
    )
    first = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert sorted(first) == ["gw1", "gw2"]
    # adding gw3 later: only the new account reads a password; the others keep theirs
    onecard(
        env,
        *render,
        *("--gateway-user", "gw1", "--gateway-user", "gw2", "--gateway-user", "gw3"),
        "--gateway-password-stdin",
        stdin="pw-three\n",
    )
    second = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert sorted(second) == ["gw1", "gw2", "gw3"]
    assert second["gw1"] == first["gw1"] and second["gw2"] == first["gw2"]
    acl = (out / "acl").read_text()
    assert all(f"user {gw}" in acl for gw in ("gw1", "gw2", "gw3"))
    refused = invoke(env, *render, "--gateway-user", "gw4")
    assert refused.returncode != 0 and "gw4" in refused.stderr + refused.stdout
