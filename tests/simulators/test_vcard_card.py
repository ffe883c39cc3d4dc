"""The virtual campus card answers ISO 7816-4 APDUs (pure, no pcscd); layout codec round trips."""

from __future__ import annotations

import datetime as dt

import pytest

from protocol.cardfile.apdu import (
    CAMPUS_AID,
    SW,
    ApduError,
    Command,
    Response,
    get_uid,
    read_binary,
    select_aid,
    select_ef,
    update_binary,
)
from protocol.cardfile.layout import (
    RECORD_LENGTH,
    TYPE_GROUP_MEAL_SUBSIDY,
    TYPE_GROUP_OFFSET,
    CampusRecord,
    CardFileError,
    decode_date,
    decode_record,
    encode_date,
    encode_record,
    mask,
)
from protocol.types import CardKind
from simulators.vcard.card import DEFAULT_ATR, HISTORICAL_BYTES, VirtualCard, build_contactless_atr

UID = bytes.fromhex("04A1B2C3D4E5F6")
RECORD = CampusRecord(
    serial="2024000001",
    holder_number="20240001",
    kind=CardKind.SMART,
    type_group=0,
    valid_until=None,
)


def tx(card: VirtualCard, command: Command | bytes) -> Response:
    raw = command.to_bytes() if isinstance(command, Command) else command
    return Response.parse(card.process(raw))


@pytest.fixture
def card() -> VirtualCard:
    c = VirtualCard(UID, RECORD)
    c.power_on()
    return c


def select_record(card: VirtualCard) -> None:
    assert tx(card, select_aid()).ok
    assert tx(card, select_ef()).ok


# -- ATR -------------------------------------------------------------------------------------------
def test_atr_is_pcsc_contactless_form_with_valid_tck() -> None:
    atr = DEFAULT_ATR
    assert atr[:1] == b"\x3b"
    assert atr[1] == 0x80 | len(HISTORICAL_BYTES)
    assert atr[2:4] == b"\x80\x01"
    assert atr[4:-1] == HISTORICAL_BYTES
    check = 0
    for byte in atr[1:]:
        check ^= byte
    assert check == 0  # XOR from T0 through TCK is zero


def test_atr_rejects_too_many_historical_bytes() -> None:
    with pytest.raises(ValueError, match="15"):
        build_contactless_atr(bytes(16))


# -- GET DATA --------------------------------------------------------------------------------------
def test_get_uid_pseudo_apdu(card: VirtualCard) -> None:
    response = tx(card, bytes.fromhex("FFCA000000"))
    assert response == Response(UID, SW.OK)


def test_get_data_historical_bytes_and_wrong_le(card: VirtualCard) -> None:
    assert tx(card, bytes.fromhex("FFCA010000")) == Response(HISTORICAL_BYTES, SW.OK)
    assert tx(card, bytes.fromhex("FFCA000004")).sw == 0x6C00 | len(UID)
    assert tx(card, bytes.fromhex("FFCA020000")).sw == SW.INCORRECT_P1P2
    assert tx(card, bytes.fromhex("FFCA0000")).sw == SW.WRONG_LENGTH


def test_unknown_pcsc_pseudo_instruction(card: VirtualCard) -> None:
    assert tx(card, bytes.fromhex("FF00000000")).sw == SW.INS_NOT_SUPPORTED


# -- SELECT ----------------------------------------------------------------------------------------
def test_select_campus_application_returns_fci(card: VirtualCard) -> None:
    response = tx(card, select_aid())
    assert response.sw == SW.OK
    assert response.data == bytes([0x6F, 10, 0x84, 8]) + CAMPUS_AID
    assert card.app_selected


def test_select_without_fci(card: VirtualCard) -> None:
    response = tx(card, bytes.fromhex("00A4040C08") + CAMPUS_AID)
    assert response == Response(b"", SW.OK)


def test_select_unknown_aid_is_file_not_found_and_deselects(card: VirtualCard) -> None:
    select_record(card)
    assert tx(card, select_aid(bytes.fromhex("A000000003101001"))).sw == SW.FILE_NOT_FOUND
    assert not card.app_selected
    assert tx(card, read_binary(0, 4)).sw == SW.SECURITY_NOT_SATISFIED


