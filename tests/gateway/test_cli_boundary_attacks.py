"""The CLI boundary with a national ID typed into the wrong place (issue 10/11 security review,
docs/security.md §7): the counter's screen, and whatever keeps a `--json` output, never shows it
in full."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.cli import invoke
from tests.gateway.clerk_site import SAMPLE, counter_site


def test_a_national_id_typed_anywhere_is_echoed_masked(tmp_path: Path) -> None:
    env = counter_site(tmp_path)
    with SAMPLE.open(encoding="gb18030") as fh:
        full = next(csv.DictReader(fh))["身份证号"]
    masked = f"{full[:4]}{'*' * 10}{full[-4:]}"
    for args in (
        ["holder", "show", full],  # the ID where the student number goes
        ["card", "loss", full],  # ... where the card serial goes
        ["money", "topup", full, "10"],
        ["holder", "show", full, "--json"],
        ["find", full, "--json"],  # found: the search text is echoed in the result
        ["find", full],
    ):
        done = invoke(env, *args)
        out = done.stdout + done.stderr
        assert full not in out, (args, out)
        if done.returncode != 0:
            assert masked in out, (args, out)  # still tells the clerk what was typed
