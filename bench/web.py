"""The cardholder portal's benchmark (issue 9): web loss report -> POS refusal, and logins/s.

Processes as operators run them: a private Mosquitto, ``onecard serve`` and ``onecard web`` on
one SQLite registry (seeded through the services). The load is plain HTTP (httpx, the form flow a
browser sends: GET the page for its CSRF token, POST the form) and a POS on MQTT v5 (paho, the
test suite's probe).

- **Loss report**: for each holder, a POS sells 1 fen every ~10 ms from before the report; the
  holder's loss form is posted; we record the web reply's latency, when the first ``card_lost``
  refusal came relative to the reply, and how many sales were approved after the reply (the
  reply says "refused everywhere": it must be 0). The web process logs its registry commit and
  how long the gateway took to serve the new deny-list version (poll interval 50 ms).
- **Logins/s** with the password hash (scrypt N=2^14, r=8: every holder has changed the default
  password): N client threads, each a fresh session per login (GET /login, POST /login).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from gateway.config import load_settings
from gateway.services.base import Actor, Context, SystemClock
from gateway.services.passwords import hash_password, verify_password
from gateway.services.portal import PortalService
from storage.sql import SqlRegistry
from tests.broker import PrivateBroker, Probe, free_port
from tests.web.site import TERMINALS, Person, seed

PASSWORD = "bench-portal-2026"
ONECARD = str(Path(sys.executable).parent / "onecard")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": _pct(values, 0.5),
        "p90": _pct(values, 0.9),
        "p99": _pct(values, 0.99),
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }


async def _set_passwords(db: Path, people: list[Person]) -> None:
    registry = await SqlRegistry.open(db)
    try:
        portal = PortalService(Context(registry=registry, clock=SystemClock()))
        for p in people:
            actor = Actor(name=f"holder:{p.holder_id}", channel="web", holder_id=p.holder_id)
            await portal.change_password(actor, p.password, PASSWORD, PASSWORD)
    finally:
        await registry.close()


def _scrypt_ms(rounds: int = 10) -> float:
    stored = hash_password(PASSWORD)
    started = time.perf_counter()
    for _ in range(rounds):
        verify_password(PASSWORD, stored)
    return 1000 * (time.perf_counter() - started) / rounds


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def _login(client: httpx.Client, number: str) -> float:
    client.cookies.clear()
    page = client.get("/login")
    started = time.perf_counter()
    resp = client.post(
        "/login", data={"csrf": _csrf(page.text), "number": number, "password": PASSWORD}
    )
    took = time.perf_counter() - started
    if resp.status_code != 303:
        raise RuntimeError(f"login failed: {resp.status_code}")
    return took


class _Seller(threading.Thread):
    """A POS selling 1 fen every ~10 ms to one card until refused."""

    def __init__(self, pos: Probe, uid: str) -> None:
        super().__init__(name="bench-pos", daemon=True)
        self.pos, self.uid = pos, uid
        self.sales: list[tuple[float, bool, str, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rid = f"bw-{uuid.uuid4().hex[:12]}"
            body = {
                "v": 1,
                "request_id": rid,
                "sent_ms": int(time.time() * 1000),
                "data": {"card": self.uid, "amount_fen": 1},
            }
            sent = time.monotonic()
            self.pos.publish("onecard/v1/t/pos-001/req/purchase", json.dumps(body).encode())
            while True:
                reply = json.loads(self.pos.next_message(timeout=5).payload)
                if reply.get("request_id") == rid:
                    break
            ok = bool(reply["ok"])
            self.sales.append((sent, ok, "" if ok else reply["error"]["code"], time.monotonic()))
            if not ok:
                return
            self.stop.wait(0.01)


def _loss_round(base: str, pos: Probe, who: Person) -> dict[str, Any]:
    with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as client:
        _login(client, who.number)
        page = client.get(f"/cards/{who.card_id}/loss")
        token = re.search(r'name="form_token" value="([^"]+)"', page.text)
        assert token, page.text[:500]
        seller = _Seller(pos, who.uid)
        seller.start()
        time.sleep(0.1)
        sent = time.monotonic()
        resp = client.post(
            f"/cards/{who.card_id}/loss",
            data={"csrf": _csrf(page.text), "form_token": token.group(1)},
        )
        replied = time.monotonic()
        assert resp.status_code == 303, resp.text[:300]
        seller.join(timeout=10)
        seller.stop.set()
    refused = [s for s in seller.sales if not s[1]]
    first = refused[0] if refused else None
    return {
        "reply_ms": 1000 * (replied - sent),
        "refusal_vs_reply_ms": 1000 * (first[3] - replied) if first else None,
        "refusal_code": first[2] if first else None,
        "approved_after_reply": sum(1 for s in seller.sales if s[1] and s[0] >= replied),
        "sales": len(seller.sales),
    }


def _logins(base: str, numbers: list[str], threads: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work(i: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as client:
            n = i
            while time.monotonic() < deadline:
                try:
                    took = _login(client, numbers[n % len(numbers)])
                except (RuntimeError, httpx.HTTPError):
                    with lock:
                        errors += 1
                    continue
                with lock:
                    latencies.append(1000 * took)
                n += threads

    started = time.monotonic()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - started
    return {
        "threads": threads,
        "logins": len(latencies),
        "per_s": len(latencies) / elapsed,
        "errors": errors,
        "latency_ms": _summary(latencies),
    }


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def run(workdir: Path, *, quick: bool) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    rounds = 5 if quick else 20
    login_seconds = 3.0 if quick else 8.0
    holders = rounds + 20
    db = workdir / "web.sqlite3"
    people = asyncio.run(seed(db, students=holders))
    asyncio.run(_set_passwords(db, people))
    users = {tid: f"pw-{tid}" for tid in TERMINALS}
    users["gateway"] = "pw-gateway"
    http_port, web_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[BinaryIO] = []
    with PrivateBroker(workdir / "broker", users=users) as broker:
        config = workdir / "onecard.toml"
        config.write_text(
            f'db = "{db}"\nlog_level = "INFO"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            'username = "gateway"\npassword = "pw-gateway"\n'
            f"[http]\nport = {http_port}\n[denylist]\npoll_interval_ms = 50\n"
            f'[web]\nhost = "127.0.0.1"\nport = {web_port}\ncookie_secure = false\n'
            "max_failures_per_address = 10000\n"
            f'gateway_metrics_urls = ["http://127.0.0.1:{http_port}/metrics"]\n'
        )
        settings = load_settings(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONECARD_")}
        try:
            for name, url in (
                ("serve", f"http://127.0.0.1:{http_port}/readyz"),
                ("web", f"http://127.0.0.1:{web_port}/healthz"),
            ):
                logs.append((workdir / f"{name}.log").open("wb"))
                procs.append(
                    subprocess.Popen(  # noqa: S603 - our own command
                        [ONECARD, name, "--config", str(config)],
                        env=env,
                        stdout=logs[-1],
                        stderr=subprocess.STDOUT,
                    )
                )
                _wait(url, procs[-1])
            base = f"http://127.0.0.1:{web_port}"
            with Probe(broker, "pos-001", "pw-pos-001") as pos:
                pos.connect()
                pos.subscribe("onecard/v1/t/pos-001/resp/#")
                losses = [_loss_round(base, pos, p) for p in people[:rounds]]
            numbers = [p.number for p in people[rounds:]]
            logins = [_logins(base, numbers, n, login_seconds) for n in (1, 4, 16)]
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=20)
            for fh in logs:
                fh.close()
    web_log = (workdir / "web.log").read_text()
    hash_ms = _scrypt_ms()
    found = re.findall(r"commit_ms=(\S+) gateway_ms=(\S+) confirmed=(\w+)", web_log)
    return {
        "rounds": rounds,
        "poll_interval_ms": settings.denylist.poll_interval_ms,
        "loss": {
            "reply_ms": _summary([r["reply_ms"] for r in losses]),
            "refusal_vs_reply_ms": _summary(
                [r["refusal_vs_reply_ms"] for r in losses if r["refusal_vs_reply_ms"] is not None]
            ),
            "commit_ms": _summary([float(c) for c, _, _ in found]),
            "gateway_ms": _summary([float(g) for _, g, _ in found]),
            "confirmed": sum(1 for *_, ok in found if ok == "True"),
            "approved_after_reply": sum(r["approved_after_reply"] for r in losses),
            "all_card_lost": all(r["refusal_code"] == "card_lost" for r in losses),
        },
        "logins": logins,
        #: baseline: one scrypt verification on this machine now, and the ceiling it sets
        "scrypt_ms": hash_ms,
        "scrypt_ceiling_per_s": (os.cpu_count() or 1) * 1000 / hash_ms,
    }


if __name__ == "__main__":
    import tempfile

    result = run(Path(tempfile.mkdtemp(prefix="onecard-bench-web-")), quick=True)
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
