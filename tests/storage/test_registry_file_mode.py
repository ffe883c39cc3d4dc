"""The SQLite registry holds national IDs and names in clear: it is created 0600 with its -wal
and -shm files, and an existing file others can read is reported (issue 8, item 13)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.engine import secure_registry_file
from storage.sql import SqlRegistry


@pytest.fixture
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.asyncio
@pytest.mark.usefixtures("usual_umask")
async def test_a_new_registry_and_its_wal_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    reg = await SqlRegistry.open(path, migrate=True)
    try:
        async with reg.read() as tx:
            await tx.rows("SELECT count(*) AS n FROM holders")
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await reg.close()


@pytest.mark.usefixtures("usual_umask")
def test_an_existing_world_readable_registry_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry.sqlite3"
    path.write_bytes(b"")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="onecard.storage"):
        assert secure_registry_file(path) == 0o644
    assert "chmod 600" in caplog.text
    assert _mode(path) == 0o644  # reported, not changed behind the operator's back
    path.chmod(0o600)
    caplog.clear()
    assert secure_registry_file(path) is None
    assert caplog.text == ""
