"""``onecard reader-agent`` (issue 11, MEAL-3): the counter's reader on real pcscd + vpcd with the
project's virtual card, the write-back through the registry, and who may listen to it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.readers.agent import ReaderAgent
from gateway.readers.pcsc import PcscReaderBridge, ReaderAttached
from gateway.services.console_view import ConsoleViews
from protocol.cardfile.layout import CampusRecord
from protocol.types import CardKind
from simulators.vcard import VirtualCard, VpcdCard
from tests.conftest import Counter
from tests.gateway.conftest import Pcscd
from tests.gateway.services import helpers as h
from tests.gateway.services.helpers import QuotaRow

READER = "Virtual PCD 00 00"
ORIGIN = "http://127.0.0.1:8090"
PORT = 8765


def _agent(**kw: Any) -> ReaderAgent:
    return ReaderAgent(PcscReaderBridge(), console_origin=ORIGIN, port=PORT, **kw)


async def _get(agent: ReaderAgent, path: str, *, client: str = "127.0.0.1", **headers: str) -> int:
    transport = httpx.ASGITransport(app=agent.app(), client=(client, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{PORT}") as c:
        return (await c.get(path, headers=headers)).status_code


@pytest.mark.asyncio
async def test_only_the_console_origin_on_loopback_may_listen() -> None:
    """A page of another origin in the counter's browser, a DNS-rebinding host name, or a
    machine on the counter network: refused before any card event is sent."""
    agent = _agent()
    assert await _get(agent, "/healthz") == 200
    assert await _get(agent, "/events", origin="http://evil.example") == 403
    assert await _get(agent, "/events") == 403  # no origin: a no-cors <img> from any page
    assert await _get(agent, "/events", host=f"evil.example:{PORT}") == 403
    assert await _get(agent, "/events", client="10.20.30.40") == 403
    assert await _get(agent, "/healthz", host="127.0.0.1:9999") == 403


@pytest.mark.pcsc
@pytest.mark.asyncio
async def test_meal3_write_back_on_insert_clears_the_pending_flag(
    counter: Counter, pcscd: Pcscd
) -> None:
    """MEAL-3: enabled in the registry, the type is written onto the card on the reader, read
    back, and only then is ``card_write_pending`` cleared; a card carrying another serial under
    the same UID is left alone."""
    c = counter
    staff, card = await h.staff_with_smart(c)
    assert staff.number is not None and card.uid is not None
    await c.center.meal.import_quotas(c.admin, [QuotaRow(2, staff.number, 20)], source="HR")
    await c.center.meal.enable(c.admin, staff.number)
    views = ConsoleViews(c.center.ctx)

    async def confirm(serial: str, group: int) -> None:
        await c.center.meal.card_written(c.admin, serial, group)

    bridge = PcscReaderBridge(timeout=2.0)
    agent = ReaderAgent(
        bridge,
        console_origin=ORIGIN,
        port=PORT,
        pending_group=views.pending_write,
        confirm_written=confirm,
    )
    listener: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    agent._listeners.add(listener)  # what an SSE subscriber receives
    uid = bytes.fromhex(card.uid)
    forged = VirtualCard(uid, CampusRecord(serial="9999999999", holder_number="X1", kind=card.kind))
    genuine = VirtualCard(
        uid, CampusRecord(serial=card.serial, holder_number=staff.number, kind=CardKind.SMART)
    )
    async with bridge:
        async with asyncio.timeout(10):
            while not isinstance(await bridge.next_event(), ReaderAttached):
                pass
        follow = asyncio.create_task(agent.follow())
        try:
            for virtual in (forged, genuine):
                link = VpcdCard(virtual, port=pcscd.port_of(READER))
                link.insert()
                async with asyncio.timeout(10):
                    inserted = await listener.get()
                    assert inserted["state"] == "inserted" and inserted["uid"] == card.uid
                link.remove()
                async with asyncio.timeout(10):
                    assert (await listener.get())["state"] == "removed"
                await asyncio.sleep(0.5)  # pcscd polls vpcd every 400 ms
        finally:
            follow.cancel()
    assert inserted["written"] == 1 and inserted["error"] is None
    assert forged.record.type_group == 0  # another serial: nothing written
    assert genuine.record.type_group == 1
    after = await h.card(c, card.serial)
    assert (after.type_group, after.card_write_pending) == (1, False)
