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

Other identity documents (ISS-8/ISS-11: foreign teachers, exchange students and visitors from Hong
Kong, Macau or Taiwan do not hold a GB 11643 ID). A holder's document is a type
(:class:`IdDocType`) and a number; :func:`validate_id_doc` checks each type by its own format,
strict where a typo can be caught, permissive where real documents vary:

* ``resident_id`` 居民身份证 — GB 11643-1999 as above (also the 港澳台居民居住证, which uses the
  same 18-character format with region codes 81/82/83).
* ``passport`` 护照 — ICAO Doc 9303 (Part 4, the TD3 machine-readable zone) gives the document
  number up to 9 characters A-Z/0-9 and lets longer numbers overflow; issuing states vary
  (China: ``E`` + 8 digits; Canada: 2 letters + 6 digits). Accepted: 6 to 18 letters/digits with
  at least one digit; spaces, hyphens and the MRZ filler ``<`` are dropped.
* ``hk_macau_permit`` 港澳居民来往内地通行证 — ``H`` (Hong Kong) or ``M`` (Macau) + the 8-digit
  lifetime number (公安部出入境管理局, 2010-03-10, 通行证号码规则; the card issued since 2013 prints
  these 9 characters). The older 11-character form adds 2 digits counting renewals; it is
  accepted and stored as its first 9 characters, which "stay the same across renewals".
* ``taiwan_permit`` 台湾居民来往大陆通行证 — the 8-digit lifetime number (一人一号、终身不变, since
  2008-09-25; the 2015 card prints only these). The older form adds 2 digits (times issued) and
  an issuing-office code in brackets, e.g. ``1234567801(B)``; accepted, stored as the 8 digits.
* ``permanent_residence`` 外国人永久居留身份证 — the 2023 card (国家移民管理局, 新版外国人永久居留
  身份证机读信息规则, issued from 2023-12-01): 18 characters, first ``9`` (foreigner), then
  17 digits in GB 11643's layout with the birth date at positions 7-14 and the same ISO 7064
  MOD 11-2 check character, all checked. The 2004/2017 cards (still valid until they expire):
  15 characters, 3 Latin letters (nationality) + 12 digits.

Derived numbers for every document (ISS-11 work number, LOSS-1 default password): the last 6
characters of the normalised document number, which is upper-case letters and digits only. For a
resident ID that is exactly "身份证后6位" (a trailing ``X`` included); for a passport
``E12345678`` it is ``345678``; for a Taiwan permit ``12345678`` it is ``345678``.

Masking (PIPL; see FIELD-NOTES "Data the counter receives"): logs, receipts and metrics never
carry a full national ID or other identity document, full name or full card number; use
:func:`mask_national_id` / :func:`mask_id_doc`, :func:`mask_name` and :func:`mask_card`.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date
from enum import StrEnum

from protocol.errors import InvalidInput

__all__ = [
    "ID_DOC_NAMES_ZH",
    "NATIONAL_ID_LENGTH",
    "IdDocType",
    "default_password",
    "make_national_id",
    "make_permanent_residence_no",
    "mask_card",
    "mask_id_doc",
    "mask_name",
    "mask_national_id",
    "national_id_birth_date",
    "national_id_check_char",
    "parse_id_doc_type",
    "validate_id_doc",
    "validate_national_id",
    "work_number",
]


class IdDocType(StrEnum):
    """The identity document a holder registered with (ISS-8, ISS-11)."""

    RESIDENT_ID = "resident_id"  # 居民身份证 (GB 11643)
    PASSPORT = "passport"  # 护照
    HK_MACAU_PERMIT = "hk_macau_permit"  # 港澳居民来往内地通行证
    TAIWAN_PERMIT = "taiwan_permit"  # 台湾居民来往大陆通行证
    PERMANENT_RESIDENCE = "permanent_residence"  # 外国人永久居留身份证


