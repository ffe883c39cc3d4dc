"""Command line of the conformance kit.

Examples::

    # against the running demo (make demo): the kit's own test terminals and cards
    python -m conformance gateway --demo var/demo-live

    # against any gateway: the broker, and a site file naming test terminals and cards
    python -m conformance gateway --host mqtt.test.example --port 8883 --cafile ca.pem \\
        --site site.json

    # a vendor's POS on a test broker; a person presents the cards when asked
    python -m conformance terminal --host 127.0.0.1 --port 1883 --gateway-user gateway \\
        --gateway-password-file gw.secret --terminal-id pos-lab-1 --kind pos
    # ... or an automated rig behind a hook (JSON lines, see conformance/rig.py)
    python -m conformance terminal ... --hook "./rig-driver --port /dev/ttyUSB0"

Each run writes ``conformance-<mode>.json`` and ``.html`` to ``--out`` and prints one line per
step. Exit status: 0 every step passed or was not applicable, 1 a step failed, 2 the kit could
not run (bad arguments, unreadable site file, broker refused the connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from conformance.gateway_suite import run_gateway_suite
from conformance.mqtt import Broker, PeerError
from conformance.report import Report
from conformance.rig import HookRig, PromptRig, Rig
from conformance.site import Site, SiteError
from conformance.terminal_suite import ALL_STEPS, TerminalPlan, run_terminal_suite
from protocol.carduid import is_card_uid
from protocol.wire import TerminalKind, is_valid_terminal_id


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m conformance",
        description="一卡通终端合规测试 onecard conformance kit (terminal contract 1.1)",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in ("gateway", "terminal"):
        s = sub.add_parser(mode)
        s.add_argument("--host", default="127.0.0.1", help="the broker")
        s.add_argument("--port", type=int, default=None, help="the broker's port")
        s.add_argument("--cafile", default=None, help="TLS: the campus CA certificate")
        s.add_argument(
            "--out",
            type=Path,
            default=Path("conformance-report"),
            help="directory for conformance-MODE.json and .html",
        )
    g = sub.choices["gateway"]
    g.add_argument("--site", type=Path, help="site file: test terminals and cards (JSON)")
    g.add_argument(
        "--demo", type=Path, help="a `make demo` directory (var/demo-live): its port and site"
    )
    t = sub.choices["terminal"]
    t.add_argument("--gateway-user", default="gateway")
    t.add_argument("--gateway-password-file", type=Path, required=True)
    t.add_argument("--terminal-id", required=True)
    t.add_argument("--kind", choices=[k.value for k in TerminalKind], required=True)
    t.add_argument("--hook", default=None, help="rig command speaking JSON lines")
    t.add_argument("--cards", default=None, help="three test card UIDs: good,lost,other")
    t.add_argument("--heartbeat", type=int, default=2, help="heartbeat_interval_s to give")
    t.add_argument("--offline-max-age", type=int, default=None, help="offline_max_age_s")
    t.add_argument("--only", default=None, help="comma-separated step ids (T06,T07,...)")
    return p


def _fail(text: str) -> int:
    sys.stderr.write(f"conformance: {text}\n")
    return 2


async def _gateway(args: argparse.Namespace) -> tuple[int, Report | None]:
    port = args.port
    site_path = args.site
    if args.demo is not None:
        try:
            ports = json.loads((args.demo / "ports.json").read_text())
        except (OSError, ValueError) as exc:
            return _fail(f"{args.demo}: not a demo directory ({exc}); run `make demo`"), None
        port = port or int(ports["mqtt"])
        site_path = site_path or args.demo / "conformance.json"
    if site_path is None or port is None:
        return _fail("give --site and --port, or --demo DIR"), None
    try:
        site = Site.load(site_path)
    except SiteError as exc:
        return _fail(str(exc)), None
    report = Report("gateway", f"mqtt://{args.host}:{port}")
    await run_gateway_suite(Broker(args.host, port, args.cafile), site, report)
    return 0, report


async def _terminal(args: argparse.Namespace) -> tuple[int, Report | None]:
    if args.port is None:
        return _fail("give --port"), None
    if not is_valid_terminal_id(args.terminal_id):
        return _fail(f"bad terminal id {args.terminal_id!r}"), None
    try:
        password = args.gateway_password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return _fail(str(exc)), None
    cards = tuple(args.cards.split(",")) if args.cards else None
    if cards is not None and (len(cards) != 3 or not all(is_card_uid(c) for c in cards)):
        return _fail("--cards takes three card UIDs (upper-case hex): good,lost,other"), None
    rig: Rig = HookRig(args.hook) if args.hook else PromptRig()
    only = frozenset(args.only.split(",")) if args.only else None
    if only is not None and not only <= set(ALL_STEPS):
        return _fail(f"unknown step ids {sorted(only - set(ALL_STEPS))}"), None
    plan = TerminalPlan(
        args.terminal_id,
        TerminalKind(args.kind),
        heartbeat_interval_s=args.heartbeat,
        # a person needs time between the taps; an automated rig does not
        offline_max_age_s=args.offline_max_age or (5 if args.hook else 180),
        only=only,
        **({"cards": cards} if cards else {}),  # type: ignore[arg-type]
    )
    report = Report("terminal", f"{args.kind} {args.terminal_id} @ mqtt://{args.host}:{args.port}")
    try:
        await run_terminal_suite(
            Broker(args.host, args.port, args.cafile),
            args.gateway_user,
            password,
            plan,
            rig,
            report,
        )
    finally:
        if isinstance(rig, HookRig):
            await rig.close()
    return 0, report


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runner = _gateway if args.mode == "gateway" else _terminal
    try:
        status, report = asyncio.run(runner(args))
    except PeerError as exc:
        return _fail(f"the broker refused the kit's connection: {exc}")
    except KeyboardInterrupt:
        return _fail("interrupted")
    if report is None:
        return status
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / f"conformance-{args.mode}.json")
    report.write_html(args.out / f"conformance-{args.mode}.html")
    for line in report.text_lines():
        print(line)  # noqa: T201
    print(f"报告 report: {args.out / f'conformance-{args.mode}.html'}")  # noqa: T201
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
