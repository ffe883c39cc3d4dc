"""Run the benchmark suite and regenerate ``docs/benchmarks.md``.

    python -m bench.run [--quick] [--only tap,propagation,scale,durability,web] [--no-profile]
    python -m bench.run --only web --merge-into bench/results/<earlier>.json

Every figure that depends on the machine is set beside a baseline measured in the same run (the
echo floor on the same broker, the fan-out floor, an empty-registry gateway, the disk's fsync
rate). The gateway always runs as its own process (``onecard serve``); load generators, the floor
and the terminals run in other processes. Everything listens on 127.0.0.1 only, every run is
bounded in time and stops by itself. Results: ``bench/results/<date>-<time>-<host>[-quick].json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import durability, scale, web
from bench.fixture import (
    GATEWAY_USER,
    KIOSK_ID,
    PUBLISHER_USER,
    ROOT,
    GatewayProcess,
    TapFixture,
    cpu_seconds,
    door_ids,
    ledger_state,
    mosquitto_version,
    seed_tap_registry,
    start_broker,
    terminal_password,
)
from bench.propagation import combine
from bench.report import render
from tests.broker import PrivateBroker

PHASES = ("tap", "propagation", "scale", "durability", "web")
CLOSED = (1, 10, 100, 500)
OPEN_RATES = (200, 1000, 5000)
OPEN_TERMINALS = 100
POS_COUNT = 500
CARDS = 2000
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    sys.stderr.write(f"[bench {stamp}] {message}\n")
    sys.stderr.flush()


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            cwd=ROOT,
            check=False,
        ).stdout.strip()
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "host": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_mib": mem,
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "kernel": platform.release(),
        "commit": commit,
    }


# ----------------------------------------------------------------------------- tap decisions


class Campus:
    """One seeded registry, one broker with every account, the gateway when asked."""

    def __init__(
        self,
        workdir: Path,
        *,
        doors: int,
        mqtt_client: str | None = None,
        engine: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.mqtt_client = mqtt_client
        self.engine = engine
        log(f"seeding {CARDS} cards and {POS_COUNT} POS through the services")
        self.fixture: TapFixture = asyncio.run(
            seed_tap_registry(workdir / "campus.sqlite3", cards=CARDS, pos=POS_COUNT)
        )
        log(f"seeded in {self.fixture.seconds:.1f} s")
        accounts = [*self.fixture.pos, KIOSK_ID, *door_ids(doors)]
        self.broker: PrivateBroker = start_broker(workdir / "broker", accounts)
        self.gateway: GatewayProcess | None = None

    def start_gateway(self) -> GatewayProcess:
        if self.gateway is None:
            self.gateway = GatewayProcess(
                self.workdir / "gateway",
                self.fixture.db,
                self.broker,
                poll_interval_ms=20,
                mqtt_client=self.mqtt_client,
                engine=self.engine,
            )
            self.gateway.start()
            ready = self.gateway.wait_ready()
            log(f"gateway ready in {ready:.2f} s (pid {self.gateway.pid})")
        return self.gateway

    def close(self) -> None:
        if self.gateway is not None:
            code = self.gateway.stop()
            log(f"gateway stopped (exit {code})")
            self.gateway = None
        self.broker.stop()


def _run_child(module: str, spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    spec_path = workdir / f"{module.rsplit('.', 1)[-1]}-spec.json"
    out_path = workdir / f"{module.rsplit('.', 1)[-1]}-out.json"
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(  # noqa: S603 (our own modules)
        [sys.executable, "-m", module, str(spec_path), str(out_path)],
        cwd=ROOT,
        timeout=timeout,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"{module} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def _points(only: set[str] | None = None) -> list[tuple[str, int, int | None]]:
    points: list[tuple[str, int, int | None]] = [("closed", n, None) for n in CLOSED]
    points += [("open", OPEN_TERMINALS, rate) for rate in OPEN_RATES]
    if only:
        points = [p for p in points if _name(*p) in only]
    return points


def _name(mode: str, terminals: int, rate: int | None) -> str:
    return f"closed-{terminals}" if mode == "closed" else f"open-{rate}"


def _load_spec(
    campus: Campus,
    mode: str,
    terminals: int,
    rate: int | None,
    *,
    tag: str,
    seconds: float,
    warmup: float,
    replays: int,
) -> dict[str, Any]:
    ids = campus.fixture.pos[:terminals]
    return {
        "host": "127.0.0.1",
        "port": campus.broker.port,
        "terminals": [{"id": t, "password": terminal_password(t)} for t in ids],
        "cards": [c["uid"] for c in campus.fixture.cards[: CARDS - 200]],
        "tag": tag,
        "mode": mode,
        "rate": rate,
        "seconds": seconds,
        "warmup_s": warmup,
        "replays": replays,
        "timeout_s": 5.0,
        "drain_s": 30.0,
        "max_pending": 3000,
        "amount_fen": 1,
        "seed": terminals * 7 + (rate or 0),
    }


def _verify(
    before: dict[str, int], after: dict[str, int], result: dict[str, Any]
) -> dict[str, Any]:
    """Zero lost or doubled debits: every approved reply is one purchase transfer, balances
    moved by exactly the approved amounts, replays returned the original transfer."""
    transfers = after["purchases"] - before["purchases"]
    fen = after["purchase_fen"] - before["purchase_fen"]
    purse_drop = before["purse_fen"] - after["purse_fen"]
    approved = int(result["approved"])
    amount = int(result["approved_amount_fen"])
    replay = result.get("replay", {})
    decided = after["idempotency"] - before["idempotency"]
    lost = max(0, approved - transfers)
    doubled = (
        max(0, transfers - approved - int(result["unanswered"]))
        + int(result["duplicate_transfer_ids"])
        + int(replay.get("differs", 0))
    )
    return {
        "transfers": transfers,
        "approved": approved,
        "transfer_fen": fen,
        "approved_fen": amount,
        "purse_drop_fen": purse_drop,
        "idempotency_rows": decided,
        "decisions_replied": approved + int(result["declined"]),
        "lost": lost,
        "doubled": doubled,
        "balances_match": fen == amount == purse_drop,
        "ok": lost == 0
        and doubled == 0
        and fen == amount == purse_drop
        and int(result["unanswered"]) == 0,
    }


def _profile(pid: int, seconds: float, out: Path) -> dict[str, Any] | None:
    """py-spy (when installed) on the gateway: collapsed stacks -> top functions."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    raw = out.with_suffix(".txt")
    svg = out.with_suffix(".svg")
    argv = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", "250", "--nonblocking", "--format", "raw", "-o", str(raw)]
    proc = subprocess.Popen(  # noqa: S603 (py-spy from the venv)
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return {"proc": proc, "raw": raw, "svg": svg}


#: Frames every stack shares (process start, click, the event loop, thread start): left out of
#: the inclusive ranking so it shows the gateway's own functions.
_PLUMBING = (
    "(click/",
    "(threading.py)",
    "(asyncio/runners.py)",
    "(asyncio/base_events.py)",
    "(asyncio/events.py)",
    "(onecard)",
    "(gateway/cli/main.py)",
    "<module>",
)


def summarise_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    frame_re = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            match = frame_re.match(frame)
            if match is None:
                continue
            file = match["file"]
            for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
                if marker in file:
                    file = file.split(marker, 1)[1]
            frames.append(f"{match['fn']} ({file})")
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            if not any(part in name for part in _PLUMBING):
                inclusive[name] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "share": count / total if total else 0.0}
            for name, count in counter.most_common(top)
        ]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}


