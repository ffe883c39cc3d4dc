"""`onecard serve` as operators run it: TOML config, /metrics /livez /readyz, SIGTERM shutdown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.broker import PrivateBroker, Probe, free_port
from tests.cli import ONECARD, onecard, operator_site

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for(log_path: Path, pattern: str, timeout: float = 20.0) -> str:
    """The first group (or the whole match) of ``pattern`` once the serve log holds it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log_path.read_text(errors="replace"))
        if found:
            return found.group(1) if found.groups() else found.group(0)
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in the serve log:\n{log_path.read_text()[-3000:]}")


def test_serve_reports_health_metrics_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
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
    with PrivateBroker(
        tmp_path / "broker", users={"gateway": "gw-secret", "door-001": "door-secret"}
    ) as broker:
        http_port = free_port()
        config = tmp_path / "onecard.toml"
        config.write_text(
            f'db = "{tmp_path / "r.sqlite3"}"\nlog_level = "INFO"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            'username = "gateway"\npassword = "gw-secret"\n'
            f"[http]\nport = {http_port}\n"
        )
        serve_env = {k: v for k, v in env.items() if k != "ONECARD_DB"}
        log_path = tmp_path / "serve.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            [ONECARD, "serve", "--config", str(config)],
            env=serve_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 15
            status = 0
            while time.monotonic() < deadline:
                try:
                    status, _ = _get(f"http://127.0.0.1:{http_port}/readyz")
                except OSError:
                    status = 0
                if status == 200:
                    break
                time.sleep(0.1)
            assert status == 200
            assert _get(f"http://127.0.0.1:{http_port}/livez")[0] == 200
            with Probe(broker, "door-001", "door-secret") as door:
                door.connect()
                door.subscribe("onecard/v1/t/door-001/resp/#")
                body = {"v": 1, "request_id": "d-1", "data": {"card": "04FFFFFFFFFFFF"}}
                door.publish("onecard/v1/t/door-001/req/access", json.dumps(body).encode())
                reply = json.loads(door.next_message(timeout=5).payload)
            assert reply["data"] == {"allowed": False, "reason": "card_unknown"}
            # the tap engine (issue 14) decides in its own process; if it dies, the gateway's
            # writer thread takes over and terminals notice nothing
            engine = int(_wait_for(log_path, r"tap engine running \(pid (\d+)\)"))
            os.kill(engine, signal.SIGKILL)
            _wait_for(log_path, r"the tap engine stopped")
            with Probe(broker, "door-001", "door-secret") as door:
                door.connect()
                door.subscribe("onecard/v1/t/door-001/resp/#")
                body = {"v": 1, "request_id": "d-2", "data": {"card": "04FFFFFFFFFFFF"}}
                door.publish("onecard/v1/t/door-001/req/access", json.dumps(body).encode())
                reply = json.loads(door.next_message(timeout=5).payload)
            assert reply["request_id"] == "d-2"
            assert reply["data"] == {"allowed": False, "reason": "card_unknown"}
            assert _get(f"http://127.0.0.1:{http_port}/readyz")[0] == 200
            code, metrics = _get(f"http://127.0.0.1:{http_port}/metrics")
            assert code == 200
            assert b'onecard_decisions_total{op="access",result="approved"} 2.0' in metrics
            assert b"onecard_mqtt_connected 1.0" in metrics
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log_file.close()
        log = log_path.read_text()
        with Probe(broker, "door-001", "door-secret") as door:
            door.connect()
            door.subscribe("onecard/v1/gateway/status")
            status_msg = json.loads(door.next_message(timeout=5).payload)
        assert status_msg["state"] == "offline", log
