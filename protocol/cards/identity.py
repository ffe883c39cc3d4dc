"""Holder identity: national ID validation, derived numbers and masking for logs and receipts.

Pure functions (no I/O, no clock reads). Used by roster imports (ISS-1, ISS-6, MEAL-2), the counter
(ISS-11 temporary holders) and self-service login (LOSS-1).

National IDs follow GB 11643-1999 (公民身份号码): 18 characters =

* positions 1-6: administrative region code (行政区划代码),
* positions 7-14: date of birth ``YYYYMMDD``,
* positions 15-17: sequence number (odd for men, even for women),
* position 18: check character, ISO 7064 MOD 11-2 over the first 17 digits; ``10`` is written ``X``.

The 15-digit first-generation IDs are **rejected**, not converted: they stopped being valid on
2013-01-01, every living holder has had an 18-digit number since, and a conversion would have to
guess the century and compute a check character for a number nobody can show at the counter (LOSS-3,
ISS-7 identity checks compare against the card the holder presents). Ask for the current ID instead.

Masking (PIPL; see FIELD-NOTES "Data the counter receives"): logs, receipts and metrics never
carry a full national ID, full name or full card number; use :func:`mask_national_id`,
:func:`mask_name` and :func:`mask_card`.
"""

from __future__ import annotations

import unicodedata
from datetime import date

from protocol.errors import InvalidInput

__all__ = [
    "NATIONAL_ID_LENGTH",
    "default_password",
    "make_national_id",
    "mask_card",
    "mask_name",
    "mask_national_id",
    "national_id_birth_date",
    "national_id_check_char",
    "validate_national_id",
    "work_number",
]

NATIONAL_ID_LENGTH = 18
LEGACY_NATIONAL_ID_LENGTH = 15
EARLIEST_BIRTH_YEAR = 1900

_DIGITS = frozenset("0123456789")
# ISO 7064 MOD 11-2 weights: 2**(17 - i) mod 11 for positions i = 0..16 (left to right).
_WEIGHTS: tuple[int, ...] = tuple(pow(2, 17 - i, 11) for i in range(17))
# (12 - sum mod 11) mod 11, with 10 written as "X".
_CHECK_CHARS = "10X98765432"  # indexed by (weighted sum mod 11)


def _fail(zh: str, en: str) -> InvalidInput:
    return InvalidInput(zh, en)


