"""The PC/SC reader bridge against a real pcscd + vpcd with the project's virtual card.

No mocks: pcscd runs as a process (``tests/gateway/conftest.py``), the card is
``simulators.vcard`` speaking vpcd's socket protocol, the bridge uses pyscard.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol, TypeVar

import pytest
import pytest_asyncio

from gateway.readers.pcsc import (
    CardInserted,
    CardMismatch,
    CardRemoved,
    PcscReaderBridge,
    ReaderAttached,
    ReaderDetached,
    ReaderEvent,
    ReaderRecovered,
    ReaderStuck,
    ReaderTimeout,
    ServiceLost,
    ServiceRestored,
)
from protocol.cardfile.layout import TYPE_GROUP_MEAL_SUBSIDY, TYPE_GROUP_NONE, CampusRecord
from protocol.types import CardKind
from simulators.vcard import VirtualCard, VpcdCard

pytestmark = pytest.mark.pcsc

E = TypeVar("E", bound=ReaderEvent)

READER_0 = "Virtual PCD 00 00"
READER_1 = "Virtual PCD 00 01"
UID_A = bytes.fromhex("04A1B2C3D4E5F6")
UID_B = bytes.fromhex("0411223344")
RECORD_A = CampusRecord(serial="2024000001", holder_number="20240001", kind=CardKind.SMART)
RECORD_B = CampusRecord(serial="2024000777", holder_number="T0777", kind=CardKind.TEMP)

CardFactory = Callable[..., VpcdCard]


class Pcscd(Protocol):
    """What these tests use of the ``pcscd`` fixture (tests/gateway/conftest.py)."""

    def port_of(self, reader: str) -> int: ...
    def start(self, timeout: float = ...) -> None: ...
    def stop(self, sig: signal.Signals = ..., timeout: float = ...) -> None: ...


@pytest.fixture
def make_card(pcscd: Pcscd) -> Iterator[CardFactory]:
    """Virtual cards bound to a reader slot of the test pcscd; all removed at teardown."""
    made: list[VpcdCard] = []

    def factory(
        reader: str = READER_0, uid: bytes = UID_A, record: CampusRecord = RECORD_A
    ) -> VpcdCard:
        link = VpcdCard(VirtualCard(uid, record), port=pcscd.port_of(reader))
        made.append(link)
        return link

    yield factory
    for link in made:
        link.remove()
    if made:
        # pcscd polls vpcd every 400 ms: let it see the removal before the next test's bridge
        # starts, or that bridge finds a card that is already gone
        time.sleep(0.5)


@pytest_asyncio.fixture
async def bridge(pcscd: Pcscd) -> AsyncIterator[PcscReaderBridge]:
    async with PcscReaderBridge(timeout=2.0) as b:
        await expect(b, ReaderAttached, READER_0)
        yield b


async def expect(
    bridge: PcscReaderBridge, kind: type[E], reader: str | None = None, within: float = 5.0
) -> E:
    """The next event of ``kind`` (for ``reader``), skipping others; fails after ``within`` s."""
    skipped: list[ReaderEvent] = []
    try:
        async with asyncio.timeout(within):
            while True:
                event = await bridge.next_event()
                if isinstance(event, kind) and (
                    reader is None or getattr(event, "reader", None) == reader
                ):
                    return event
                skipped.append(event)
    except TimeoutError:
        pytest.fail(f"no {kind.__name__} for {reader!r} within {within} s; saw {skipped!r}")


@pytest.mark.asyncio
async def test_inserted_card_seen_with_uid_and_campus_record(
    bridge: PcscReaderBridge, make_card: CardFactory
) -> None:
    card = make_card()
    started = time.monotonic()
    card.insert()
    event = await expect(bridge, CardInserted, READER_0)
    print(f"insert -> CardInserted: {(time.monotonic() - started) * 1000:.0f} ms")
    assert event.error is None
    assert event.uid == UID_A
    assert event.record is not None
    assert event.record.serial == "2024000001"
    assert event.record.holder_number == "20240001"
    assert event.record.kind is CardKind.SMART
    assert event.atr == card.card.atr
    assert bridge.is_present(READER_0)
    assert "2024000001" not in repr(event)  # masked for logs


@pytest.mark.asyncio
async def test_two_readers_two_cards(bridge: PcscReaderBridge, make_card: CardFactory) -> None:
    make_card(READER_0, UID_A, RECORD_A).insert()
    make_card(READER_1, UID_B, RECORD_B).insert()
    seen = [await expect(bridge, CardInserted), await expect(bridge, CardInserted)]
    by_reader = {event.reader: event for event in seen}
    first, second = by_reader[READER_0], by_reader[READER_1]
    assert first.uid == UID_A
    assert second.uid == UID_B
    assert second.record == RECORD_B
    assert set(bridge.readers()) == {READER_0, READER_1}


@pytest.mark.asyncio
async def test_write_type_group_meal3_then_meal4(
    bridge: PcscReaderBridge, make_card: CardFactory
) -> None:
    """MEAL-3 writes group 1 "电子工作证" onto the card; MEAL-4 moves it out again."""
    card = make_card()
    card.insert()
    await expect(bridge, CardInserted, READER_0)

    written = await bridge.write_type_group(
        READER_0, TYPE_GROUP_MEAL_SUBSIDY, expect_serial="2024000001"
    )
    assert written.type_group == TYPE_GROUP_MEAL_SUBSIDY
    assert card.record().type_group == TYPE_GROUP_MEAL_SUBSIDY  # in the card itself
    fresh = await bridge.read_card(READER_0)  # and through a fresh read
    assert fresh.record.type_group == TYPE_GROUP_MEAL_SUBSIDY
    assert fresh.record.serial == RECORD_A.serial
    assert fresh.uid == UID_A

    disabled = await bridge.write_type_group(READER_0, TYPE_GROUP_NONE)
    assert disabled.type_group == TYPE_GROUP_NONE
    assert card.record().type_group == TYPE_GROUP_NONE


@pytest.mark.asyncio
async def test_write_refuses_another_card(bridge: PcscReaderBridge, make_card: CardFactory) -> None:
    card = make_card()
    card.insert()
    await expect(bridge, CardInserted, READER_0)
    with pytest.raises(CardMismatch, match="wrong card"):
        await bridge.write_type_group(READER_0, 1, expect_serial="2099999999")
    assert card.record().type_group == TYPE_GROUP_NONE


@pytest.mark.asyncio
async def test_remove_and_reinsert(bridge: PcscReaderBridge, make_card: CardFactory) -> None:
    card = make_card()
    card.insert()
    await expect(bridge, CardInserted, READER_0)
    card.remove()
    await expect(bridge, CardRemoved, READER_0)
    assert not bridge.is_present(READER_0)
    card.insert()
    again = await expect(bridge, CardInserted, READER_0)
    assert again.uid == UID_A


@pytest.mark.asyncio
async def test_survives_pcscd_restart(
    pcscd: Pcscd, bridge: PcscReaderBridge, make_card: CardFactory
) -> None:
    card = make_card()
    card.insert()
    await expect(bridge, CardInserted, READER_0)

    pcscd.stop(signal.SIGTERM)
    assert isinstance(await bridge.next_event(), ServiceLost)  # the cause comes first
    await expect(bridge, CardRemoved, READER_0)
    await expect(bridge, ReaderDetached, READER_0)
    assert await asyncio.to_thread(card.wait_disconnected, 5.0)
    assert not bridge.is_present(READER_0)

    pcscd.start()
    await expect(bridge, ServiceRestored, within=10.0)
    await expect(bridge, ReaderAttached, READER_0)
    card.insert()
    event = await expect(bridge, CardInserted, READER_0)
    assert event.uid == UID_A
    snapshot = await bridge.read_card(READER_0)  # the worker's own context is renewed too
    assert snapshot.record.serial == RECORD_A.serial


@pytest.mark.asyncio
async def test_stalled_card_times_out_and_loop_stays_responsive(
    bridge: PcscReaderBridge, make_card: CardFactory
) -> None:
    card = make_card()
    card.insert()
    await expect(bridge, CardInserted, READER_0)
    card.stall()

    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticker_task = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(ReaderTimeout, match="did not answer") as info:
        await bridge.read_card(READER_0, watchdog=0.5)
    waited = time.monotonic() - started
    stop.set()
    await ticker_task
    assert 0.45 <= waited < 2.0
    assert ticks >= 20  # ~50 expected in 0.5 s: the loop kept running while the card stalled
    assert "读卡器无响应" in str(info.value)
    assert card.apdus_stalled >= 1

    stuck = await expect(bridge, ReaderStuck, READER_0)
    assert stuck.operation == "read card"
    assert bridge.is_stuck(READER_0)
    fast = time.monotonic()
    with pytest.raises(ReaderTimeout, match="still stuck"):
        await bridge.write_type_group(READER_0, 1)
    assert time.monotonic() - fast < 0.2  # fails at once instead of queueing

    card.remove()  # the blocked transmit fails, the worker comes back
    await expect(bridge, ReaderRecovered, READER_0, within=10.0)
    assert not bridge.is_stuck(READER_0)
    card.resume()
    card.insert()
    await expect(bridge, CardInserted, READER_0, within=10.0)
    snapshot = await bridge.read_card(READER_0)
    assert snapshot.uid == UID_A
    assert card.record().type_group == TYPE_GROUP_NONE


@pytest.mark.asyncio
async def test_measure_read_round_trips(bridge: PcscReaderBridge, make_card: CardFactory) -> None:
    """Latency of a full read (connect, 4 APDUs, disconnect); printed, not asserted."""
    card = make_card()
    card.insert()
    await expect(bridge, CardInserted, READER_0)
    before = card.card.apdu_count
    samples: list[float] = []
    for _ in range(100):
        started = time.perf_counter()
        snapshot = await bridge.read_card(READER_0)
        samples.append((time.perf_counter() - started) * 1000)
    assert snapshot.uid == UID_A
    assert card.card.apdu_count - before == 400  # GET UID, SELECT app, SELECT EF, READ
    samples.sort()
    print(
        f"read_card: median {statistics.median(samples):.2f} ms, "
        f"p95 {samples[94]:.2f} ms, max {samples[-1]:.2f} ms (4 APDUs each)"
    )
