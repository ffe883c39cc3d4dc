"""``python -m tests.fuzz --duration 120``: the schema-driven fuzzer at rate (``make fuzz``).

Prints messages sent, replies by code, the rate, the well-behaved terminal's p50/p99 and every
oracle failure with the smallest payload that showed it; exit code 1 when the oracle failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tests.fuzz.runner import Options, run_fuzz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=400.0, help="fuzz messages per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", type=int, default=4000, help="distinct cases (then cycled)")
    parser.add_argument(
        "--client", choices=["aiomqtt", "gmqtt", "lean"], help="gateway MQTT adapter"
    )
    parser.add_argument("--dir", type=Path, help="keep the site (registry, logs) here")
    args = parser.parse_args(argv)
    options = Options(
        duration=args.duration,
        rate=args.rate,
        seed=args.seed,
        corpus=args.corpus,
        client=args.client,
        directory=args.dir,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    report = asyncio.run(run_fuzz(options))
    print(report.render(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
