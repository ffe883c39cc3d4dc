"""``python -m tests.chaos`` (``make chaos``): every scenario at full size, a results table on
stdout and ``docs/reliability.md``.

    python -m tests.chaos                       # all scenarios, full size, writes the doc
    python -m tests.chaos --size short          # the pytest size, quickly
    python -m tests.chaos partition full-disk   # some scenarios only
    python -m tests.chaos --no-doc              # print only

Needs root (network namespaces, nftables, tmpfs mounts), mosquitto and nft. Exit status 1 when
an invariant failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.chaos.faults import Netns, fault_tools_missing
from tests.chaos.scenarios import FULL, SCENARIOS, SHORT, ScenarioResult, Size, run_scenario

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
KEYS = "abcdefg"
NAMES = {
    "a": "no acknowledged debit lost",
    "b": "none doubled",
    "c": "no debit without a received approval",
    "d": "conservation",
    "e": "deny list converged",
    "f": "gateway status truthful",
    "g": "offline sale after loss not debited",
}


def _cell(result: ScenarioResult, key: str) -> str:
    if any(c.key == "-" for c in result.checks):
        return "ERR"  # the harness itself failed: nothing was checked
    checks = [c for c in result.checks if c.key == key]
    if not checks:
        return "–"
    return "PASS" if all(c.ok for c in checks) else "FAIL"


def table(results: list[ScenarioResult]) -> str:
    head = f"{'scenario':<48} " + " ".join(f"{k:^4}" for k in KEYS) + "  wall"
    lines = [head, "-" * len(head)]
    for r in results:
        cells = " ".join(f"{_cell(r, k):^4}" for k in KEYS)
        lines.append(f"{r.key + '. ' + r.title:<48.48} {cells}  {r.wall_s:4.0f}s")
    lines.append("")
    lines.append("  ".join(f"{k}: {v}" for k, v in NAMES.items()))
    return "\n".join(lines)


def details(result: ScenarioResult) -> str:
    out = [f"{result.key}. {result.title} [{result.size}]"]
    out += [f"    {k}: {v}" for k, v in result.figures.items()]
    out += [f"  {c.mark} ({c.key}) {c.name}: {c.detail}" for c in result.checks]
    out += [f"  note: {n}" for n in result.notes]
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: list[ScenarioResult], size: Size, command: str, started: datetime) -> str:
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    lines = [
        "# Reliability: the chaos suite (issue 8)",
        "",
        f"Produced by `{command}` on {started:%Y-%m-%d %H:%M} UTC, commit `{git or '?'}` plus "
        "the working tree, on this project's 2-core Debian 12 machine "
        f"({platform.python_version()}, `{platform.machine()}`). Every figure below comes from "
        "that one run; re-run the command to refresh them (it rewrites this file).",
        "",
        "Each scenario builds its own site from the product's real parts: a private Mosquitto with "
        "the production configuration (persistence on), `onecard serve` as its own process on a "
        "freshly seeded SQLite registry, and simulated terminals (`simulators/terminals.py`, "
        "the contract's reference client) in the driver process. POS terminals sell in a closed "
        f"loop ({size.think_s * 1000:.0f} ms think time) while the fault is injected; then the "
        "site recovers, every terminal settles (in-doubt requests retried with their own "
        "`request_id`, offline sales uploaded) and the invariants are checked:",
        "",
    ]
    lines += [f"- **({k})** {v}" for k, v in NAMES.items() if k != "g"]
    lines += [
        "- **(g)** scenario 7 only: an offline sale dated after the card's loss is not debited "
        "(contract §8.3: a rejected sale is kept for the card center).",
        "",
        f"Size `{size.name}`: {size.students} cardholders, {size.started} terminals started "
        f"({size.terminals} provisioned), warm-up {size.warmup_s:.0f} s, faults of "
        f"{size.fault_s:.0f}–{2 * size.fault_s:.0f} s ({size.cycles} cycles for kills and locks), "
        f"{size.after_s:.0f} s after; gateway MQTT keep-alive {size.keepalive_s} s; terminal "
        f"request timeout {size.request_timeout_s:.1f} s with one retry (then in doubt). "
        '"Online answers" are replies from the gateway (approved or declined); "outage" is '
        'the longest span without any online answer fleet-wide; "recovery" is the time from the '
        "end of the fault until a one-second window answers at least half the pre-fault rate.",
        "",
        "## Results",
        "",
        "| scenario | " + " | ".join(f"({k})" for k in KEYS) + " | wall |",
        "|---|" + "---|" * len(KEYS) + "---|",
    ]
    for r in results:
        cells = " | ".join(_cell(r, k) for k in KEYS)
        lines.append(f"| {r.key}. {_md_escape(r.title)} | {cells} | {r.wall_s:.0f} s |")
    lines.append("")
    for r in results:
        lines += [f"### {r.key}. {_md_escape(r.title)}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in r.figures.items()]
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        lines += [
            f"| ({c.key}) {_md_escape(c.name)} | {c.mark} | {_md_escape(c.detail)} |"
            for c in r.checks
        ]
        if r.notes:
            lines += ["", *[f"- {_md_escape(n)}" for n in r.notes]]
        lines.append("")
    lines += [
        "## How to run",
        "",
        "- `make chaos` — every scenario at full size (about 10–15 minutes), prints the table and "
        "rewrites this file. Needs root (network namespaces, `nft`, tmpfs mounts); "
        "`deploy/ci/install-system.sh` installs `nftables` and `mosquitto`.",
        "- `.venv/bin/python -m tests.chaos --size short --no-doc [scenario ...]` — the small size.",
        "- `make test` runs `tests/chaos/test_chaos.py`: each scenario small, with the same "
        "invariants.",
        "",
    ]
    return "\n".join(lines)


async def main_async(keys: list[str], size: Size, work: Path) -> list[ScenarioResult]:
    results = []
    for key in keys:
        print(f"== {key} ({size.name}) ...", flush=True)
        result = await run_scenario(key, work, size)
        print(details(result), flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"some of: {', '.join(SCENARIOS)}")
    parser.add_argument("--size", choices=["full", "short"], default="full")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/reliability.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    unknown = [k for k in args.scenarios if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    missing = fault_tools_missing()
    if missing:
        print(f"make chaos needs: {', '.join(missing)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    size = FULL if args.size == "full" else SHORT
    keys = list(args.scenarios) or list(SCENARIOS)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="onecard-chaos-"))
    try:
        results = asyncio.run(main_async(keys, size, work))
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        else:
            print(f"work directory kept: {work}")
    print()
    print(table(results))
    print(f"\n{len(results)} scenarios in {time.monotonic() - t0:.0f} s")
    left = Netns.leftovers()
    if left:
        print(f"WARNING: network namespaces left behind: {left}", file=sys.stderr)
    if not args.no_doc:
        command = "python -m tests.chaos" + (f" {shlex.join(sys.argv[1:])}" if sys.argv[1:] else "")
        if command == "python -m tests.chaos":
            command = "make chaos"
        DOC.write_text(markdown(results, size, command, started))
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