ID_DOC_NAMES_ZH: dict[IdDocType, str] = {
    IdDocType.RESIDENT_ID: "居民身份证",
    IdDocType.PASSPORT: "护照",
    IdDocType.HK_MACAU_PERMIT: "港澳居民来往内地通行证",
    IdDocType.TAIWAN_PERMIT: "台湾居民来往大陆通行证",
    IdDocType.PERMANENT_RESIDENCE: "外国人永久居留身份证",
}

#: What a clerk or a roster may write for each type (compared upper-cased, spaces removed).
_ID_DOC_ALIASES: dict[str, IdDocType] = {
    **{t.value.upper(): t for t in IdDocType},
    **{name: t for t, name in ID_DOC_NAMES_ZH.items()},
    "身份证": IdDocType.RESIDENT_ID,
    "居民身份证号": IdDocType.RESIDENT_ID,
    "ID": IdDocType.RESIDENT_ID,
    "NATIONALID": IdDocType.RESIDENT_ID,
    "RESIDENTID": IdDocType.RESIDENT_ID,
    "PASSPORT": IdDocType.PASSPORT,
    "港澳通行证": IdDocType.HK_MACAU_PERMIT,
    "回乡证": IdDocType.HK_MACAU_PERMIT,
    "港澳居民来往内地通行证": IdDocType.HK_MACAU_PERMIT,
    "台胞证": IdDocType.TAIWAN_PERMIT,
    "台湾居民来往大陆通行证": IdDocType.TAIWAN_PERMIT,
    "永居证": IdDocType.PERMANENT_RESIDENCE,
    "外国人永久居留证": IdDocType.PERMANENT_RESIDENCE,
    "外国人永久居留身份证": IdDocType.PERMANENT_RESIDENCE,
}

WORK_NUMBER_LENGTH = 6
PASSPORT_MIN, PASSPORT_MAX = 6, 18
_PASSPORT_DROP = re.compile(r"[\s\-<]+")
_HK_MACAU = re.compile(r"([HM]\d{8})(\d{2})?")
_TAIWAN = re.compile(r"(\d{8})(\d{2}(\([0-9A-Z]\))?)?")
_PR_2017 = re.compile(r"[A-Z]{3}\d{12}")
_PR_2023 = re.compile(r"9\d{16}[\dX]")

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


def default_password(doc_no: str, doc_type: IdDocType = IdDocType.RESIDENT_ID) -> str:
    """LOSS-1: the default self-service password is the last 6 characters of the ID document.

    For a national ID the last character may be ``X`` (always upper case after validation); for
    the other documents the same rule applies to the normalised number (see the module
    docstring), e.g. passport ``E12345678`` -> ``345678``.
    """
    return validate_id_doc(doc_type, doc_no)[-WORK_NUMBER_LENGTH:]


def work_number(doc_no: str, doc_type: IdDocType = IdDocType.RESIDENT_ID) -> str:
    """ISS-11: a temporary holder's work number is the last 6 characters of the ID document
    ("工号：身份证后6位"; for other documents: of the normalised document number)."""
    return validate_id_doc(doc_type, doc_no)[-WORK_NUMBER_LENGTH:]


def parse_id_doc_type(text: str | None) -> IdDocType:
    """A document type as a clerk or a roster writes it (``passport``, ``护照``, ``台胞证``...);
    empty means a resident ID."""
    key = "".join(unicodedata.normalize("NFKC", text or "").split()).upper()
    if not key:
        return IdDocType.RESIDENT_ID
    try:
        return _ID_DOC_ALIASES[key]
    except KeyError:
        names = "、".join(ID_DOC_NAMES_ZH.values())
        raise _fail(
            f"证件类型无效：{text}（可用：{names}）",
            f"unknown ID document type: {text} (use one of: {', '.join(IdDocType)})",
        ) from None


