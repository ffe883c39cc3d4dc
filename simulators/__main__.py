"""Command line: run a fleet of simulated terminals, or one scenario, against a broker.

Examples::

    python -m simulators fleet --host 127.0.0.1 --port 1883 \\
        --terminals terminals.json --cards cards.json --duration 60 --seed 1
    python -m simulators scenario lost_card_declined_everywhere --host 127.0.0.1 --port 1883 \\
        --terminals terminals.json --cards cards.json

``terminals.json``: ``[{"id": "pos-001", "kind": "pos", "password": "..."}, ...]``;
``cards.json``: ``[{"uid": "04A1B2C3D4E5F6", "number": "2026000001", "password": "..."}, ...]``.
Exit status: 0 when every invariant / check held, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from protocol.wire import TerminalKind
from simulators.dashboard import run_dashboard
from simulators.fleet import FleetConfig, FleetRunner, LiveStats, load_cards
from simulators.rig import serve_rig
from simulators.scenarios import SCENARIOS, ScenarioContext
from simulators.terminals import Credentials, load_credentials


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--terminals", type=Path, required=True, help="credentials JSON file")
    p.add_argument("--cards", type=Path, required=True, help="cards JSON file")
    p.add_argument("--timeout", type=float, default=5.0, help="request timeout (s), contract §4")
    p.add_argument("--heartbeat", type=float, default=None, help="override heartbeat interval")
    p.add_argument(
        "--state-dir", type=Path, default=None, help="keep POS seq/backlog here across runs"
    )
    p.add_argument("-v", "--verbose", action="store_true")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulators", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    fleet = sub.add_parser("fleet", help="run traffic and check the invariants")
    _common(fleet)
    fleet.add_argument("--duration", type=float, default=60.0)
    fleet.add_argument("--seed", type=int, default=1)
    fleet.add_argument(
        "--rate", type=float, default=2.0, help="peak taps/s per terminal (0 = closed loop)"
    )
    fleet.add_argument("--loss-per-minute", type=float, default=3.0)
    fleet.add_argument("--json", type=Path, default=None, help="also write the result here")
    fleet.add_argument("--dashboard", action="store_true", help="live terminal dashboard")
    fleet.add_argument(
        "--metrics-url", default=None, help="the gateway's /metrics, for the dashboard"
    )
    rig = sub.add_parser(
        "rig", help="one terminal behind the conformance kit's hook (JSON lines on stdin/stdout)"
    )
    rig.add_argument("--host", default="127.0.0.1")
    rig.add_argument("--port", type=int, default=1883)
    rig.add_argument("--id", required=True, help="terminal id (= broker username)")
    rig.add_argument("--kind", required=True, choices=["pos", "door", "kiosk", "water"])
    rig.add_argument("--password-file", type=Path, required=True)
    rig.add_argument("--timeout", type=float, default=2.0, help="request timeout (s)")
    rig.add_argument("-v", "--verbose", action="store_true")
    scenario = sub.add_parser("scenario", help="run one scripted scenario")
    scenario.add_argument("name", choices=sorted(SCENARIOS))
    _common(scenario)
    return p


async def _fleet(args: argparse.Namespace) -> int:
    config = FleetConfig(
        host=args.host,
        port=args.port,
        terminals=load_credentials(args.terminals),
        cards=load_cards(args.cards),
        duration_s=args.duration,
        seed=args.seed,
        rate=args.rate,
        loss_per_minute=args.loss_per_minute,
        heartbeat_interval_s=args.heartbeat,
        request_timeout_s=args.timeout,
        state_dir=args.state_dir,
    )
    stats = LiveStats()
    runner = FleetRunner(config, stats)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.stop)
    stop = asyncio.Event()
    board = (
        asyncio.create_task(run_dashboard(stats, args.metrics_url, stop))
        if args.dashboard
        else None
    )
    try:
        result = await runner.run()
    finally:
        stop.set()
        if board is not None:
            await board
    print(result.format())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return 0 if result.ok else 1


async def _scenario(args: argparse.Namespace) -> int:
    ctx = ScenarioContext(
        host=args.host,
        port=args.port,
        terminals=load_credentials(args.terminals),
        cards=load_cards(args.cards),
        request_timeout_s=args.timeout,
        heartbeat_interval_s=args.heartbeat,
        state_dir=args.state_dir,
    )
    result = await SCENARIOS[args.name](ctx)
    print(result.format())
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "rig":
        password = args.password_file.read_text(encoding="utf-8").strip()
        creds = Credentials(args.id, TerminalKind(args.kind), password)
        return asyncio.run(serve_rig(creds, args.host, args.port, args.timeout))
    run = _fleet if args.command == "fleet" else _scenario
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
