"""Results of a conformance run: one line per step (Passed / Failed / Not applicable) with its
evidence (topic, payload, time), written as JSON and as a self-contained HTML page.

Everything in a report came from a device under test, so it is untrusted: the HTML escapes every
byte of it, payloads are cut to :data:`MAX_EVIDENCE_CHARS`, and secrets (passwords, session
tokens) are replaced before they are stored.
"""

from __future__ import annotations

import html
import json
import re
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from protocol.wire import CONTRACT_VERSION

__all__ = [
    "MAX_EVIDENCE_CHARS",
    "Evidence",
    "Report",
    "Status",
    "Step",
    "StepFailed",
    "redact",
]

#: A payload longer than this is cut in the report (a 1 MB snapshot stays readable).
MAX_EVIDENCE_CHARS = 600
#: At most this many evidence lines per step.
MAX_EVIDENCE = 80
_SECRET = re.compile(r'("(?:password|old_password|new_password|session)"\s*:\s*)"[^"]*"')


def redact(text: str) -> str:
    """Passwords and session tokens out of a payload before it goes into a report."""
    return _SECRET.sub(r'\1"***"', text)


class Status(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"


class StepFailed(Exception):
    """A check of the current step failed; the message says what was expected and seen."""


@dataclass(slots=True)
class Evidence:
    """One message seen or sent during a step."""

    at_ms: float  # since the start of the run
    direction: str  # "sent" | "received" | "note"
    topic: str
    payload: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at_ms": round(self.at_ms, 1),
            "direction": self.direction,
            "topic": self.topic,
            "payload": self.payload,
        }


@dataclass(slots=True)
class Step:
    id: str
    title: str
    section: str  # where the contract says it, e.g. "§6"
    status: Status = Status.PASSED
    detail: str = ""
    started_ms: float = 0.0
    duration_ms: float = 0.0
    evidence: list[Evidence] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "section": self.section,
            "status": self.status.value,
            "detail": self.detail,
            "started_ms": round(self.started_ms, 1),
            "duration_ms": round(self.duration_ms, 1),
            "evidence": [e.as_dict() for e in self.evidence],
        }


class Report:
    """Collects the steps of one run; :meth:`step` is the context every check runs in."""

    def __init__(self, mode: str, target: str) -> None:
        self.mode = mode
        self.target = target
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self.steps: list[Step] = []
        self.current: Step | None = None

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000

    def trace(self, direction: str, topic: str, payload: bytes | str) -> None:
        """Record a message as evidence of the step running now (if any)."""
        step = self.current
        if step is None or len(step.evidence) >= MAX_EVIDENCE:
            return
        text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        text = redact(text)
        if len(text) > MAX_EVIDENCE_CHARS:
            text = text[:MAX_EVIDENCE_CHARS] + f"… ({len(text)} chars)"
        step.evidence.append(Evidence(self.elapsed_ms(), direction, topic, text))

    def note(self, text: str) -> None:
        self.trace("note", "", text)

    @contextmanager
    def step(self, step_id: str, title: str, section: str) -> Iterator[Step]:
        """Run one step: a :class:`StepFailed` (or a timeout) inside fails it, anything else
        that escapes is a failure of the device too (reported, never a traceback)."""
        step = Step(step_id, title, section, started_ms=self.elapsed_ms())
        self.steps.append(step)
        self.current = step
        try:
            yield step
        except StepFailed as exc:
            step.status, step.detail = Status.FAILED, inert(str(exc))
        except TimeoutError:
            step.status = Status.FAILED
            step.detail = step.detail or "timed out waiting for the device"
        except Exception as exc:  # noqa: BLE001 - whatever the device sent, a line, no traceback
            step.status = Status.FAILED
            step.detail = inert(f"{type(exc).__name__}: {exc}")
        finally:
            step.duration_ms = self.elapsed_ms() - step.started_ms
            self.current = None

    def not_applicable(self, step_id: str, title: str, section: str, why: str) -> None:
        self.steps.append(
            Step(step_id, title, section, Status.NOT_APPLICABLE, why, self.elapsed_ms())
        )

    # --- results ------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for step in self.steps:
            out[step.status.value] += 1
        return out

    @property
    def passed(self) -> bool:
        return all(s.status is not Status.FAILED for s in self.steps)

    def failed_ids(self) -> list[str]:
        return [s.id for s in self.steps if s.status is Status.FAILED]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kit": "onecard conformance",
            "contract": CONTRACT_VERSION,
            "mode": self.mode,
            "target": self.target,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "result": "passed" if self.passed else "failed",
            "summary": self.counts(),
            "steps": [s.as_dict() for s in self.steps],
        }

    def write_json(self, path: Path) -> None:
        path.write_text(
            json.dumps(self.as_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )

    def write_html(self, path: Path) -> None:
        path.write_text(render_html(self.as_dict()), encoding="utf-8")

    def text_lines(self) -> list[str]:
        """One line per step for the console."""
        marks = {
            Status.PASSED: "PASS",
            Status.FAILED: "FAIL",
            Status.NOT_APPLICABLE: "N/A ",
        }
        lines = []
        for s in self.steps:
            tail = f" — {s.detail}" if s.detail else ""
            lines.append(f"{marks[s.status]} {s.id:<5} {s.section:<6} {s.title}{tail}")
        c = self.counts()
        lines.append(
            f"合格 passed {c['passed']}, 不合格 failed {c['failed']}, "
            f"不适用 not applicable {c['not_applicable']}  (contract {CONTRACT_VERSION})"
        )
        return lines


MAX_DETAIL_CHARS = 500


def inert(text: str) -> str:
    """A failure's detail as one inert line: a device's bytes in it (a request id, an op) must
    not drive the operator's terminal (escape sequences, bidi overrides), nor fill it."""
    out = "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
        else ch
        for ch in text[: MAX_DETAIL_CHARS * 2]
    )
    return (
        out if len(out) <= MAX_DETAIL_CHARS else out[:MAX_DETAIL_CHARS] + f"… ({len(text)} chars)"
    )