def test_select_ef_needs_the_application(card: VirtualCard) -> None:
    assert tx(card, select_ef()).sw == SW.SECURITY_NOT_SATISFIED
    assert tx(card, select_aid()).ok
    assert tx(card, select_ef(0x0002)).sw == SW.FILE_NOT_FOUND
    assert tx(card, select_ef()).ok
    assert card.current_ef == 0x0001


def test_select_ef_wrong_length_and_p1p2(card: VirtualCard) -> None:
    assert tx(card, select_aid()).ok
    assert tx(card, bytes.fromhex("00A4020C0100")).sw == SW.WRONG_LENGTH
    assert tx(card, bytes.fromhex("00A4020102" + "0001")).sw == SW.INCORRECT_P1P2
    assert tx(card, bytes.fromhex("00A4080002" + "0001")).sw == SW.INCORRECT_P1P2


# -- READ BINARY -----------------------------------------------------------------------------------
def test_read_binary_without_selection_is_security_not_satisfied(card: VirtualCard) -> None:
    assert tx(card, read_binary(0, RECORD_LENGTH)).sw == SW.SECURITY_NOT_SATISFIED


def test_read_binary_without_current_ef(card: VirtualCard) -> None:
    assert tx(card, select_aid()).ok
    assert tx(card, read_binary(0, 1)).sw == SW.NO_CURRENT_EF


def test_read_whole_record_decodes(card: VirtualCard) -> None:
    select_record(card)
    response = tx(card, read_binary(0, RECORD_LENGTH))
    assert response.sw == SW.OK
    assert decode_record(response.data) == RECORD


def test_read_binary_le_zero_reads_to_end(card: VirtualCard) -> None:
    select_record(card)
    response = tx(card, bytes.fromhex("00B0000A00"))
    assert response.sw == SW.OK
    assert len(response.data) == RECORD_LENGTH - 10


def test_read_binary_past_end_and_beyond_file(card: VirtualCard) -> None:
    select_record(card)
    short = tx(card, read_binary(RECORD_LENGTH - 2, 5))
    assert short.sw == SW.END_OF_FILE
    assert len(short.data) == 2
    assert tx(card, read_binary(RECORD_LENGTH, 1)).sw == SW.WRONG_OFFSET
    assert tx(card, bytes.fromhex("00B0810001")).sw == SW.FUNCTION_NOT_SUPPORTED  # SFI
    assert tx(card, bytes.fromhex("00B00000")).sw == SW.WRONG_LENGTH  # no Le


# -- UPDATE BINARY ---------------------------------------------------------------------------------
def test_update_type_group_meal3(card: VirtualCard) -> None:
    """MEAL-3: the type group byte is written back onto the card."""
    select_record(card)
    update = update_binary(TYPE_GROUP_OFFSET, bytes([TYPE_GROUP_MEAL_SUBSIDY]))
    assert tx(card, update).sw == SW.OK
    assert card.record.type_group == TYPE_GROUP_MEAL_SUBSIDY
    assert card.record.serial == RECORD.serial
    assert tx(card, read_binary(TYPE_GROUP_OFFSET, 1)).data == b"\x01"


def test_update_binary_errors(card: VirtualCard) -> None:
    assert tx(card, update_binary(0, b"\x01")).sw == SW.SECURITY_NOT_SATISFIED
    select_record(card)
    assert tx(card, update_binary(RECORD_LENGTH, b"\x01")).sw == SW.WRONG_OFFSET
    assert tx(card, update_binary(RECORD_LENGTH - 1, b"\x01\x02")).sw == SW.WRONG_LENGTH
    assert tx(card, bytes.fromhex("00D6000000")).sw == SW.WRONG_LENGTH  # Le, no data
    assert tx(card, bytes.fromhex("00D60000020102")).sw == SW.OK
    assert tx(card, bytes.fromhex("00D6000003")).sw == SW.WRONG_LENGTH  # Lc without data


