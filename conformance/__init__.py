"""The onecard conformance kit (一卡通终端合规测试工具): tells a vendor whether a terminal, or a
gateway, speaks the terminal contract (docs/terminal-contract.md, version 1.1).

- ``python -m conformance terminal``: the kit plays the gateway against a vendor's terminal on a
  test broker (steps that need a person prompt, or are driven by a hook for automated rigs);
- ``python -m conformance gateway``: the kit plays terminals against a gateway.

Each run writes a JSON result and an HTML report, one line per step (Passed / Failed / Not
applicable) with its evidence (topic, payload, time), and exits 0 only when no step failed.
Like the simulators, the kit imports ``protocol`` only: it is a black-box peer.
"""

from __future__ import annotations

from conformance.gateway_suite import run_gateway_suite
from conformance.report import Report, Status, Step
from conformance.rig import HookRig, PromptRig, Rig, TapOutcome
from conformance.site import Site
from conformance.terminal_suite import TerminalPlan, run_terminal_suite

__all__ = [
    "HookRig",
    "PromptRig",
    "Report",
    "Rig",
    "Site",
    "Status",
    "Step",
    "TapOutcome",
    "TerminalPlan",
    "run_gateway_suite",
    "run_terminal_suite",
]
