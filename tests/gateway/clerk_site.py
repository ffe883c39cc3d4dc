"""The counter the clerk tests start from (issue 10): a logged-in chief on a real SQLite file,
temp-card stock at the counter, the sample class roster, and a passport holder."""

from __future__ import annotations

from pathlib import Path

from tests.cli import onecard, operator_site

SAMPLE = Path(__file__).parents[2] / "docs" / "samples" / "students-2026.csv"
NOW = "2026-11-26T10:05+08:00"


def temp_stock(env: dict[str, str], usage: str = "测试") -> None:
    """Ten temp cards bought, five taken to the counter (INV-1/2)."""
    onecard(env, "stock", "purchase", "temp", "10", "--year", "2026-2027")
    onecard(env, "stock", "requisition", "temp", "5", "--issued-by", "科长", "--usage", usage)


def counter_site(directory: Path, now: str = NOW, **extra: str) -> dict[str, str]:
    """``operator_site`` at business time ``now``, with temp stock and the sample roster."""
    env = {**operator_site(directory), "ONECARD_NOW": now, **extra}
    temp_stock(env)
    onecard(
        env, "holder", "import", str(SAMPLE), "--kind", "student", "--valid-through", "2030-07-31"
    )
    return env


def register_anna(env: dict[str, str]) -> None:
    """A foreign teacher registered with her passport (ISS-8/11)."""
    onecard(
        env,
        "holder",
        "register-temp",
        "--name",
        "Anna Schmidt",
        "--id-type",
        "passport",
        "--id-no",
        "C01X00T47",
        "--category",
        "foreign_teacher",
        "--valid-through",
        "2027-06-30",
        "--application",
        "外事处 2026-118",
    )
