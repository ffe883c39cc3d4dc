"""National ID validation, derived numbers and masking (ISS-1, ISS-6, ISS-11, LOSS-1)."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.cards.identity import (
    IdDocType,
    default_password,
    make_national_id,
    make_permanent_residence_no,
    mask_card,
    mask_id_doc,
    mask_name,
    mask_national_id,
    national_id_birth_date,
    national_id_check_char,
    parse_id_doc_type,
    validate_id_doc,
    validate_national_id,
    work_number,
)
from protocol.errors import ErrorCode, InvalidInput

# The well-known public sample from GB 11643-1999's explanatory material.
PUBLIC_SAMPLE = "11010519491231002X"


def _with_check(first17: str) -> str:
    return first17 + national_id_check_char(first17)


class TestCheckChar:
    def test_public_sample_is_valid(self) -> None:
        # Hand computation: digits 1 1 0 1 0 5 1 9 4 9 1 2 3 1 0 0 2 times weights
        # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2 sum to 167; 167 mod 11 = 2; (12 - 2) mod 11 = 10 -> X.
        assert national_id_check_char("11010519491231002") == "X"
        assert validate_national_id(PUBLIC_SAMPLE) == PUBLIC_SAMPLE

    def test_hand_computed_digit_check(self) -> None:
        # 4 4 0 3 0 8 1 9 9 0 0 1 0 1 1 2 3 times the weights sum to 212; 212 mod 11 = 3;
        # (12 - 3) mod 11 = 9.
        assert national_id_check_char("44030819900101123") == "9"
        assert validate_national_id("440308199001011239") == "440308199001011239"

    def test_hand_computed_check_zero(self) -> None:
        # 1 1 0 1 0 1 2 0 0 0 0 1 0 1 0 0 1 times the weights: 7+9+5+4+4+9+5+2 = 45;
        # 45 mod 11 = 1; (12 - 1) mod 11 = 0.
        assert national_id_check_char("11010120000101001") == "0"
        assert validate_national_id("110101200001010010") == "110101200001010010"

    def test_every_check_char_reachable(self) -> None:
        chars = {national_id_check_char(f"110101200001010{n:02d}") for n in range(100)}
        assert chars == set("0123456789X")

    def test_check_char_needs_17_digits(self) -> None:
        with pytest.raises(InvalidInput):
            national_id_check_char("1101051949123100")
        with pytest.raises(InvalidInput):
            national_id_check_char("1101051949123100A")


class TestValidate:
    def test_lowercase_x_and_whitespace_normalised(self) -> None:
        assert validate_national_id("  11010519491231002x\t") == PUBLIC_SAMPLE

    def test_full_width_digits_folded(self) -> None:
        full_width = "".join(chr(ord(c) + 0xFEE0) for c in PUBLIC_SAMPLE)
        assert validate_national_id(full_width) == PUBLIC_SAMPLE

    def test_wrong_check_digit(self) -> None:
        with pytest.raises(InvalidInput) as info:
            validate_national_id("110105194912310021")
        assert info.value.code is ErrorCode.INVALID_INPUT
        assert "校验位" in info.value.message_zh
        assert "check digit" in info.value.message_en
        assert "身份证号校验位错误 / national ID check digit wrong" in str(info.value)

    @pytest.mark.parametrize(
        ("birth", "fragment"),
        [
            ("19490230", "birth date"),  # 30 February
            ("19491301", "birth date"),  # month 13
            ("19490100", "birth date"),  # day 0
            ("19010229", "birth date"),  # 1901 is not a leap year
            ("18991231", "before 1900"),
        ],
    )
    def test_invalid_birth_dates(self, birth: str, fragment: str) -> None:
        with pytest.raises(InvalidInput) as info:
            validate_national_id(_with_check(f"110105{birth}002"))
        assert fragment in info.value.message_en

    def test_leap_day_accepted(self) -> None:
        nid = _with_check("11010520000229002")
        assert validate_national_id(nid) == nid
        assert national_id_birth_date(nid) == date(2000, 2, 29)

    def test_future_birth_date_only_with_today(self) -> None:
        nid = make_national_id("110105", date(2030, 1, 1), 1)
        assert validate_national_id(nid) == nid  # no clock read without `today`
        with pytest.raises(InvalidInput) as info:
            validate_national_id(nid, today=date(2025, 9, 1))
        assert "future" in info.value.message_en

    def test_region_all_zero(self) -> None:
        with pytest.raises(InvalidInput) as info:
            validate_national_id(_with_check("00000019491231002"))
        assert "region" in info.value.message_en

    def test_legacy_15_digit_rejected(self) -> None:
        with pytest.raises(InvalidInput) as info:
            validate_national_id("110105491231002")
        assert "15" in info.value.message_zh
        assert "18-digit" in info.value.message_en

    @pytest.mark.parametrize(
        ("value", "fragment"),
        [
            ("", "empty"),
            ("   ", "empty"),
            ("11010519491231002", "18 characters"),
            ("11010519491231002X1", "18 characters"),
            ("1101051949123100AX", "first 17"),
            ("11010519491231002Y", "last character"),
            ("110105 9491231002X", "first 17"),
        ],
    )
    def test_malformed(self, value: str, fragment: str) -> None:
        with pytest.raises(InvalidInput) as info:
            validate_national_id(value)
        assert fragment in info.value.message_en
        assert info.value.message_zh  # bilingual

    @given(
        birth=st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)),
        seq=st.integers(0, 999),
        pos=st.integers(0, 16),
        delta=st.integers(1, 9),
    )
    def test_any_single_digit_change_is_caught(
        self, birth: date, seq: int, pos: int, delta: int
    ) -> None:
        nid = make_national_id("320102", birth, seq)
        assert validate_national_id(nid) == nid
        changed = nid[:pos] + str((int(nid[pos]) + delta) % 10) + nid[pos + 1 :]
        with pytest.raises(InvalidInput):
            validate_national_id(changed)

    @given(
        birth=st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)),
        seq=st.integers(0, 999),
        pos=st.integers(0, 15),
    )
    def test_adjacent_transposition_is_caught(self, birth: date, seq: int, pos: int) -> None:
        nid = make_national_id("510104", birth, seq)
        if nid[pos] == nid[pos + 1]:
            return
        swapped = nid[:pos] + nid[pos + 1] + nid[pos] + nid[pos + 2 :]
        with pytest.raises(InvalidInput):
            validate_national_id(swapped)


class TestMakeAndDerive:
    def test_make_national_id_parts(self) -> None:
        nid = make_national_id("440308", date(1990, 1, 1), 123)
        assert nid == "440308199001011239"
        assert national_id_birth_date(nid) == date(1990, 1, 1)

    @pytest.mark.parametrize(
        ("region", "birth", "seq"),
        [
            ("44030", date(1990, 1, 1), 1),
            ("000000", date(1990, 1, 1), 1),
            ("4403a8", date(1990, 1, 1), 1),
            ("440308", date(1990, 1, 1), 1000),
            ("440308", date(1990, 1, 1), -1),
            ("440308", date(1899, 12, 31), 1),
        ],
    )
    def test_make_national_id_refuses_bad_parts(self, region: str, birth: date, seq: int) -> None:
        with pytest.raises(InvalidInput):
            make_national_id(region, birth, seq)

    def test_default_password_is_last_six(self) -> None:
        # LOSS-1: default password = last 6 digits of the national ID (X kept, upper case).
        assert default_password("11010519491231002x") == "31002X"
        assert default_password("440308199001011239") == "011239"

    def test_work_number_is_last_six(self) -> None:
        # ISS-11: a temporary holder's work number = last 6 digits of the national ID.
        assert work_number(" 440308199001011239 ") == "011239"

    def test_derived_numbers_validate_first(self) -> None:
        with pytest.raises(InvalidInput):
            default_password("110105194912310021")
        with pytest.raises(InvalidInput):
            work_number("123456")


class TestMasking:
    def test_mask_national_id(self) -> None:
        assert mask_national_id("51152119900101123X") == "5115**********123X"
        assert mask_national_id(PUBLIC_SAMPLE) == "1101**********002X"
        assert len(mask_national_id(PUBLIC_SAMPLE)) == 18

    def test_mask_national_id_short_input_never_leaks(self) -> None:
        assert mask_national_id("12345678") == "********"
        assert mask_national_id("") == ""
        assert mask_national_id("123456789") == "1234*6789"

    @pytest.mark.parametrize(
        ("name", "masked"),
        [
            ("张三", "张*"),
            ("欧阳娜娜", "欧***"),
            ("李小龙", "李**"),
            ("阿依古丽·买买提", "阿*******"),
            ("Alice Smith", "A*"),
            ("Émile", "É*"),
            (" 王五 ", "王*"),
            ("张", "*"),
            ("", ""),
        ],
    )
    def test_mask_name(self, name: str, masked: str) -> None:
        assert mask_name(name) == masked

    @pytest.mark.parametrize(
        ("serial", "masked"),
        [
            ("1234567890", "******7890"),
            ("04A1B2C3D4E5F6", "**********E5F6"),
            ("1234", "****"),
            ("", ""),
        ],
    )
    def test_mask_card(self, serial: str, masked: str) -> None:
        assert mask_card(serial) == masked


class TestOtherIdentityDocuments:
    """ISS-8/ISS-11: foreign teachers, exchange students and visitors register with the document
    they hold; each type has its own format (sources in protocol/cards/identity.py)."""

    @pytest.mark.parametrize(
        ("doc_type", "typed", "stored"),
        [
            (IdDocType.RESIDENT_ID, "11010519491231002x", PUBLIC_SAMPLE),
            (IdDocType.PASSPORT, " e1234 5678 ", "E12345678"),  # PRC: E + 8 digits
            (IdDocType.PASSPORT, "AB123456", "AB123456"),  # Canada: 2 letters + 6 digits
            (IdDocType.PASSPORT, "C01X00T47<", "C01X00T47"),  # as read off an MRZ
            (IdDocType.PASSPORT, "ＥＡ１２３４５６７", "EA1234567"),  # full width (IME)
            (IdDocType.HK_MACAU_PERMIT, "h12345678", "H12345678"),
            (IdDocType.HK_MACAU_PERMIT, "M1234567802", "M12345678"),  # old card: + renewals
            (IdDocType.TAIWAN_PERMIT, "12345678", "12345678"),
            (IdDocType.TAIWAN_PERMIT, "1234567801(B)", "12345678"),  # old booklet form
            (IdDocType.PERMANENT_RESIDENCE, "usa110080050612", "USA110080050612"),  # 2017 card
        ],
    )
    def test_valid_numbers_are_normalised(
        self, doc_type: IdDocType, typed: str, stored: str
    ) -> None:
        assert validate_id_doc(doc_type, typed) == stored

    def test_2023_permanent_residence_card_is_checked_like_a_national_id(self) -> None:
        number = make_permanent_residence_no("11", "840", date(1980, 5, 6), 1)
        assert number.startswith("9")
        assert len(number) == 18
        assert validate_id_doc(IdDocType.PERMANENT_RESIDENCE, number) == number
        wrong = number[:17] + ("0" if number[17] != "0" else "1")
        with pytest.raises(InvalidInput, match="check digit"):
            validate_id_doc(IdDocType.PERMANENT_RESIDENCE, wrong)
        bad_birth = make_permanent_residence_no("11", "840", date(1980, 5, 6), 1)
        bad_birth = bad_birth[:10] + "13" + bad_birth[12:]  # month 13
        with pytest.raises(InvalidInput, match="birth date"):
            validate_id_doc(IdDocType.PERMANENT_RESIDENCE, bad_birth)
        # a citizen's ID is not a permanent residence card (first digit 1-8)
        with pytest.raises(InvalidInput, match="starting with 9"):
            validate_id_doc(IdDocType.PERMANENT_RESIDENCE, PUBLIC_SAMPLE)

    @pytest.mark.parametrize(
        ("doc_type", "typed", "says"),
        [
            (IdDocType.PASSPORT, "ABCDEFG", "digits"),
            (IdDocType.PASSPORT, "E1234", "6-18"),
            (IdDocType.PASSPORT, "E1234567.8", "letters and digits"),
            (IdDocType.PASSPORT, "", "empty"),
            (IdDocType.HK_MACAU_PERMIT, "X12345678", "H or M"),
            (IdDocType.HK_MACAU_PERMIT, "H1234567", "H or M"),  # one digit short: a typo
            (IdDocType.TAIWAN_PERMIT, "1234567", "8 digits"),
            (IdDocType.TAIWAN_PERMIT, "A1234567", "8 digits"),
            (IdDocType.PERMANENT_RESIDENCE, "91184019800506001", "18 characters"),
        ],
    )
    def test_typos_are_refused_bilingually_without_echoing(
        self, doc_type: IdDocType, typed: str, says: str
    ) -> None:
        with pytest.raises(InvalidInput) as err:
            validate_id_doc(doc_type, typed)
        assert says in err.value.message_en
        assert err.value.message_zh
        assert err.value.code is ErrorCode.INVALID_INPUT
        if len(typed) > 4:
            assert typed not in str(err.value)

    def test_work_number_and_default_password_are_the_last_6(self) -> None:
        """ISS-11 / LOSS-1: the same "last 6" rule for every document, on the normalised number."""
        assert work_number(PUBLIC_SAMPLE) == default_password(PUBLIC_SAMPLE) == "31002X"
        assert work_number("e12345678", IdDocType.PASSPORT) == "345678"
        assert default_password("EA1234567", IdDocType.PASSPORT) == "234567"
        assert work_number("H1234567801", IdDocType.HK_MACAU_PERMIT) == "345678"
        assert default_password("12345678", IdDocType.TAIWAN_PERMIT) == "345678"
        assert work_number("USA110080050612", IdDocType.PERMANENT_RESIDENCE) == "050612"

    @pytest.mark.parametrize(
        ("typed", "doc_type"),
        [
            ("", IdDocType.RESIDENT_ID),
            ("身份证", IdDocType.RESIDENT_ID),
            ("护照", IdDocType.PASSPORT),
            ("Passport", IdDocType.PASSPORT),
            ("回乡证", IdDocType.HK_MACAU_PERMIT),
            ("港澳居民来往内地通行证", IdDocType.HK_MACAU_PERMIT),
            ("台胞证", IdDocType.TAIWAN_PERMIT),
            ("外国人永久居留身份证", IdDocType.PERMANENT_RESIDENCE),
            ("permanent_residence", IdDocType.PERMANENT_RESIDENCE),
        ],
    )
    def test_document_type_names(self, typed: str, doc_type: IdDocType) -> None:
        assert parse_id_doc_type(typed) is doc_type

    def test_unknown_document_type_is_refused(self) -> None:
        with pytest.raises(InvalidInput, match="unknown ID document type"):
            parse_id_doc_type("驾驶证")

    @pytest.mark.parametrize(
        ("number", "masked"),
        [
            (PUBLIC_SAMPLE, "1101**********002X"),
            ("E12345678", "E1*****78"),
            ("12345678", "12****78"),
            ("USA110080050612", "USA*********612"),
            ("1234", "****"),
            ("", ""),
        ],
    )
    def test_mask_id_doc_hides_half_of_any_document(self, number: str, masked: str) -> None:
        assert mask_id_doc(number) == masked
        hidden = masked.count("*")
        assert hidden >= len(number) / 2