def validate_id_doc(doc_type: IdDocType, s: str, *, today: date | None = None) -> str:
    """Return the normalised number of an identity document of ``doc_type`` or raise
    :class:`InvalidInput` (bilingual, saying what is wrong, never echoing the number).

    Formats and sources: see the module docstring. Full-width characters are folded and letters
    upper-cased for every type.
    """
    if doc_type is IdDocType.RESIDENT_ID:
        return validate_national_id(s, today=today)
    value = "".join(_normalise(s).split())
    if not value:
        raise _fail(f"{ID_DOC_NAMES_ZH[doc_type]}号码为空", f"{doc_type.value} number is empty")
    if doc_type is IdDocType.PASSPORT:
        return _validate_passport(value)
    if doc_type is IdDocType.HK_MACAU_PERMIT:
        m = _HK_MACAU.fullmatch(value.replace("-", ""))
        if m is None:
            raise _fail(
                "港澳居民来往内地通行证号码应为H或M加8位数字",
                "a Hong Kong/Macau permit number is H or M followed by 8 digits",
            )
        return m.group(1)
    if doc_type is IdDocType.TAIWAN_PERMIT:
        m = _TAIWAN.fullmatch(value.replace("-", ""))
        if m is None:
            raise _fail(
                "台湾居民来往大陆通行证号码应为8位数字",
                "a Taiwan permit number is 8 digits",
            )
        return m.group(1)
    return _validate_permanent_residence(value, today)


def _validate_passport(value: str) -> str:
    value = _PASSPORT_DROP.sub("", value)
    if not value.isascii() or not value.isalnum():
        raise _fail("护照号码只能包含字母和数字", "a passport number holds only letters and digits")
    if not PASSPORT_MIN <= len(value) <= PASSPORT_MAX:
        raise _fail(
            f"护照号码应为{PASSPORT_MIN}-{PASSPORT_MAX}位，实为{len(value)}位",
            f"a passport number has {PASSPORT_MIN}-{PASSPORT_MAX} characters, got {len(value)}",
        )
    if not any(ch.isdigit() for ch in value):
        raise _fail("护照号码须含数字", "a passport number contains digits")
    return value


def _validate_permanent_residence(value: str, today: date | None) -> str:
    if _PR_2017.fullmatch(value):
        return value  # 2004/2017 card: nationality letters + 12 digits
    if len(value) != NATIONAL_ID_LENGTH or not value.startswith("9"):
        raise _fail(
            "外国人永久居留身份证号码应为以9开头的18位（2023版）或3个字母加12位数字（旧版）",
            "a permanent residence card number has 18 characters starting with 9 (2023 card)"
            " or 3 letters + 12 digits (older cards)",
        )
    if not _PR_2023.fullmatch(value):
        raise _fail(
            "永居证号码前17位须为数字，末位为数字或X",
            "a permanent residence card number is 17 digits and a digit or X",
        )
    birth = _birth_date(value[:17])
    if today is not None and birth > today:
        raise _fail("永居证号码出生日期晚于今天", "permanent residence card birth date is future")
    if national_id_check_char(value[:17]) != value[17]:
        raise _fail("永居证号码校验位错误", "permanent residence card check digit wrong")
    return value


def make_permanent_residence_no(province: str, nationality: str, birth: date, seq: int) -> str:
    """Build a valid 2023 permanent residence card number; for synthetic data and tests.

    ``province`` is the 2-digit code of the issuing province, ``nationality`` the 3-digit
    ISO 3166-1 numeric country code.
    """
    first17 = f"9{province:0>2}{nationality:0>3}{birth:%Y%m%d}{seq:03d}"
    return first17 + national_id_check_char(first17)


def mask_national_id(s: str) -> str:
    """``"5115**********123X"``: keep the first 4 and the last 4 characters.

    Never raises (it is used on the way to logs); anything too short to keep 8 characters and still
    hide some is fully masked.
    """
    value = s.strip()
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def mask_id_doc(s: str) -> str:
    """Mask any identity document number: keep a quarter of it at each end (at least 1).

    ``"11010519491231002X" -> "1101**********002X"`` (as :func:`mask_national_id`),
    ``"E12345678" -> "E1*****78"``, ``"12345678" -> "12****78"``. Never raises; 4 characters or
    fewer are fully masked.
    """
    value = s.strip()
    if len(value) <= 4:
        return "*" * len(value)
    keep = max(1, len(value) // 4)
    return value[:keep] + "*" * (len(value) - 2 * keep) + value[-keep:]


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
