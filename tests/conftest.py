"""Shared fixtures: a real SQLite registry file per test, a movable clock, a seeded counter."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.services.base import Actor, Context, FixedClock
from gateway.services.center import CardCenter
from protocol.cards.identity import make_national_id
from protocol.types import CardKind, HolderKind, Permission
from storage.sql import SqlRegistry

#: A Monday morning in term time, campus time 10:05.
T0 = datetime(2026, 11, 23, 2, 5, tzinfo=UTC)


@pytest.fixture(scope="session", autouse=True)
def _pii_key_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The default key files of test PostgreSQL databases go to a temp directory, not ~/.config
    (issue 15, storage/pii.py); gateways started as processes inherit it."""
    os.environ.setdefault("ONECARD_PII_KEY_DIR", str(tmp_path_factory.mktemp("pii-keys")))


@dataclass
class StudentRow:
    row_number: int
    name: str | None
    national_id: str | None
    student_number: str | None
    staff_number: str | None = None
    college: str | None = "计算机学院"
    class_name: str | None = "计科2026-1班"
    department: str | None = None
    photo: str | None = "photo/0001.jpg"
    valid_until: date | None = date(2030, 7, 31)


def student_rows(n: int, *, start: int = 1, class_name: str = "计科2026-1班") -> list[StudentRow]:
    return [
        StudentRow(
            row_number=i + 2,
            name=f"学生{start + i}",
            national_id=make_national_id("511502", date(2007, 1, 1 + (start + i) % 28), start + i),
            student_number=f"2026{start + i:06d}",
            class_name=class_name,
        )
        for i in range(n)
    ]


@dataclass
class Counter:
    """A card center on a fresh SQLite file with stock, a receipt book and a counter operator."""

    center: CardCenter
    clock: FixedClock
    registry: SqlRegistry
    admin: Actor
    path: Path

    @property
    def op(self) -> Actor:
        return self.admin


@pytest_asyncio.fixture
async def registry(tmp_path: Path) -> AsyncIterator[SqlRegistry]:
    reg = await SqlRegistry.open(tmp_path / "registry.sqlite3", migrate=True)
    yield reg
    await reg.close()


@pytest_asyncio.fixture
async def counter(registry: SqlRegistry, tmp_path: Path) -> Counter:
    clock = FixedClock(T0)
    center = CardCenter.build(Context(registry=registry, clock=clock))
    admin = Actor(name="chief", permissions=frozenset(Permission), operator_id=1)
    await center.stock.purchase(admin, CardKind.SMART, 1000, "2026")
    await center.stock.purchase(admin, CardKind.TEMP, 1000, "2026")
    await center.stock.requisition(
        admin, CardKind.SMART, 500, issued_by="王科长", usage_note="新生入学"
    )
    await center.stock.requisition(
        admin, CardKind.TEMP, 500, issued_by="王科长", usage_note="新生入学"
    )
    await center.receipts.add_book(admin, "B0001", 1, 50)
    await center.receipts.add_book(admin, "B0002", 51, 100)
    return Counter(center, clock, registry, admin, tmp_path / "registry.sqlite3")


async def import_students(
    c: Counter, n: int = 3, *, start: int = 1, class_name: str = "计科2026-1班"
) -> list[int]:
    rows = student_rows(n, start=start, class_name=class_name)
    report = await c.center.holders.import_roster(c.admin, HolderKind.STUDENT, rows)
    return report.holder_ids


#: Modules that share one machine-wide resource run one after another on one xdist worker: the
#: one pcscd per mount namespace (with its virtual readers) and Chromium (two at once starve the
#: 2-core runner; the console's browser tests use pcscd too). The chaos suite (namespaces,
#: mounts, nft tables, and a last test that checks none is left behind) is a unit of its own.
#: A module marked ``pcsc`` or ``browser`` that is missing here fails the collection.
DEVICE_MODULES = frozenset(
    {
        "tests/gateway/test_pcsc_reader.py",
        "tests/gateway/test_reader_agent.py",
        "tests/web/test_browser.py",
        "tests/web/test_console.py",
    }
)


def work_unit(path: str) -> str:
    """The xdist work unit of a test module: its own path, or a shared unit."""
    if path in DEVICE_MODULES:
        return "devices"
    if path.startswith("tests/chaos/"):
        return "chaos"
    return path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test`` runs the suite on both cores (``-n 2``): each module goes whole to one
    worker (its module-scoped broker and servers start once), the units above one after another.

    A scheduler of our own rather than ``--dist loadgroup``: with pytest 9.2 and xdist 3.8 the
    ``xdist_group`` marks are not honoured (measured: four tests of one explicit group ran on
    both workers), and two pcscd instances killed each other's readers."""
    from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

    class UnitScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid.split("::", 1)[0])

    return UnitScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = sorted(
        {
            item.nodeid.split("::", 1)[0]
            for item in items
            if (item.get_closest_marker("pcsc") or item.get_closest_marker("browser"))
            and item.nodeid.split("::", 1)[0] not in DEVICE_MODULES
        }
    )
    if missing:
        raise pytest.UsageError(
            f"add {', '.join(missing)} to DEVICE_MODULES in tests/conftest.py: a pcsc or browser"
            " module must run on the devices worker"
        )
