"""The counter CLI with card UIDs as clerks type them, and the registry file `onecard init`
creates (issue 8, items 10 and 13)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.cli import invoke, onecard, operator_site

SAMPLE = Path(__file__).parents[2] / "docs" / "samples" / "students-2026.csv"


def test_counter_uids_are_normalised_or_refused_and_the_registry_is_private(
    tmp_path: Path,
) -> None:
    env = operator_site(tmp_path)
    registry = Path(env["ONECARD_DB"])
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600  # was 0644 under the usual umask
    onecard(env, "stock", "purchase", "temp", "10", "--year", "2026-2027")
    onecard(env, "stock", "requisition", "temp", "10", "--issued-by", "科长", "--usage", "测试")
    onecard(
        env, "holder", "import", str(SAMPLE), "--kind", "student", "--valid-through", "2030-07-31"
    )
    refused = invoke(env, "--json", "card", "issue-temp", "2026000001", "--uid", "04a1b2c")
    assert refused.returncode != 0
    assert "UID" in refused.stdout + refused.stderr
    assert "物理号" in refused.stdout + refused.stderr
    onecard(env, "card", "issue-temp", "2026000001", "--uid", "04:a1:b2:c3:d4:e5:f6")
    shown = json.loads(onecard(env, "--json", "card", "show", "04a1b2c3d4e5f6"))
    assert "04A1B2C3D4E5F6" in json.dumps(shown)
