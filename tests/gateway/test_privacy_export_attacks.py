"""`onecard privacy export` against another local user (issue 15 review, docs/security.md §7 W10):
an export holds full ID numbers, so it is never written into a file someone else prepared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli import invoke
from tests.gateway.clerk_site import counter_site

NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="an administrator's sudo: runs as root")
def test_export_is_not_written_into_another_users_file_or_through_a_link(tmp_path: Path) -> None:
    env = counter_site(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    planted = shared / "zhang.json"  # another user's, waiting for the admin's export
    planted.write_text("")
    os.chown(planted, NOBODY, NOBODY)
    planted.chmod(0o666)
    done = invoke(
        env, "privacy", "export", "2026000001", "--purpose", "本人书面申请", "--out", str(planted)
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert planted.read_text() == ""  # nothing handed to its owner
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    link = shared / "link.json"
    link.symlink_to(target)
    done = invoke(
        env, "privacy", "export", "2026000001", "--purpose", "本人书面申请", "--out", str(link)
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert target.read_text() == "keep"
    fresh = shared / "own.json"  # a new file, or one the admin owns, is written as before
    done = invoke(
        env, "privacy", "export", "2026000001", "--purpose", "本人书面申请", "--out", str(fresh)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert fresh.stat().st_mode & 0o777 == 0o600 and "2026000001" in fresh.read_text()