def national_id_check_char(first17: str) -> str:
    """The GB 11643 check character for the first 17 digits (``"0"``-``"9"`` or ``"X"``).

    >>> national_id_check_char("11010519491231002")
    'X'
    """
    if len(first17) != NATIONAL_ID_LENGTH - 1 or not set(first17) <= _DIGITS:
        raise _fail(
            "身份证号前17位须为数字", "the first 17 characters of a national ID must be digits"
        )
    total = sum(int(ch) * w for ch, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def _normalise(s: str) -> str:
    # NFKC folds full-width digits and letters (１２３Ｘ) typed with a Chinese IME into ASCII.
    return unicodedata.normalize("NFKC", s).strip().upper()


def validate_national_id(s: str, *, today: date | None = None) -> str:
    """Return the normalised 18-character national ID or raise :class:`InvalidInput`.

    Surrounding whitespace is stripped, full-width characters are folded, a lowercase ``x`` check
    character becomes ``X``. Checked: length (15-digit legacy IDs are refused, see the module
    docstring), digits, a real birth date not before 1900 (and not after ``today`` when the caller
    passes it: this module never reads the clock), a region code that is not ``000000``, and the
    check character. Messages are bilingual and say what is wrong.
    """
    value = _normalise(s)
    if not value:
        raise _fail("身份证号为空", "national ID is empty")
    if len(value) == LEGACY_NATIONAL_ID_LENGTH and set(value) <= _DIGITS:
        raise _fail(
            "不受理15位旧身份证号，请提供18位身份证号",
            "15-digit legacy national IDs are not accepted; give the 18-digit ID",
        )
    if len(value) != NATIONAL_ID_LENGTH:
        raise _fail(
            f"身份证号应为18位，实为{len(value)}位",
            f"national ID must have 18 characters, got {len(value)}",
        )
    first17, check = value[:17], value[17]
    if not set(first17) <= _DIGITS:
        raise _fail(
            "身份证号前17位须为数字", "the first 17 characters of a national ID must be digits"
        )
    if check not in _DIGITS and check != "X":
        raise _fail(
            "身份证号末位须为数字或X", "the last character of a national ID must be 0-9 or X"
        )
    if first17[:6] == "000000":
        raise _fail("身份证号地区码无效", "national ID region code is invalid")
    birth = _birth_date(first17)
    if today is not None and birth > today:
        raise _fail("身份证号出生日期晚于今天", "national ID birth date is in the future")
    if national_id_check_char(first17) != check:
        raise _fail("身份证号校验位错误", "national ID check digit wrong")
    return value


def _birth_date(first17: str) -> date:
    year, month, day = int(first17[6:10]), int(first17[10:12]), int(first17[12:14])
    try:
        birth = date(year, month, day)
    except ValueError:
        raise _fail("身份证号出生日期无效", "national ID birth date is not a real date") from None
    if year < EARLIEST_BIRTH_YEAR:
        raise _fail("身份证号出生年份早于1900年", "national ID birth year is before 1900")
    return birth


def national_id_birth_date(national_id: str) -> date:
    """Birth date of a valid national ID (validates first)."""
    return _birth_date(validate_national_id(national_id))


def make_national_id(region: str, birth: date, seq: int) -> str:
    """Build a valid 18-character ID from parts; for synthetic data and tests.

    ``region`` is the 6-digit region code, ``seq`` the 3-digit sequence (0-999; odd = male).
    """
    if len(region) != 6 or not set(region) <= _DIGITS or region == "000000":
        raise _fail("地区码须为6位数字", "region code must be 6 digits, not all zero")
    if not 0 <= seq <= 999:
        raise _fail("顺序码须在0-999之间", "sequence number must be 0-999")
    if birth.year < EARLIEST_BIRTH_YEAR:
        raise _fail("出生年份不能早于1900年", "birth year must not be before 1900")
    first17 = f"{region}{birth:%Y%m%d}{seq:03d}"
    return first17 + national_id_check_char(first17)


def default_password(national_id: str) -> str:
    """LOSS-1: the default self-service password is the last 6 characters of the national ID.

    The last character may be ``X`` (always upper case after validation).
    """
    return validate_national_id(national_id)[-6:]


def work_number(national_id: str) -> str:
    """ISS-11: a temporary holder's work number is the last 6 characters of the national ID."""
    return validate_national_id(national_id)[-6:]


def mask_national_id(s: str) -> str:
    """``"5115**********123X"``: keep the first 4 and the last 4 characters.

    Never raises (it is used on the way to logs); anything too short to keep 8 characters and still
    hide some is fully masked.
    """
    value = s.strip()
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def _is_cjk(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY"))


def mask_name(name: str) -> str:
    """Mask a person's name: ``张三 -> 张*``, ``欧阳娜娜 -> 欧***``, ``Alice Smith -> A*``.

    Chinese names keep the first character and hide each of the others (the usual receipt style);
    other names keep only the first letter followed by a single ``*`` so the length is not shown.
    A one-character name is fully masked.
    """
    value = name.strip()
    if len(value) <= 1:
        return "*" * len(value)
    if any(_is_cjk(ch) for ch in value):
        return value[0] + "*" * (len(value) - 1)
    return value[0] + "*"


def mask_card(serial: str) -> str:
    """Mask a card number keeping the last 4 characters: ``"****5678"``."""
    value = serial.strip()
    if len(value) <= 4:
        return "*" * len(value)
    return "*" * (len(value) - 4) + value[-4:]