# -- generic status words --------------------------------------------------------------------------
def test_unsupported_cla_and_ins(card: VirtualCard) -> None:
    assert tx(card, bytes.fromhex("80B0000001")).sw == SW.CLA_NOT_SUPPORTED
    assert tx(card, bytes.fromhex("0084000008")).sw == SW.INS_NOT_SUPPORTED
    assert tx(card, b"\x00\xa4").sw == SW.WRONG_LENGTH
    assert tx(card, bytes.fromhex("00A4040000000100")).sw == SW.WRONG_LENGTH  # extended


def test_reset_clears_selection(card: VirtualCard) -> None:
    select_record(card)
    card.reset()
    assert tx(card, read_binary(0, 1)).sw == SW.SECURITY_NOT_SATISFIED
    select_record(card)
    card.power_off()
    assert not card.app_selected


def test_uid_length_checked() -> None:
    with pytest.raises(ValueError, match="UID"):
        VirtualCard(b"\x01\x02", RECORD)


# -- APDU codec ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    ["00A4040008F04F4E454341524400", "FFCA000000", "00B0000028", "00D6002001FF", "00A40000"],
)
def test_command_round_trip(raw: str) -> None:
    assert Command.parse(bytes.fromhex(raw)).to_bytes().hex().upper() == raw


def test_command_builders_validate() -> None:
    with pytest.raises(ApduError):
        read_binary(0x8000, 1)
    with pytest.raises(ApduError):
        read_binary(0, 0)
    with pytest.raises(ApduError):
        update_binary(0, b"")
    with pytest.raises(ApduError):
        Command(0x100, 0, 0, 0)
    with pytest.raises(ApduError):
        Response.parse(b"\x90")
    assert get_uid().expected_length == 256


# -- layout codec ----------------------------------------------------------------------------------
def test_record_layout_offsets() -> None:
    record = CampusRecord(
        serial="2024000042",
        holder_number="T2024-0007",
        kind=CardKind.TEMP,
        type_group=TYPE_GROUP_MEAL_SUBSIDY,
        valid_until=dt.date(2026, 7, 31),
    )
    raw = encode_record(record)
    assert len(raw) == RECORD_LENGTH
    assert raw[0] == 0x01
    assert raw[1:11] == b"2024000042"
    assert raw[11:31] == b"T2024-0007" + bytes(10)
    assert raw[31] == 0x02
    assert raw[TYPE_GROUP_OFFSET] == 0x01
    assert raw[33:37] == bytes.fromhex("20260731")
    assert raw[37:] == bytes(3)
    assert decode_record(raw) == record


def test_dates_bcd() -> None:
    assert encode_date(None) == bytes(4)
    assert decode_date(bytes(4)) is None
    assert decode_date(bytes.fromhex("20240229")) == dt.date(2024, 2, 29)
    with pytest.raises(CardFileError):
        decode_date(bytes.fromhex("20230229"))
    with pytest.raises(CardFileError):
        decode_date(bytes.fromhex("2024A101"))


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (0, 0x02, "version"),
        (1, ord("x"), "serial"),
        (31, 0x07, "kind"),
        (12, 0xC8, "ASCII"),
    ],
)
def test_decode_rejects_corrupt_records(offset: int, value: int, match: str) -> None:
    raw = bytearray(encode_record(RECORD))
    raw[offset] = value
    with pytest.raises(CardFileError, match=match):
        decode_record(bytes(raw))


def test_decode_rejects_short_record() -> None:
    with pytest.raises(CardFileError, match="bytes"):
        decode_record(bytes(10))


def test_record_validation_and_masked_repr() -> None:
    with pytest.raises(CardFileError):
        CampusRecord(serial="123", holder_number="1", kind=CardKind.SMART)
    with pytest.raises(CardFileError):
        CampusRecord(serial="2024000001", holder_number="x" * 21, kind=CardKind.SMART)
    with pytest.raises(CardFileError):
        RECORD.with_type_group(256)
    text = repr(RECORD)
    assert "2024000001" not in text
    assert "******0001" in text
    assert mask("123") == "***"
    assert str(CardFileError("x")).startswith("卡片数据格式错误")
