"""A pure ISO 7816-4 model of a campus CPU card (no I/O, no threads).

It answers the APDUs listed in :mod:`protocol.cardfile.apdu`:

- ``FF CA 00 00 00`` GET DATA UID (``P1=01``: the historical bytes), answered by the card itself
  because vpcd passes every APDU through (a real contactless reader answers it in firmware);
- SELECT by AID (only :data:`~protocol.cardfile.apdu.CAMPUS_AID`), SELECT EF by file id,
  READ BINARY and UPDATE BINARY on the campus record ``EF 0001``.

Status words: ``6A82`` unknown AID/file, ``6982`` file access before the campus application is
selected, ``6986`` READ/UPDATE with no current EF, ``6B00`` offset beyond the file, ``6700`` wrong
Lc/Le or a write past the end, ``6A86`` wrong P1-P2, ``6D00`` unknown INS, ``6E00`` unknown CLA.

Power off / reset clear the selection, as on a real card.
"""

from __future__ import annotations

from protocol.cardfile.apdu import (
    CAMPUS_AID,
    CAMPUS_RECORD_EF,
    CLA_ISO,
    CLA_PCSC,
    INS_GET_DATA,
    INS_READ_BINARY,
    INS_SELECT,
    INS_UPDATE_BINARY,
    SW,
    ApduError,
    Command,
    Response,
)
from protocol.cardfile.layout import CampusRecord, decode_record, encode_record

#: Historical bytes of our ATR: category ``80`` (compact-TLV follows) with a card service data
#: object ``31 C0`` and a pre-issuing object ``65 "OC" 01`` naming the product.
HISTORICAL_BYTES = bytes.fromhex("8031C065") + b"OC\x01"


def build_contactless_atr(historical: bytes) -> bytes:
    """The ATR a PC/SC reader builds for an ISO 14443-4 card (PC/SC part 3, 3.1.3.2.3.1).

    ``3B 8n 80 01 <historical bytes> TCK``: TD1 ``80`` announces TD2, TD2 ``01`` says T=1, and
    TCK is the XOR of every byte from T0 to the last historical byte.
    """
    if len(historical) > 15:
        raise ValueError("at most 15 historical bytes")
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    tck = 0
    for byte in body:
        tck ^= byte
    return b"\x3b" + body + bytes([tck])


DEFAULT_ATR = build_contactless_atr(HISTORICAL_BYTES)


