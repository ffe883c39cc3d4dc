"""Byte layout of the campus record, elementary file ``EF 0001`` of the campus application.

The campus application (AID ``F0 4F 4E 45 43 41 52 44``, i.e. ``"\\xF0ONECARD"``, see
:mod:`protocol.cardfile.apdu`) holds one transparent file of :data:`RECORD_LENGTH` (40) bytes::

    offset  size  field
    ------  ----  --------------------------------------------------------------------------
         0     1  format version, 0x01 (:data:`RECORD_FORMAT_VERSION`)
         1    10  card serial (卡号), 10 ASCII digits
        11    20  holder number (学号/工号), ASCII letters/digits/'-', right-padded with 0x00
        31     1  card kind: 0x01 smart card (智能卡), 0x02 temporary CPU card (临时CPU卡)
        32     1  type group (卡类型组): 0x00 none, 0x01 "电子工作证" (staff meal subsidy, MEAL-3);
                  the only byte the gateway writes back (MEAL-3 enable, MEAL-4 disable)
        33     4  valid until, BCD ``YYYYMMDD`` (e.g. ``20 26 07 31``); ``00 00 00 00`` = no
                  end date (smart cards); temporary cards carry one (TERM-2)
        37     3  reserved, written as 0x00, ignored when read

The type group sits alone at :data:`TYPE_GROUP_OFFSET` so that the write-back is a single
one-byte ``UPDATE BINARY`` that cannot tear another field.

Personal data: the serial and holder number identify a person; :class:`CampusRecord`'s ``repr``
masks them so a record can be logged.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from protocol.errors import ErrorCode, OnecardError
from protocol.types import CardKind

RECORD_FORMAT_VERSION = 0x01
RECORD_LENGTH = 40
SERIAL_LENGTH = 10
HOLDER_NUMBER_MAX = 20

VERSION_OFFSET = 0
SERIAL_OFFSET = 1
HOLDER_OFFSET = 11
KIND_OFFSET = 31
TYPE_GROUP_OFFSET = 32
VALID_UNTIL_OFFSET = 33
RESERVED_OFFSET = 37

TYPE_GROUP_NONE = 0x00
#: Type group 1, "电子工作证": cards of staff with the meal subsidy enabled (MEAL-3).
TYPE_GROUP_MEAL_SUBSIDY = 0x01

_KIND_TO_BYTE: dict[CardKind, int] = {CardKind.SMART: 0x01, CardKind.TEMP: 0x02}
_BYTE_TO_KIND: dict[int, CardKind] = {v: k for k, v in _KIND_TO_BYTE.items()}

_SERIAL_RE = re.compile(r"[0-9]{10}")
_HOLDER_RE = re.compile(r"[0-9A-Za-z-]{1,20}")


class CardFileError(OnecardError):
    """The campus record on the card (or about to be written) does not follow the layout."""

    code = ErrorCode.MALFORMED

    def __init__(self, detail: str) -> None:
        super().__init__(f"卡片数据格式错误: {detail}", f"malformed card file: {detail}")
        self.detail = detail


def mask(text: str, keep: int = 4) -> str:
    """``"2024000001"`` -> ``"******0001"``: what may appear in logs (PIPL)."""
    if len(text) <= keep:
        return "*" * len(text)
    return "*" * (len(text) - keep) + text[-keep:]


@dataclass(frozen=True, slots=True)
class CampusRecord:
    """The decoded campus record; see the module docstring for the byte layout."""

    serial: str
    holder_number: str
    kind: CardKind
    type_group: int = TYPE_GROUP_NONE
    valid_until: dt.date | None = None
    version: int = RECORD_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.version != RECORD_FORMAT_VERSION:
            raise CardFileError(f"unsupported format version {self.version}")
        if not _SERIAL_RE.fullmatch(self.serial):
            raise CardFileError("serial must be 10 ASCII digits")
        if not _HOLDER_RE.fullmatch(self.holder_number):
            raise CardFileError("holder number must be 1-20 ASCII letters, digits or '-'")
        if not 0 <= self.type_group <= 0xFF:
            raise CardFileError(f"type group {self.type_group} is not a byte")
        if self.valid_until is not None and not 1000 <= self.valid_until.year <= 9999:
            raise CardFileError("valid-until year must have four digits")

    def __repr__(self) -> str:
        return (
            f"CampusRecord(serial={mask(self.serial)!r}, "
            f"holder_number={mask(self.holder_number)!r}, kind={self.kind.value!r}, "
            f"type_group={self.type_group}, valid_until={self.valid_until!r}, "
            f"version={self.version})"
        )

    def with_type_group(self, group: int) -> CampusRecord:
        """A copy with another type group (MEAL-3 enables group 1, MEAL-4 moves the card out)."""
        return CampusRecord(
            serial=self.serial,
            holder_number=self.holder_number,
            kind=self.kind,
            type_group=group,
            valid_until=self.valid_until,
            version=self.version,
        )


def _to_bcd(digits: str) -> bytes:
    return bytes(int(digits[i]) << 4 | int(digits[i + 1]) for i in range(0, len(digits), 2))


def _from_bcd(raw: bytes) -> str:
    out: list[str] = []
    for byte in raw:
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise CardFileError(f"invalid BCD byte {byte:02X}")
        out.append(f"{hi}{lo}")
    return "".join(out)


def encode_date(value: dt.date | None) -> bytes:
    """``date(2026, 7, 31)`` -> ``20 26 07 31``; ``None`` -> ``00 00 00 00``."""
    if value is None:
        return bytes(4)
    return _to_bcd(f"{value.year:04d}{value.month:02d}{value.day:02d}")


def decode_date(raw: bytes) -> dt.date | None:
    """Inverse of :func:`encode_date`; raises :class:`CardFileError` on bad BCD or dates."""
    if len(raw) != 4:
        raise CardFileError("date must be 4 BCD bytes")
    if raw == bytes(4):
        return None
    digits = _from_bcd(raw)
    try:
        return dt.date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError as exc:
        raise CardFileError(f"invalid date {digits}") from exc


def encode_type_group(group: int) -> bytes:
    """The one byte written at :data:`TYPE_GROUP_OFFSET` (MEAL-3/MEAL-4 write-back)."""
    if not 0 <= group <= 0xFF:
        raise CardFileError(f"type group {group} is not a byte")
    return bytes([group])


def encode_record(record: CampusRecord) -> bytes:
    """The :data:`RECORD_LENGTH` bytes of ``record`` as stored in EF 0001."""
    holder = record.holder_number.encode("ascii").ljust(HOLDER_NUMBER_MAX, b"\x00")
    out = (
        bytes([record.version])
        + record.serial.encode("ascii")
        + holder
        + bytes([_KIND_TO_BYTE[record.kind], record.type_group])
        + encode_date(record.valid_until)
        + bytes(RECORD_LENGTH - RESERVED_OFFSET)
    )
    assert len(out) == RECORD_LENGTH
    return out


def decode_record(raw: bytes) -> CampusRecord:
    """Parse EF 0001; raises :class:`CardFileError` if ``raw`` does not follow the layout."""
    if len(raw) < RECORD_LENGTH:
        raise CardFileError(f"record has {len(raw)} bytes, expected {RECORD_LENGTH}")
    version = raw[VERSION_OFFSET]
    if version != RECORD_FORMAT_VERSION:
        raise CardFileError(f"unsupported format version {version}")
    try:
        serial = raw[SERIAL_OFFSET:HOLDER_OFFSET].decode("ascii")
        holder_raw = raw[HOLDER_OFFSET:KIND_OFFSET].rstrip(b"\x00")
        holder = holder_raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CardFileError("serial or holder number is not ASCII") from exc
    kind = _BYTE_TO_KIND.get(raw[KIND_OFFSET])
    if kind is None:
        raise CardFileError(f"unknown card kind byte {raw[KIND_OFFSET]:02X}")
    return CampusRecord(
        serial=serial,
        holder_number=holder,
        kind=kind,
        type_group=raw[TYPE_GROUP_OFFSET],
        valid_until=decode_date(raw[VALID_UNTIL_OFFSET:RESERVED_OFFSET]),
        version=version,
    )
