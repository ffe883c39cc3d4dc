"""The live page's figures, from the gateways' own /metrics (Prometheus text format, issue 11).

For the card-center supervisor, not the on-call engineer (Grafana has the full picture): taps
per minute, approvals and declines by code, p99 decision latency, the deny-list version at the
gateway and how far online terminals lag. Rates come from the difference between two samples
the console took itself. The metrics text is parsed here without prometheus_client (the web
app imports no metrics library); a malformed line is skipped.
"""

from __future__ import annotations

import math
import re
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
MAX_METRICS_BYTES = 4 * 1024 * 1024

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Sample:
    out: Sample = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m[3])
        except ValueError:
            continue
        labels = tuple(sorted(_LABEL.findall(m[2] or "")))
        out[(m[1], labels)] = out.get((m[1], labels), 0.0) + value
    return out


def _total(sample: Sample, name: str, **want: str) -> float:
    return sum(
        v
        for (n, labels), v in sample.items()
        if n == name and all((k, w) in labels for k, w in want.items())
    )


def _by(sample: Sample, name: str, key: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (n, labels), v in sample.items():
        if n == name:
            out[dict(labels).get(key, "")] += v
    return dict(out)


def p99_ms(sample: Sample) -> float | None:
    """p99 of onecard_decision_seconds over every op, from the cumulative buckets."""
    buckets: dict[float, float] = defaultdict(float)
    for (n, labels), v in sample.items():
        if n == "onecard_decision_seconds_bucket":
            le = dict(labels).get("le", "")
            bound = math.inf if le == "+Inf" else float(le)
            buckets[bound] += v
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    for bound in sorted(buckets):
        if buckets[bound] >= 0.99 * total:
            return None if bound == math.inf else bound * 1000
    return None


@dataclass
class LiveFigures:
    reachable: int
    gateways: int
    taps_per_min: float | None
    approved: float
    declines: dict[str, float] = field(default_factory=dict)
    p99_ms: float | None = None
    denylist_version: float | None = None
    terminals_online: float = 0.0
    max_lag: float = 0.0
    lagging: float = 0.0


class LiveMetrics:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self._last: tuple[float, float] | None = None  # (monotonic, decisions total)

    def figures(self) -> LiveFigures:
        """Fetch every gateway's metrics (blocking: call in a thread) and sum them."""
        merged: Sample = {}
        reachable = 0
        versions: list[float] = []
        for url in self.urls:
            text = _fetch(url)
            if text is None:
                continue
            reachable += 1
            sample = parse(text)
            version = _total(sample, "onecard_denylist_version")
            versions.append(version)
            for key, v in sample.items():
                merged[key] = merged.get(key, 0.0) + v
        total = _total(merged, "onecard_decisions_total")
        now = time.monotonic()
        rate = None
        if self._last is not None and now > self._last[0] and total >= self._last[1]:
            rate = (total - self._last[1]) * 60 / (now - self._last[0])
        self._last = (now, total)
        return LiveFigures(
            reachable=reachable,
            gateways=len(self.urls),
            taps_per_min=rate,
            approved=_total(merged, "onecard_decisions_total", result="approved"),
            declines={k: v for k, v in _by(merged, "onecard_errors_total", "code").items() if v},
            p99_ms=p99_ms(merged),
            denylist_version=max(versions) if versions else None,
            terminals_online=_total(merged, "onecard_terminals_online"),
            max_lag=max(_by(merged, "onecard_terminal_lag_versions", "kind").values(), default=0),
            lagging=_total(merged, "onecard_terminals_lagging"),
        )


def _fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:  # noqa: S310 - configured URL
            return str(resp.read(MAX_METRICS_BYTES).decode(errors="replace"))
    except OSError:
        return None
