"""Logging set-up with a masking filter: national IDs and card numbers never reach a log line
in full, whatever a message or an exception text carries (PIPL; FIELD-NOTES)."""

from __future__ import annotations

import logging
import re

from protocol.cards.identity import mask_id_doc

_NATIONAL_ID = re.compile(r"(?<![0-9A-Za-z])(\d{4})\d{10}(\d{3}[\dXx])(?![0-9A-Za-z])")
_CARD_NUMBER = re.compile(r"(?<![0-9A-Za-z])([0-9A-F]{4,}?)([0-9A-F]{4})(?![0-9A-Za-z])")
#: Other identity documents (ISS-8/11, protocol.cards.identity): HK/Macau permits (H/M + 8 or 10
#: digits), 2004/2017 permanent residence cards (3 letters + 12 digits), PRC passports (E + 8
#: digits, or E + a letter + 7). (2023 permanent residence cards have the national-ID shape.)
#: Foreign passports and Taiwan permits (8 digits) have no shape a log line could tell from
#: other numbers: nothing logs them.
_OTHER_ID_DOC = re.compile(
    r"(?<![0-9A-Za-z])([HM]\d{8}(?:\d{2})?|[A-Z]{3}\d{12}|E[A-Z0-9]\d{7})(?![0-9A-Za-z])"
)


def mask_id_docs(text: str) -> str:
    """Mask 18-char national IDs (keep 4+4) and the other ID documents a text can be recognised
    by (:func:`~protocol.cards.identity.mask_id_doc`); card numbers stay (the CLI's echo)."""
    text = _NATIONAL_ID.sub(lambda m: f"{m.group(1)}{'*' * 10}{m.group(2)}", text)
    return _OTHER_ID_DOC.sub(lambda m: mask_id_doc(m.group(1)), text)


def mask_text(text: str) -> str:
    """Mask ID documents (:func:`mask_id_docs`) and card serials/UIDs of 10+ digits (keep
    last 4)."""
    text = mask_id_docs(text)
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