class VirtualCard:
    """State of one card: the UID, the campus application's files and the current selection."""

    def __init__(self, uid: bytes, record: CampusRecord, *, atr: bytes = DEFAULT_ATR) -> None:
        if not 4 <= len(uid) <= 10:
            raise ValueError("a UID has 4, 7 or 10 bytes")
        self.uid = bytes(uid)
        self.atr = bytes(atr)
        self.files: dict[int, bytearray] = {CAMPUS_RECORD_EF: bytearray(encode_record(record))}
        self.powered = False
        self.app_selected = False
        self.current_ef: int | None = None
        self.apdu_count = 0

    # -- card state --------------------------------------------------------------------------
    @property
    def record(self) -> CampusRecord:
        """The campus record as the card holds it now."""
        return decode_record(bytes(self.files[CAMPUS_RECORD_EF]))

    def power_on(self) -> None:
        self.powered = True
        self._clear_selection()

    def power_off(self) -> None:
        self.powered = False
        self._clear_selection()

    def reset(self) -> None:
        self.powered = True
        self._clear_selection()

    def _clear_selection(self) -> None:
        self.app_selected = False
        self.current_ef = None

    # -- APDU processing ---------------------------------------------------------------------
    def process(self, raw: bytes) -> bytes:
        """Answer one C-APDU with an R-APDU (data + SW1 SW2)."""
        self.apdu_count += 1
        try:
            cmd = Command.parse(raw)
        except ApduError:
            return Response.status(SW.WRONG_LENGTH).to_bytes()
        return self.handle(cmd).to_bytes()

    def handle(self, cmd: Command) -> Response:
        if cmd.cla == CLA_PCSC:
            if cmd.ins == INS_GET_DATA:
                return self._get_data(cmd)
            return Response.status(SW.INS_NOT_SUPPORTED)
        if cmd.cla != CLA_ISO:
            return Response.status(SW.CLA_NOT_SUPPORTED)
        if cmd.ins == INS_SELECT:
            return self._select(cmd)
        if cmd.ins == INS_READ_BINARY:
            return self._read_binary(cmd)
        if cmd.ins == INS_UPDATE_BINARY:
            return self._update_binary(cmd)
        return Response.status(SW.INS_NOT_SUPPORTED)

    def _get_data(self, cmd: Command) -> Response:
        if cmd.p2 != 0x00 or cmd.p1 not in (0x00, 0x01):
            return Response.status(SW.INCORRECT_P1P2)
        if cmd.data or cmd.le is None:
            return Response.status(SW.WRONG_LENGTH)
        value = self.uid if cmd.p1 == 0x00 else HISTORICAL_BYTES
        if cmd.le and cmd.le != len(value):
            # PC/SC part 3: Le shorter or longer than the value -> 6C XX (XX = exact length)
            return Response.status(0x6C00 | len(value))
        return Response(value, SW.OK)

    def _select(self, cmd: Command) -> Response:
        if cmd.p1 == 0x04:  # by DF name (AID)
            if cmd.p2 not in (0x00, 0x0C) or not cmd.data:
                return Response.status(SW.INCORRECT_P1P2 if cmd.data else SW.WRONG_LENGTH)
            if cmd.data != CAMPUS_AID:
                self._clear_selection()
                return Response.status(SW.FILE_NOT_FOUND)
            self.app_selected = True
            self.current_ef = None
            if cmd.p2 == 0x0C:
                return Response.status(SW.OK)
            fci = bytes([0x6F, len(CAMPUS_AID) + 2, 0x84, len(CAMPUS_AID)]) + CAMPUS_AID
            return Response(fci, SW.OK)
        if cmd.p1 == 0x02:  # EF under the current DF, by file id
            if cmd.p2 not in (0x00, 0x0C):
                return Response.status(SW.INCORRECT_P1P2)
            if len(cmd.data) != 2:
                return Response.status(SW.WRONG_LENGTH)
            if not self.app_selected:
                return Response.status(SW.SECURITY_NOT_SATISFIED)
            fid = int.from_bytes(cmd.data, "big")
            if fid not in self.files:
                return Response.status(SW.FILE_NOT_FOUND)
            self.current_ef = fid
            return Response.status(SW.OK)
        return Response.status(SW.INCORRECT_P1P2)

    def _current_file(self) -> bytearray | Response:
        if not self.app_selected:
            return Response.status(SW.SECURITY_NOT_SATISFIED)
        if self.current_ef is None:
            return Response.status(SW.NO_CURRENT_EF)
        return self.files[self.current_ef]

    def _read_binary(self, cmd: Command) -> Response:
        if cmd.p1 & 0x80:  # short EF identifier addressing: not implemented
            return Response.status(SW.FUNCTION_NOT_SUPPORTED)
        if cmd.data or cmd.le is None:
            return Response.status(SW.WRONG_LENGTH)
        file = self._current_file()
        if isinstance(file, Response):
            return file
        offset = cmd.p1 << 8 | cmd.p2
        if offset >= len(file):
            return Response.status(SW.WRONG_OFFSET)
        available = len(file) - offset
        wanted = cmd.expected_length or 256
        if cmd.le == 0:  # "as much as there is", up to 256
            return Response(bytes(file[offset : offset + min(available, 256)]), SW.OK)
        if wanted > available:
            return Response(bytes(file[offset:]), SW.END_OF_FILE)
        return Response(bytes(file[offset : offset + wanted]), SW.OK)

    def _update_binary(self, cmd: Command) -> Response:
        if cmd.p1 & 0x80:
            return Response.status(SW.FUNCTION_NOT_SUPPORTED)
        if not cmd.data or cmd.le is not None:
            return Response.status(SW.WRONG_LENGTH)
        file = self._current_file()
        if isinstance(file, Response):
            return file
        offset = cmd.p1 << 8 | cmd.p2
        if offset >= len(file):
            return Response.status(SW.WRONG_OFFSET)
        if offset + len(cmd.data) > len(file):
            return Response.status(SW.WRONG_LENGTH)
        file[offset : offset + len(cmd.data)] = cmd.data
        return Response.status(SW.OK)
