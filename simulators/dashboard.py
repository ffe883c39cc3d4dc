"""The demo's live terminal dashboard: the fleet's own view (taps/s, latency, declines, offline
backlog, deny-list versions held) beside the gateway's published metrics (deny-list version, lag
per terminal kind), and the latest loss reports with what a POS said right after.

Reads the gateway only through its public ``/metrics`` endpoint, like an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from simulators.fleet import LiveStats
from simulators.terminals import Pos

REFRESH_S = 0.5


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for the ``onecard_*`` samples of a Prometheus text page."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("onecard_"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def _fetch(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback ops endpoint
            return parse_metrics(resp.read().decode())
    except OSError:
        return {}


def _by_label(metrics: dict[str, float], name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.startswith(name + "{"):
            label = key[len(name) + 1 : -1].split('"')[1] if '"' in key else key
            out[label] = value
    return out


def render(stats: LiveStats, metrics: dict[str, float], started: float) -> Group:
    snap = stats.snapshot()
    head = Table.grid(padding=(0, 3))
    lat = snap["latency_ms"]
    online = sum(1 for up in snap["online"].values() if up)
    head.add_row(
        f"运行 elapsed [b]{time.monotonic() - started:6.1f} s[/b]",
        f"刷卡 taps [b]{snap['taps']}[/b]",
        f"速率 taps/s [b]{snap['taps_per_s']}[/b]",
        f"延迟 latency p50 [b]{lat['p50']}[/b] p90 [b]{lat['p90']}[/b] p99 [b]{lat['p99']}[/b] ms",
        f"在线终端 online [b]{online}/{len(snap['online'])}[/b]",
    )
    declines = Table(title="拒绝 declines by code", expand=True)
    declines.add_column("code")
    declines.add_column("count", justify="right")
    for code, n in sorted(snap["declines_by_code"].items(), key=lambda kv: -kv[1]):
        declines.add_row(code, str(n))

    deny = Table(title="黑名单 deny list", expand=True)
    deny.add_column("")
    deny.add_column("value", justify="right")
    gw_version = int(metrics.get("onecard_denylist_version", 0))
    versions = list(snap["denylist_version"].values())
    deny.add_row("网关版本 gateway version", str(gw_version))
    deny.add_row("名单大小 entries", str(int(metrics.get("onecard_denylist_size", 0))))
    if versions:
        deny.add_row(
            "终端已同步 terminals current",
            f"{sum(v >= gw_version for v in versions)}/{len(versions)}",
        )
        deny.add_row("最大落后 max lag (versions)", str(max(0, gw_version - min(versions))))
    for kind, lag in sorted(_by_label(metrics, "onecard_terminal_lag_versions").items()):
        deny.add_row(f"lag {kind} (gateway view)", str(int(lag)))

    backlog = sum(snap["offline_backlog"].values())
    offline = Table(title="脱机 offline", expand=True)
    offline.add_column("")
    offline.add_column("value", justify="right")
    offline.add_row("待上传 backlog (sales)", str(backlog))
    offline.add_row("脱机交易 offline approvals", str(snap["modes"].get("offline", 0)))
    terminals = stats.terminals.values()
    offline.add_row("POS online", str(sum(1 for t in terminals if isinstance(t, Pos) and t.online)))

    losses = Table(title="挂失 loss reports at kiosks → next tap at a POS", expand=True)
    for col in ("card", "version", "applied by", "POS", "POS said", "ms after reply"):
        losses.add_column(col)
    for event in list(stats.loss_events)[-5:]:
        losses.add_row(
            event.card,
            str(event.denylist_version),
            str(event.terminals_applied if event.terminals_applied is not None else "—"),
            event.probe_terminal or "—",
            event.probe_code or "—",
            f"{event.probe_ms_after_reply:.1f}" if event.probe_ms_after_reply is not None else "—",
        )
    grid = Table.grid(expand=True)
    grid.add_row(declines, deny, offline)
    return Group(
        Panel(head, title="onecard 校园一卡通 — live fleet (Ctrl-C 停止 / stop)"), grid, losses
    )


async def run_dashboard(stats: LiveStats, metrics_url: str | None, stop: asyncio.Event) -> None:
    started = time.monotonic()
    metrics: dict[str, float] = {}
    with Live(render(stats, metrics, started), refresh_per_second=4, transient=False) as live:
        while not stop.is_set():
            if metrics_url:
                metrics = await asyncio.to_thread(_fetch, metrics_url)
            live.update(render(stats, metrics, started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=REFRESH_S)
