"""The campus application on the card: its AID, file ids, record layout and APDU vocabulary.

Pure (no I/O): shared by the gateway's PC/SC reader bridge (``gateway.readers.pcsc``) and the
project's virtual card (``simulators.vcard``), so both sides agree on one byte layout.
"""

from __future__ import annotations

from protocol.cardfile.apdu import (
    CAMPUS_AID,
    CAMPUS_RECORD_EF,
    SW,
    Command,
    Response,
    get_uid,
    read_binary,
    select_aid,
    select_ef,
    update_binary,
)
from protocol.cardfile.layout import (
    RECORD_FORMAT_VERSION,
    RECORD_LENGTH,
    TYPE_GROUP_MEAL_SUBSIDY,
    TYPE_GROUP_NONE,
    TYPE_GROUP_OFFSET,
    CampusRecord,
    CardFileError,
    decode_record,
    encode_record,
)

__all__ = [
    "CAMPUS_AID",
    "CAMPUS_RECORD_EF",
    "RECORD_FORMAT_VERSION",
    "RECORD_LENGTH",
    "SW",
    "TYPE_GROUP_MEAL_SUBSIDY",
    "TYPE_GROUP_NONE",
    "TYPE_GROUP_OFFSET",
    "CampusRecord",
    "CardFileError",
    "Command",
    "Response",
    "decode_record",
    "encode_record",
    "get_uid",
    "read_binary",
    "select_aid",
    "select_ef",
    "update_binary",
]
