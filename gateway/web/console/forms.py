"""What every console page reads from a form: trimmed text, a card serial, a bad request. (The
``{name:rowid}`` URL convertor of both apps is in gateway.web.plumbing.)"""

from __future__ import annotations

import re

from starlette.datastructures import FormData

from protocol.errors import InvalidInput

_SERIAL = re.compile(r"[0-9A-Za-z-]{1,32}")


class BadRequest(InvalidInput):
    pass


def form_text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def serial_text(text: str) -> str:
    if not _SERIAL.fullmatch(text):
        raise BadRequest(f"卡号格式有误：{text[:40]}", f"bad card number: {text[:40]}")
    return text


def optional_int(form: FormData, name: str, zh: str, en: str) -> int | None:
    """A receipt number or the like: empty is None, anything else must be a small integer."""
    text = form_text(form, name)
    if not text:
        return None
    if not text.isdigit() or len(text) > 12:
        raise BadRequest(f"{zh}应为数字", f"{en} must be a number")
    return int(text)
