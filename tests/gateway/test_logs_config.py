from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.logs import MaskingFilter, mask_text


def test_national_ids_and_card_numbers_are_masked_in_log_lines() -> None:
    text = mask_text("holder 11010519491231002X card 2000000003 uid 04000077359403 paid 1250 fen")
    assert "11010519491231002X" not in text
    assert "1101**********002X" in text
    assert "2000000003" not in text
    assert "******0003" in text
    assert "04000077359403" not in text
    assert "1250" in text  # amounts are not card numbers


def test_other_id_documents_are_masked_in_log_lines() -> None:
    """ISS-8/11: HK/Macau permits, older permanent residence cards and PRC passports too."""
    text = mask_text("permit H12345678 old M1234567801 pr USA110080050612 passport E12345678")
    for number in ("H12345678", "M1234567801", "USA110080050612", "E12345678"):
        assert number not in text
    assert "H1*****78" in text
    assert "E1*****78" in text
    assert mask_text("staff T00123 at 2026-11-29") == "staff T00123 at 2026-11-29"


def test_masking_filter_rewrites_records_with_args() -> None:
    record = logging.LogRecord(
        "onecard.test", logging.INFO, __file__, 1, "card %s lost", ("2000000003",), None
    )
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "card ******0003 lost"


def test_settings_from_toml_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "onecard.toml"
    toml.write_text(
        'db = "/srv/onecard.sqlite3"\n[mqtt]\nport = 1884\nshared_group = "gw"\n[http]\nport = 9200\n'
    )
    monkeypatch.setenv("ONECARD_MQTT__PORT", "1999")
    settings = load_settings(toml)
    assert settings.db == "/srv/onecard.sqlite3"
    assert settings.mqtt.port == 1999  # the environment wins over the file
    assert settings.mqtt.shared_group == "gw"
    assert settings.http.port == 9200


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text('dbb = "typo"\n')
    with pytest.raises(ValueError, match="dbb"):
        load_settings(toml)
