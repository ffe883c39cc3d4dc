"""The files under deploy/ agree with the code: metric names, ports, the rendered mosquitto.conf.

(``promtool check config/rules`` also passes on the Prometheus files; it is not needed here.)
"""

from __future__ import annotations

import configparser
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.config import load_settings
from gateway.mqtt.broker_files import TlsListener, render_mosquitto_conf

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

#: The gateway's metric names (histograms by their series), as the dashboard and alerts use them.
METRICS = frozenset(
    {
        "onecard_decisions_total",
        "onecard_decision_seconds_bucket",
        "onecard_denylist_version",
        "onecard_denylist_size",
        "onecard_terminals_online",
        "onecard_terminal_lag_versions",
        "onecard_terminals_lagging",
        "onecard_messages_dropped_total",
        "onecard_errors_total",
        "onecard_mqtt_connected",
        "onecard_mqtt_reconnects_total",
    }
)
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression reads (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, op) (rate(onecard_decision_seconds_bucket{op="x"}'
        "[$__rate_interval]))) > 0.05 and on (job) up == 0"
    )
    assert metric_names(expr) == {"onecard_decision_seconds_bucket", "up"}


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def test_dashboard_uses_only_gateway_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "onecard-dashboard.json").read_text())
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "onecard-gateway"
    all_panels = list(panels(dashboard["panels"]))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for panel in all_panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, target["expr"]
            assert names <= METRICS, (panel["title"], names - METRICS)
            used |= names
    assert used == METRICS  # every gateway metric has a panel
    p99 = [t["expr"] for p in all_panels for t in p.get("targets", []) if "0.99" in t["expr"]]
    assert p99
    assert all(e.startswith("histogram_quantile(0.99,") for e in p99)


def alert_rules() -> dict[str, str]:
    """alert name -> expr (each expr is one line in the file)."""
    text = (DEPLOY / "prometheus" / "onecard-alerts.yml").read_text()
    names = re.findall(r"^\s*- alert: (\S+)$", text, re.M)
    exprs = re.findall(r"^\s*expr: (.+)$", text, re.M)
    assert len(names) == len(exprs)
    return dict(zip(names, exprs, strict=True))


def test_alert_rules_use_gateway_metrics() -> None:
    rules = alert_rules()
    for name in (
        "OnecardGatewayDown",
        "OnecardDecisionLatencyHigh",
        "OnecardDenylistLag",
        "OnecardErrorReplies",
    ):
        assert name in rules
    for name, expr in rules.items():
        assert metric_names(expr) <= METRICS | {"up"}, name
    assert rules["OnecardDecisionLatencyHigh"].endswith("> 0.05")
    assert "onecard_terminal_lag_versions" in rules["OnecardDenylistLag"]
    assert rules["OnecardDenylistLag"].endswith("> 2")
    text = (DEPLOY / "prometheus" / "onecard-alerts.yml").read_text()
    assert re.search(r"OnecardDecisionLatencyHigh\n.*\n\s+for: 5m", text)
    assert re.search(r"OnecardDenylistLag\n.*\n\s+for: 2m", text)


def test_prometheus_scrapes_the_configured_metrics_port() -> None:
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    settings = load_settings(DEPLOY / "onecard.example.toml")
    assert f'"{settings.http.host}:{settings.http.port}"' in text
    assert "127.0.0.1:9108" in text
    assert re.search(r"job_name: onecard-gateway\n(?:.*\n)*?\s+scrape_interval: 5s", text)
    rule_files = re.findall(r"^\s+- (\S+\.yml)$", text, re.M)
    assert rule_files == ["onecard-alerts.yml"]
    assert (DEPLOY / "prometheus" / rule_files[0]).exists()
    # the gateway-down alert matches the job name
    assert 'job="onecard-gateway"' in alert_rules()["OnecardGatewayDown"]


def test_example_config_loads_and_matches_the_broker() -> None:
    path = DEPLOY / "onecard.example.toml"
    raw = tomllib.loads(path.read_text())
    assert set(raw) >= {"db", "log_level", "mqtt", "http", "denylist"}
    settings = load_settings(path)
    assert settings.mqtt.client_id == settings.mqtt.username  # use_username_as_clientid
    assert settings.mqtt.shared_group is None  # one instance: plain subscription
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert f"listener {settings.mqtt.port} {settings.mqtt.host}\n" in conf


def test_shipped_mosquitto_conf_is_what_the_renderer_writes() -> None:
    expected = render_mosquitto_conf(
        port=1883,
        bind="127.0.0.1",
        password_file=Path("/etc/mosquitto/onecard/passwd"),
        acl_file=Path("/etc/mosquitto/onecard/acl"),
        persistence=True,
        persistence_dir=Path("/var/lib/mosquitto"),
        log_dest=Path("/var/log/mosquitto/mosquitto.log"),
        tls=TlsListener(
            port=8883,
            certfile=Path("/etc/mosquitto/certs/onecard.crt"),
            keyfile=Path("/etc/mosquitto/certs/onecard.key"),
        ),
    )
    assert (DEPLOY / "mosquitto" / "mosquitto.conf").read_text() == expected
    dropin = (DEPLOY / "mosquitto" / "mosquitto-onecard.conf").read_text()
    assert "ExecStart=\nExecStart=/usr/sbin/mosquitto -c /etc/mosquitto/onecard/mosquitto.conf" in (
        dropin
    )


def test_gateway_unit() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "onecard-gateway.service").read_text())
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["ExecStart"] == (
        "/opt/onecard/.venv/bin/onecard serve --config /etc/onecard/onecard.toml"
    )
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "30"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/onecard"
    settings = load_settings(DEPLOY / "onecard.example.toml")
    assert settings.db.startswith("/var/lib/onecard/")  # writable under ProtectSystem=strict
    assert settings.drain_timeout_s < int(service["TimeoutStopSec"])
    assert unit["Install"]["WantedBy"] == "multi-user.target"