def tap_phase(
    campus: Campus, *, quick: bool, profile: bool, only: set[str] | None = None
) -> dict[str, Any]:
    seconds, warmup = (4.0, 1.0) if quick else (15.0, 2.0)
    workdir = campus.workdir
    points = _points(only)
    out: dict[str, Any] = {"seconds": seconds, "warmup_s": warmup, "points": {}}
    timeout = seconds + warmup + 180
    # 1. the floor first: the gateway's persistent session must never have existed yet, or the
    #    broker would queue these requests for it
    log("echo floor: starting")
    argv = [sys.executable, "-m", "bench.floor", "--port", str(campus.broker.port)]
    argv += ["--username", GATEWAY_USER, "--password", terminal_password(GATEWAY_USER)]
    argv += ["--max-seconds", str(int(len(points) * (timeout + 10)))]
    floor = subprocess.Popen(  # noqa: S603 (our own module)
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert floor.stdout is not None
        if floor.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo floor did not start")
        for mode, terminals, rate in points:
            name = _name(mode, terminals, rate)
            cpu0 = cpu_seconds(floor.pid)
            spec = _load_spec(
                campus,
                mode,
                terminals,
                rate,
                tag=f"f{name.replace('-', '')}",
                seconds=seconds,
                warmup=warmup,
                replays=0,
            )
            result = _run_child("bench.load", spec, workdir, timeout)
            result["responder_cpu_s"] = cpu_seconds(floor.pid) - cpu0
            out["points"].setdefault(name, {})["floor"] = result
            log(
                f"floor {name}: {result['throughput']:.0f}/s p99 "
                f"{result['latency_ms'].get('p99', 0):.2f} ms"
            )
    finally:
        floor.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            floor.wait(10)
        if floor.poll() is None:
            floor.kill()
            floor.wait(10)
    # 2. the gateway on the same broker
    gateway = campus.start_gateway()
    broker_pid = campus.broker.proc.pid if campus.broker.proc else 0
    for mode, terminals, rate in points:
        name = _name(mode, terminals, rate)
        ids = campus.fixture.pos[:terminals]
        before = ledger_state(campus.fixture.db, ids)
        cpu0, bcpu0 = cpu_seconds(gateway.pid), cpu_seconds(broker_pid)
        spec = _load_spec(
            campus,
            mode,
            terminals,
            rate,
            tag=f"g{name.replace('-', '')}",
            seconds=seconds,
            warmup=warmup,
            replays=50 if quick else 200,
        )
        result = _run_child("bench.load", spec, workdir, timeout)
        time.sleep(0.5)
        result["responder_cpu_s"] = cpu_seconds(gateway.pid) - cpu0
        result["broker_cpu_s"] = cpu_seconds(broker_pid) - bcpu0
        after = ledger_state(campus.fixture.db, ids)
        result["verify"] = _verify(before, after, result)
        out["points"].setdefault(name, {})["gateway"] = result
        log(
            f"gateway {name}: {result['throughput']:.0f}/s p99 "
            f"{result['latency_ms'].get('p99', 0):.2f} ms verify={result['verify']['ok']}"
        )
        floor_tp = out["points"][name]["floor"]["throughput"]
        out["points"][name]["ratio"] = result["throughput"] / floor_tp if floor_tp else None
    if profile:
        out["profile"] = _profiled_run(campus, gateway, seconds=max(seconds, 8.0), warmup=warmup)
    return out


def _profiled_run(
    campus: Campus, gateway: GatewayProcess, *, seconds: float, warmup: float
) -> dict[str, Any] | None:
    target = campus.workdir / "gateway-profile"
    spec = _load_spec(
        campus, "closed", 100, None, tag="gprof", seconds=seconds, warmup=warmup, replays=0
    )
    spy = _profile(gateway.pid, seconds + warmup - 0.5, target)
    if spy is None:
        log("py-spy not installed: no profile")
        return None
    log("profiling the gateway under closed-100 with py-spy")
    ids = campus.fixture.pos[:100]
    before = ledger_state(campus.fixture.db, ids)
    result = _run_child("bench.load", spec, campus.workdir, seconds + warmup + 180)
    proc = spy["proc"]
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    after = ledger_state(campus.fixture.db, ids)
    raw: Path = spy["raw"]
    if not raw.exists():
        log(f"py-spy produced nothing: {err.decode(errors='replace')[-500:]}")
        return None
    summary = summarise_profile(raw)
    keep = RESULTS / "profile-closed-100.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(raw, keep)
    summary["collapsed_stacks"] = str(keep.relative_to(ROOT))
    summary["throughput_while_profiled"] = result["throughput"]
    summary["verify"] = _verify(before, after, result)
    return summary


# ----------------------------------------------------------------------------- propagation


def propagation_phase(campus: Campus, *, quick: bool, workers: int = 2) -> dict[str, Any]:
    campus.start_gateway()
    rounds = 5 if quick else 20
    students = list(reversed(campus.fixture.cards))  # the tap load uses the others
    out: dict[str, Any] = {}
    used = 0
    base = {"host": "127.0.0.1", "port": campus.broker.port}
    for count in (100, 1000):
        ids = door_ids(count)
        procs: list[tuple[subprocess.Popen[str], Path]] = []
        kiosk_spec = {
            **base,
            "kiosk": {"id": KIOSK_ID, "password": terminal_password(KIOSK_ID)},
            "publisher": {"id": PUBLISHER_USER, "password": terminal_password(PUBLISHER_USER)},
            "students": [
                {"number": s["number"], "password": s["password"]}
                for s in students[used : used + rounds]
            ],
            "rounds": rounds,
            "settle_s": 0.4 + count / 2000,
        }
        used += rounds
        try:
            for w in range(workers):
                spec_path = campus.workdir / f"prop-{count}-{w}-spec.json"
                out_path = campus.workdir / f"prop-{count}-{w}-out.json"
                out_path.unlink(missing_ok=True)
                mine = ids[w::workers]
                spec = {
                    **base,
                    "terminals": [{"id": t, "password": terminal_password(t)} for t in mine],
                    "max_seconds": rounds * 10 + 120,
                }
                spec_path.write_text(json.dumps(spec))
                argv = [sys.executable, "-m", "bench.propagation", "terminals"]
                argv += [str(spec_path), str(out_path)]
                proc = subprocess.Popen(  # noqa: S603 (our own module)
                    argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                procs.append((proc, out_path))
            for proc, _ in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline().strip()
                if not line.startswith("ready"):
                    raise RuntimeError(f"propagation terminals did not start: {line!r}")
            kiosk = _run_child_role("kiosk", kiosk_spec, campus.workdir, rounds * 10 + 120)
        finally:
            for proc, _ in procs:
                with contextlib.suppress(BrokenPipeError, OSError):
                    assert proc.stdin is not None
                    proc.stdin.write("stop\n")
                    proc.stdin.close()
            for proc, _ in procs:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        parts = [json.loads(path.read_text()) for _, path in procs]
        result = combine(kiosk, parts)
        out[str(count)] = result
        log(
            f"propagation {count}: p99 from reply "
            f"{result['from_reply_ms'].get('p99', float('nan')):.1f} ms, from send "
            f"{result['from_send_ms'].get('p99', float('nan')):.1f} ms, floor p99 "
            f"{result['floor_ms'].get('p99', float('nan')):.1f} ms"
        )
    return out


def _run_child_role(role: str, spec: dict[str, Any], workdir: Path, limit: float) -> dict[str, Any]:
    spec_path = workdir / f"prop-{role}-spec.json"
    out_path = workdir / f"prop-{role}-out.json"
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(  # noqa: S603 (our own module)
        [sys.executable, "-m", "bench.propagation", role, str(spec_path), str(out_path)],
        cwd=ROOT,
        timeout=limit,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"propagation {role} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


# ----------------------------------------------------------------------------- main


def rerender(path: Path) -> int:
    """Rewrite the doc from a stored result (re-ranking the profile from its stacks)."""
    results = json.loads(path.read_text())
    prof = results.get("phases", {}).get("tap", {}).get("profile")
    if prof and (ROOT / prof["collapsed_stacks"]).exists():
        prof.update(summarise_profile(ROOT / prof["collapsed_stacks"]))
    DOC.write_text(render(results, str(path.resolve().relative_to(ROOT))))
    log(f"rewrote {DOC.relative_to(ROOT)} from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="onecard benchmark suite")
    parser.add_argument("--quick", action="store_true", help="short points (3-5 s), fewer rounds")
    parser.add_argument(
        "--only", default=",".join(PHASES), help="comma list of " + ",".join(PHASES)
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--mqtt-client",
        choices=("aiomqtt", "gmqtt", "lean"),
        help="the gateway's MQTT adapter (default: the gateway's own default)",
    )
    parser.add_argument(
        "--engine",
        choices=("process", "thread"),
        help="where the gateway decides SQLite taps (default: the gateway's own default)",
    )
    parser.add_argument(
        "--points",
        help="tap phase: only these points (comma list, e.g. closed-100,open-1000); for "
        "experiments, never for docs/benchmarks.md",
    )
    parser.add_argument(
        "--render", metavar="RESULT_JSON", help="only rewrite docs/benchmarks.md from a result"
    )
    parser.add_argument(
        "--merge-into",
        metavar="RESULT_JSON",
        help="add the phases measured now to an earlier result (its other phases kept, both "
        "runs named in docs/benchmarks.md)",
    )
    args = parser.parse_args(argv)
    if args.render:
        return rerender(Path(args.render))
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.points and not args.no_docs:
        parser.error("--points is for experiments: add --no-docs")
    command = "python -m bench.run" + (" " + " ".join(sys.argv[1:]) if argv is None else "")
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "command": command.strip(),
        "quick": args.quick,
        "machine": machine(),
        "phases": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="onecard-bench-"))
    log(f"work directory {workdir}")
    try:
        if "tap" in phases or "propagation" in phases:
            campus = Campus(
                workdir / "campus", doors=1000, mqtt_client=args.mqtt_client, engine=args.engine
            )
            try:
                if "tap" in phases:
                    only = {p.strip() for p in (args.points or "").split(",") if p.strip()}
                    results["phases"]["tap"] = tap_phase(
                        campus, quick=args.quick, profile=not args.no_profile, only=only or None
                    )
                if "propagation" in phases:
                    results["phases"]["propagation"] = propagation_phase(campus, quick=args.quick)
            finally:
                campus.close()
        if "scale" in phases:
            log("scale: bulk-loading 1,000,000 cards and 100,000 deny entries")
            results["phases"]["scale"] = scale.run(
                workdir / "scale", cards=1_000_000, denied=100_000
            )
            log(f"scale: ready {results['phases']['scale']['ready_s']:.2f} s")
        if "durability" in phases:
            log("durability: per-transaction vs group commit")
            results["phases"]["durability"] = durability.run(
                workdir / "durability", seconds=2.0 if args.quick else 5.0
            )
        if "web" in phases:
            log("web: portal loss report -> POS refusal, logins/s with the password hash")
            results["phases"]["web"] = web.run(workdir / "web", quick=args.quick)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = (datetime.now(UTC) - started).total_seconds()
    if args.merge_into:
        base = json.loads(Path(args.merge_into).read_text())
        merged = {k: results[k] for k in ("date", "command", "quick", "elapsed_s", "machine")}
        merged["phases"] = sorted(results["phases"])
        base.setdefault("merged", []).append(merged)
        base["phases"].update(results["phases"])
        results = base
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    # the time keeps concurrent or repeated runs from overwriting each other
    name = f"{started.strftime('%Y-%m-%d-%H%M%S')}-{results['machine']['host']}{suffix}.json"
    path = RESULTS / name
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    log(f"results in {path.relative_to(ROOT)}")
    if not args.no_docs:
        DOC.write_text(render(results, str(path.relative_to(ROOT))))
        log(f"rewrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
