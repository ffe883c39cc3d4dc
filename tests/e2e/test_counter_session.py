"""The README's counter session runs as written (issue #2 acceptance)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _block(text: str) -> str:
    match = re.search(r"counter-session:start[^\n]*\n(.*?)\n[^\n]*counter-session:end", text, re.S)
    assert match is not None
    return match.group(1).strip()


def test_readme_session_is_the_demo_script() -> None:
    readme = _block((ROOT / "README.md").read_text()).removeprefix("```bash").removesuffix("```")
    script = _block((ROOT / "deploy/demo/counter-session.sh").read_text())
    assert readme.strip() == script.strip()


@pytest.mark.slow
def test_counter_session_runs(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ONECARD_DB": str(tmp_path / "onecard.sqlite3"),
        "ONECARD_SESSION": str(tmp_path / "session.json"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("ONECARD_NOW", None)
    done = subprocess.run(
        ["bash", "deploy/demo/counter-session.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "REP-1: 挂失满48小时后方可补卡，可补卡时间：2026-11-28 10:05" in out
    assert "REP-1 refused at 47 h" in out
    assert "EXC-3 refused at 47 h" in out
    assert "补卡作废 replaced" in out
    assert "余额 balance: 80.00 元" in out
    assert "押金退款单 deposit refund slip" in out
    assert "交回 returned 3，缴费 paid for missing 2" in out
    assert "已报废 scrapped" in out
