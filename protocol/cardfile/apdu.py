"""Short ISO 7816-4 APDUs used with the campus application (no I/O).

Commands (all short APDUs, CLA ``00`` except the PC/SC pseudo-APDU):

- ``FF CA 00 00 00``            GET DATA UID (PC/SC part 3 pseudo-APDU, answered by the reader
  for contactless cards; our virtual card answers it itself)
- ``00 A4 04 00 Lc AID``         SELECT the campus application by AID (:data:`CAMPUS_AID`)
- ``00 A4 02 0C 02 FID``         SELECT an EF of the current application by file id
- ``00 B0 P1 P2 Le``             READ BINARY of the current EF at offset ``P1P2`` (15 bits)
- ``00 D6 P1 P2 Lc DATA``        UPDATE BINARY of the current EF at offset ``P1P2``
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

#: AID of the campus application: proprietary RID range (``F0``) + ASCII "ONECARD".
CAMPUS_AID = bytes.fromhex("F04F4E4543415244")
#: File id of the campus record (layout in :mod:`protocol.cardfile.layout`).
CAMPUS_RECORD_EF = 0x0001

CLA_ISO = 0x00
CLA_PCSC = 0xFF
INS_SELECT = 0xA4
INS_READ_BINARY = 0xB0
INS_UPDATE_BINARY = 0xD6
INS_GET_DATA = 0xCA
INS_GET_RESPONSE = 0xC0


class SW(IntEnum):
    """Status words the campus application answers with."""

    OK = 0x9000
    END_OF_FILE = 0x6282  # fewer bytes than Le before the end of the file
    WRONG_LENGTH = 0x6700
    SECURITY_NOT_SATISFIED = 0x6982  # no application selected
    NO_CURRENT_EF = 0x6986
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    INCORRECT_P1P2 = 0x6A86
    WRONG_OFFSET = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00


class ApduError(ValueError):
    """Bytes that are not a well-formed short APDU (answered with 6700 by the card)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A short command APDU; ``le`` is ``None`` when absent, 0 means 256."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            if not 0 <= getattr(self, name) <= 0xFF:
                raise ApduError(f"{name} is not a byte")
        if len(self.data) > 255:
            raise ApduError("data longer than a short APDU allows")
        if self.le is not None and not 0 <= self.le <= 0xFF:
            raise ApduError("Le is not a byte")

    @property
    def expected_length(self) -> int | None:
        """Le as a byte count (``00`` -> 256), or ``None`` when absent."""
        if self.le is None:
            return None
        return self.le or 256

    def to_bytes(self) -> bytes:
        out = bytes([self.cla, self.ins, self.p1, self.p2])
        if self.data:
            out += bytes([len(self.data)]) + self.data
        if self.le is not None:
            out += bytes([self.le])
        return out

    @classmethod
    def parse(cls, raw: bytes) -> Command:
        """Parse cases 1-4 of a short APDU; extended APDUs raise :class:`ApduError`."""
        if len(raw) < 4:
            raise ApduError("shorter than a header")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0])
        lc = body[0]
        if lc == 0:
            raise ApduError("extended APDUs are not supported")
        if len(body) == 1 + lc:
            return cls(cla, ins, p1, p2, data=bytes(body[1:]))
        if len(body) == 2 + lc:
            return cls(cla, ins, p1, p2, data=bytes(body[1:-1]), le=body[-1])
        raise ApduError("Lc does not match the body length")


@dataclass(frozen=True, slots=True)
class Response:
    """A response APDU: data + status word."""

    data: bytes
    sw: int

    @property
    def ok(self) -> bool:
        return self.sw == SW.OK

    @property
    def sw_hex(self) -> str:
        return f"{self.sw:04X}"

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    @classmethod
    def parse(cls, raw: bytes) -> Response:
        if len(raw) < 2:
            raise ApduError("response shorter than a status word")
        return cls(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))

    @classmethod
    def status(cls, sw: int) -> Response:
        return cls(b"", sw)


def get_uid() -> Command:
    """``FF CA 00 00 00``: the card's UID (PC/SC part 3 GET DATA)."""
    return Command(CLA_PCSC, INS_GET_DATA, 0x00, 0x00, le=0)


def select_aid(aid: bytes = CAMPUS_AID) -> Command:
    """``00 A4 04 00 Lc AID``: select an application by name, FCI requested."""
    return Command(CLA_ISO, INS_SELECT, 0x04, 0x00, data=aid, le=0)


def select_ef(file_id: int = CAMPUS_RECORD_EF) -> Command:
    """``00 A4 02 0C 02 FID``: select an EF under the current application, no FCI."""
    return Command(CLA_ISO, INS_SELECT, 0x02, 0x0C, data=file_id.to_bytes(2, "big"))


def read_binary(offset: int, length: int) -> Command:
    """``00 B0 P1 P2 Le``: read ``length`` (1-256) bytes at ``offset`` (0-32767)."""
    if not 0 <= offset <= 0x7FFF:
        raise ApduError("offset out of range")
    if not 1 <= length <= 256:
        raise ApduError("length out of range")
    return Command(CLA_ISO, INS_READ_BINARY, offset >> 8, offset & 0xFF, le=length & 0xFF)


def update_binary(offset: int, data: bytes) -> Command:
    """``00 D6 P1 P2 Lc DATA``: write ``data`` at ``offset`` (0-32767)."""
    if not 0 <= offset <= 0x7FFF:
        raise ApduError("offset out of range")
    if not data:
        raise ApduError("nothing to write")
    return Command(CLA_ISO, INS_UPDATE_BINARY, offset >> 8, offset & 0xFF, data=data)


def get_response(length: int) -> Command:
    """``00 C0 00 00 Le``: fetch data announced by ``61xx`` (T=0 readers)."""
    return Command(CLA_ISO, INS_GET_RESPONSE, 0x00, 0x00, le=length & 0xFF)
