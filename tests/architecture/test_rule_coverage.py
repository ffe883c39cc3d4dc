"""Every rule id of the card-center spec is cited by at least one test.

The spec (``card-center-rules.md``) numbers the published rules (``- REP-1 ...``). A rule without
a test citing it fails here, so a new rule cannot land untested. Rule tests cite ids in their names
or docstrings (``REP-1: ...``) under ``tests/gateway``, ``tests/protocol`` or
``tests/storage``.

The spec is looked up in the repository (``docs/spec/`` or ``docs/``), then at the path in
``ONECARD_RULES_SPEC``, then beside the repository in ``../shared/spec/`` (the team's shared
folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC_NAME = "card-center-rules.md"
RULE_ID = re.compile(r"\b[A-Z]{2,5}-\d+\b")
TEST_DIRS = ("tests/gateway", "tests/protocol", "tests/storage")
#: Families and counts of the published rules; a parse that finds fewer is broken, not lenient.
EXPECTED_FAMILIES = {
    "INV": 2,
    "ISS": 12,
    "TOP": 2,
    "LOSS": 4,
    "REP": 5,
    "EXC": 6,
    "REF": 4,
    "TERM": 6,
    "SCR": 2,
    "FEE": 4,
    "MEAL": 4,
    "ACC": 3,
}


def spec_path() -> Path:
    candidates = [ROOT / "docs" / "spec" / SPEC_NAME, ROOT / "docs" / SPEC_NAME]
    if env := os.environ.get("ONECARD_RULES_SPEC"):
        candidates.insert(0, Path(env))
    candidates.append(ROOT.parent / "shared" / "spec" / SPEC_NAME)
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise AssertionError(f"rule spec {SPEC_NAME} not found (tried {tried})")


def spec_rule_ids(text: str) -> set[str]:
    """Rule ids on the spec's list lines (``- ISS-4 ...``)."""
    ids: set[str] = set()
    for line in text.splitlines():
        if line.startswith("- "):
            ids.update(RULE_ID.findall(line))
    return ids


def cited_ids() -> set[str]:
    found: set[str] = set()
    for folder in TEST_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.update(RULE_ID.findall(path.read_text(encoding="utf-8")))
    return found


def test_spec_parse_finds_every_published_rule() -> None:
    ids = spec_rule_ids(spec_path().read_text(encoding="utf-8"))
    for family, count in EXPECTED_FAMILIES.items():
        expected = {f"{family}-{n}" for n in range(1, count + 1)}
        assert expected <= ids, f"spec parse lost {sorted(expected - ids)}"
    assert len(ids) >= sum(EXPECTED_FAMILIES.values())


def test_every_rule_id_is_cited_by_a_test() -> None:
    ids = spec_rule_ids(spec_path().read_text(encoding="utf-8"))
    missing = sorted(ids - cited_ids(), key=lambda r: (r.split("-")[0], int(r.split("-")[1])))
    assert not missing, f"rules without a test citing them: {', '.join(missing)}"


def test_the_parser_sees_rule_ids_only_on_list_lines() -> None:
    sample = "## REP — replacement\n- REP-1 Allowed after 48 hours.\nSee REP-9 in prose.\n"
    assert spec_rule_ids(sample) == {"REP-1"}
