"""``python -m tests.chaos`` (``make chaos``): every scenario at full size, a results table on
stdout and ``docs/reliability.md``.

    python -m tests.chaos                       # all scenarios, full size, writes the doc
    python -m tests.chaos --size short          # the pytest size, quickly
    python -m tests.chaos partition full-disk   # some scenarios only
    python -m tests.chaos --no-doc              # print only (the default for a partial run)

Needs root (network namespaces, nftables, tmpfs mounts), mosquitto and nft. Exit status 1 when
an invariant failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import shlex
import signal
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
    "g": "offline sales settled by the rules",
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


FINDINGS_START = "<!-- findings: written by hand, kept when the command rewrites this file -->"
FINDINGS_END = "<!-- /findings -->"


def kept_findings() -> str:
    """The hand-written findings block of the current doc (empty placeholder if none)."""
    try:
        text = DOC.read_text()
    except FileNotFoundError:
        text = ""
    if FINDINGS_START in text and FINDINGS_END in text:
        return text.split(FINDINGS_START, 1)[1].split(FINDINGS_END, 1)[0].strip("\n")
    return "## Findings\n\n(to be written after a run: what failed, why, and who fixes it)"


def markdown(results: list[ScenarioResult], size: Size, command: str, started: datetime) -> str:
    findings = kept_findings()

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(ROOT), *args]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    tree = "plus uncommitted changes" if dirty else "(a clean checkout)"
    lines = [
        "# Reliability: the chaos suite (issue 8)",
        "",
        f"Produced by `{command}`"
        + (" (what `make chaos` runs)" if command == "python -m tests.chaos" else "")
        + f" on {started:%Y-%m-%d %H:%M} UTC, commit `{commit}` {tree}, "
        "on this project's 2-core Debian 12 machine "
        f"({platform.python_version()}, `{platform.machine()}`). Every figure below comes from "
        "that one run; re-run the command to refresh them (it rewrites this file).",
        "",
        "Each scenario builds its own site from the product's real parts: a private Mosquitto with "
        "the production configuration (persistence on), `onecard serve` as its own process on a "
        "freshly seeded SQLite registry, and simulated terminals (`simulators/terminals.py`, "
        "the contract's reference client) in the driver process. POS terminals sell in a closed "
        f"loop ({size.think_s * 1000:.0f} ms think time online, 1 s after a sale decided offline) "
        "while the fault is injected; then the "
        "site recovers, every terminal settles (in-doubt requests retried with their own "
        "`request_id`, offline sales uploaded) and the invariants are checked:",
        "",
    ]
    lines += [f"- **({k})** {v}" for k, v in NAMES.items() if k != "g"]
    lines += [
        "- **(g)** scenario 7 only: every offline sale the POS stored is recorded once with its "
        "outcome, a refused one moved no money, and the sale dated after its card was reported "
        "lost (the offline POS could not know) is refused or accepted only as *disputed* with the "
        "reason recorded (issue 8 item 3, contract §8.3) — never debited silently.",
        "",
        f"Size `{size.name}`: {size.students} cardholders, {size.started} terminals started "
        f"({size.terminals} provisioned), warm-up {size.warmup_s:.0f} s, faults of "
        f"{size.fault_s:.0f}–{2 * size.fault_s:.0f} s ({size.cycles} cycles for kills and locks), "
        f"{size.after_s:.0f} s after; gateway MQTT keep-alive {size.keepalive_s} s; terminal "
        f"request timeout {size.request_timeout_s:.1f} s with one retry (then in doubt). "
        '"Online answers" are replies from the gateway (approved or declined) to the load '
        'POS; "outage" is the longest span without any online answer fleet-wide; "first online '
        'answer" and "recovery to half the rate" count from the end of the fault (restart '
        'issued, partition healed, space freed, lock released); "settled" is when the last '
        "in-doubt request was answered and the last offline sale uploaded.",
        "",
        "Scenarios: **1** `kill -9` of `onecard serve`, restarted after a supervisor's delay; "
        "**2** `kill -9` of Mosquitto (persistence on, as rendered for production), restarted on "
        "the same port; **3** the gateway in its own network namespace joined by a veth pair, "
        "every packet to and from the broker dropped by `nft` rules (no reset: TCP goes silent), "
        "then healed; **4** the registry on a 256 MiB tmpfs, filled to the last byte while taps "
        "run, then freed; **5** another process holds SQLite's write lock (`BEGIN IMMEDIATE`, "
        "as a slow counter transaction would); **6** one provisioned terminal publishes on its "
        "own `req/` topic as fast as the broker takes it (32 QoS 1 publishes in flight: valid "
        "requests, garbage, one in 20 a payload of ¼–1× the size shown, one in 2,000 a 9 MiB "
        "payload above the broker's `max_packet_size` of 8 MiB); **7** POS "
        "terminals whose clock reads an hour ago go offline, sell through the hour (a card is "
        "reported lost at the counter 3 minutes in and sold to 5 minutes in), then reconnect "
        "and upload. A card is reported lost at the counter during every fault, so (e) checks "
        "a change made while the site was broken.",
        "",
        FINDINGS_START,
        findings,
        FINDINGS_END,
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


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the scenarios' context managers stop processes, delete the network
    namespace and unmount the tmpfs on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"some of: {', '.join(SCENARIOS)}")
    parser.add_argument("--size", choices=["full", "short"], default="full")
    parser.add_argument(
        "--doc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite docs/reliability.md (default: only at full size, all scenarios)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    unknown = [k for k in args.scenarios if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    missing = fault_tools_missing()
    if missing:
        print(f"make chaos needs: {', '.join(missing)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
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
    write_doc = args.doc if args.doc is not None else (size is FULL and not args.scenarios)
    if write_doc:
        command = "python -m tests.chaos" + (f" {shlex.join(sys.argv[1:])}" if sys.argv[1:] else "")
        DOC.write_text(markdown(results, size, command, started))
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
