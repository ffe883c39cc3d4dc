"""A hostile device against the conformance kit's report (issue 13 review, docs/security.md §7):
what it sends reaches the operator's terminal and the HTML page only as inert text."""

from __future__ import annotations

from pathlib import Path

from conformance.report import Report, StepFailed

#: clear the screen, retitle the window, and a hyperlink (OSC 8), as a request id could carry
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\\r\x08"


def _check_request_ids(request_id: str) -> None:
    """What the terminal suite's T20 does with a reused id (the device's text in the detail)."""
    raise StepFailed(f"request_id {request_id} reused for other content")


def test_device_text_cannot_drive_the_operators_terminal(tmp_path: Path) -> None:
    report = Report("terminal", "pos-001")
    with report.step("T20", "request ids unique", "§4"):
        _check_request_ids(HOSTILE + "x" * 5000)
    lines = report.text_lines()
    assert all(ch >= " " or ch == "\n" for line in lines for ch in line), lines
    assert "\\x1b[2J" in lines[0]  # shown, escaped
    assert len(lines[0]) < 1200  # a device cannot fill the console
    report.write_html(tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "\x1b" not in page and "<script" not in page
