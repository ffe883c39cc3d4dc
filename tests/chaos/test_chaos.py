"""The chaos suite, small: each scenario of ``make chaos`` at the ``short`` size (a few seconds
of fault), with the same invariants. ``python -m tests.chaos`` runs them at full size."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos.__main__ import details
from tests.chaos.faults import Netns, fault_tools_missing
from tests.chaos.scenarios import SCENARIOS, SHORT, run_scenario

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_the_fault_tools_are_here() -> None:
    """No silent skip: without root, ``ip``, ``nft`` or tmpfs mounts the chaos suite cannot run,
    and that is a failure (deploy/ci/install-system.sh installs them)."""
    assert not fault_tools_missing(), f"chaos needs {', '.join(fault_tools_missing())}"


@pytest.mark.parametrize("key", list(SCENARIOS))
def test_scenario_keeps_the_invariants(key: str, tmp_path: Path) -> None:
    result = asyncio.run(run_scenario(key, tmp_path, SHORT))
    assert result.checks, details(result)
    assert result.ok, details(result)


def test_no_namespace_or_mount_left_behind() -> None:
    """Runs after the scenarios (file order): every fault was torn down."""
    assert Netns.leftovers() == []
    mounts = Path("/proc/mounts").read_text()
    assert "registry-fs" not in mounts