_LABELS = {
    "passed": "通过 Passed",
    "failed": "未通过 Failed",
    "not_applicable": "不适用 Not applicable",
}
_CSS = """
body{font-family:"Noto Sans CJK SC",system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.3rem .5rem;
vertical-align:top;text-align:left}.passed{background:#e8f6e8}.failed{background:#fde2e2}
.not_applicable{background:#f2f2f2}pre{white-space:pre-wrap;word-break:break-all;margin:0;
font-size:.8rem}summary{cursor:pointer}
"""


def render_html(result: dict[str, Any]) -> str:
    """The report as one HTML page without scripts; every value is escaped."""
    e = html.escape
    rows = []
    for s in result["steps"]:
        evidence = "".join(
            f"<tr><td>{ev['at_ms']:.0f} ms</td><td>{e(ev['direction'])}</td>"
            f"<td>{e(ev['topic'])}</td><td><pre>{e(ev['payload'])}</pre></td></tr>"
            for ev in s["evidence"]
        )
        details = (
            f"<details><summary>{len(s['evidence'])} 条证据 evidence</summary>"
            f"<table>{evidence}</table></details>"
            if evidence
            else ""
        )
        rows.append(
            f'<tr class="{e(s["status"])}"><td>{e(s["id"])}</td><td>{e(s["section"])}</td>'
            f"<td>{e(s['title'])}</td><td>{e(_LABELS[s['status']])}</td>"
            f"<td>{s['duration_ms']:.0f} ms</td><td>{e(s['detail'])}{details}</td></tr>"
        )
    c = result["summary"]
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        f"<title>一卡通终端合规测试报告 onecard conformance report</title><style>{_CSS}</style>"
        "</head><body>"
        f"<h1>一卡通终端合规测试报告 / onecard conformance report ({e(result['mode'])})</h1>"
        f"<p>接口规范 contract {e(result['contract'])} · 被测对象 target {e(result['target'])} · "
        f"{e(result['started_at'])} · 结果 result <b>{e(result['result'])}</b> · "
        f"通过 passed {c['passed']}, 未通过 failed {c['failed']}, "
        f"不适用 not applicable {c['not_applicable']}</p>"
        "<table><tr><th>步骤 step</th><th>条款 section</th><th>检查 check</th>"
        "<th>结果 result</th><th>用时 time</th><th>说明与证据 detail and evidence</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )
