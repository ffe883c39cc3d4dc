"""The README's "Running the gateway by hand" block runs as written (ports and paths moved)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.broker import free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running the gateway by hand", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def _kill(pattern: str) -> None:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    for pid in found.stdout.split():
        os.kill(int(pid), signal.SIGTERM)


def test_the_gateway_by_hand(tmp_path: Path) -> None:
    # mosquitto reads its files as user mosquitto: the site lives under the repo's var/ (as in
    # the README), not in pytest's private temporary directory
    site = ROOT / "var" / f"test-site-{tmp_path.name}"
    shutil.rmtree(site, ignore_errors=True)
    script = (
        _block()
        .replace("var/site", str(site))
        .replace("18883", str(free_port()))
        .replace("19108", str(free_port()))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONECARD_")}
    log = tmp_path / "by-hand.log"
    try:
        # output to a file: the block leaves the gateway running in the background, which
        # would keep a pipe open (and subprocess.run waiting) until it stops
        with log.open("w") as out_file:
            done = subprocess.run(
                ["bash", "-e", "-c", script],
                cwd=ROOT,
                env=env,
                stdout=out_file,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
    finally:
        _kill(f"{site}/broker/mosquitto.conf")
        found = subprocess.run(
            ["pgrep", "-f", "onecard serve"], capture_output=True, text=True, check=False
        )
        for pid in found.stdout.split():
            environ = Path(f"/proc/{pid}/environ")
            try:
                if str(site).encode() in environ.read_bytes():
                    os.kill(int(pid), signal.SIGTERM)
            except OSError:
                pass
        shutil.rmtree(site, ignore_errors=True)
    out = log.read_text()
    assert done.returncode == 0, out[-3000:]
    assert '"ok":true' in out
    assert 'onecard_decisions_total{op="purchase",result="approved"} 1.0' in out
