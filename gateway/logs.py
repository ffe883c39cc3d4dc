"""Logging set-up with a masking filter: national IDs and card numbers never reach a log line
in full, whatever a message or an exception text carries (PIPL; FIELD-NOTES)."""

from __future__ import annotations

import logging
import re

_NATIONAL_ID = re.compile(r"(?<![0-9A-Za-z])(\d{4})\d{10}(\d{3}[\dXx])(?![0-9A-Za-z])")
_CARD_NUMBER = re.compile(r"(?<![0-9A-Za-z])([0-9A-F]{4,}?)([0-9A-F]{4})(?![0-9A-Za-z])")


def mask_text(text: str) -> str:
    """Mask 18-char national IDs (keep 4+4) and card serials/UIDs of 10+ digits (keep last 4)."""
    text = _NATIONAL_ID.sub(lambda m: f"{m.group(1)}{'*' * 10}{m.group(2)}", text)
    return _CARD_NUMBER.sub(
        lambda m: ("*" * len(m.group(1)) + m.group(2)) if len(m.group(0)) >= 10 else m.group(0),
        text,
    )


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = mask_text(message)
        record.args = None
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger("onecard")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
