"""The sandbox payment provider over real HTTP (TOP-1, the app channel).

Real parts: the sandbox app (uvicorn, gateway/payments/sandbox_app.py) on a loopback port, our
adapter talking to it over HTTP (signed requests), a notify endpoint on another port that hands
each callback to :meth:`PaymentService.handle_notification` as the web app's route does, the
registry on a SQLite file. The confirm page is posted as a browser would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config import PaymentsConfig
from gateway.payments import open_provider, topup_rules
from gateway.payments.sandbox import SandboxBank
from gateway.payments.sandbox_app import Notifier, build_app
from gateway.services.base import Actor, Context
from gateway.services.payments import OrderState, PaymentService, parse_statement, reconcile
from protocol.cards.clock import local
from protocol.ledger import purse
from tests.conftest import Counter
from tests.gateway.services.helpers import balance, student_with_temp
from tests.gateway.services.test_offline_settlement import assert_conserved

pytestmark = pytest.mark.asyncio

KEY = "sandbox-http-test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve(app: Starlette, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task


def http(url: str, form: dict[str, str] | None = None) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    with urllib.request.urlopen(url, data=data, timeout=5) as resp:
        return int(resp.status), resp.read().decode()


@dataclass
class Sandbox:
    c: Counter
    payments: PaymentService
    notifier: Notifier
    url: str
    actor: Actor
    holder_id: int

    async def pay(self, number: str, deliver: str) -> str:
        _status, page = await asyncio.to_thread(http, f"{self.url}/pay/{number}")
        assert "确认支付 / Pay" in page
        status, done = await asyncio.to_thread(
            http, f"{self.url}/pay/{number}", {"deliver": deliver}
        )
        assert status == 200, done
        return done

    async def deliveries(self, number: str, n: int) -> list[int]:
        for _ in range(500):
            got = [s for o, s in self.notifier.delivered if o == number]
            if len(got) >= n:
                return got
            await asyncio.sleep(0.01)
        raise AssertionError(f"{n} deliveries for {number} never came: {self.notifier.delivered}")

    async def purse(self) -> int:
        return await balance(self.c, purse(self.holder_id))


@pytest_asyncio.fixture
async def sandbox(counter: Counter) -> AsyncIterator[Sandbox]:
    c = counter
    who, _card = await student_with_temp(c)
    sandbox_port, notify_port = free_port(), free_port()
    url = f"http://127.0.0.1:{sandbox_port}"
    bank = SandboxBank(
        KEY.encode(), merchant_id="onecard-demo", clock=c.clock.now, pay_url_base=f"{url}/pay/"
    )
    app = build_app(bank, late_s=0.3)
    config = PaymentsConfig(
        api_url=url,
        notify_url=f"http://127.0.0.1:{notify_port}/pay/notify/sandbox",
        key=SecretStr(KEY),
    )
    payments = PaymentService(
        Context(registry=c.registry, clock=c.clock), open_provider(config), topup_rules(config)
    )

    async def notify(request: Request) -> Response:  # what the web app's route does
        result = await payments.handle_notification(await request.body(), request.headers)
        return Response(result.body, status_code=result.status, media_type=result.media_type)

    receiver = Starlette(routes=[Route("/pay/notify/sandbox", notify, methods=["POST"])])
    servers = [await serve(app, sandbox_port), await serve(receiver, notify_port)]
    try:
        yield Sandbox(
            c,
            payments,
            app.state.notifier,
            url,
            Actor(name=f"holder:{who.id}", channel="web", holder_id=who.id),
            who.id,
        )
        await assert_conserved(c)
    finally:
        for server, task in servers:
            server.should_exit = True
            await task


async def test_top1_over_http_duplicated_callback_credits_once(sandbox: Sandbox) -> None:
    s = sandbox
    order = await s.payments.create_topup(s.actor, 5000)
    assert order.pay_url == f"{s.url}/pay/{order.out_trade_no}"
    assert "支付成功" in await s.pay(order.out_trade_no, "twice")
    assert await s.deliveries(order.out_trade_no, 2) == [200, 200]
    assert await s.purse() == 5000
    status = await s.payments.order_status(s.actor, order.out_trade_no)
    assert (status.state, status.balance) == (OrderState.PAID, 5000)


async def test_top1_over_http_forged_callback_refused_then_query(sandbox: Sandbox) -> None:
    s = sandbox
    order = await s.payments.create_topup(s.actor, 2000)
    await s.pay(order.out_trade_no, "forged")
    assert await s.deliveries(order.out_trade_no, 1) == [400]
    assert await s.purse() == 0
    # the return page asks the provider: paid, so credited
    status = await s.payments.order_status(s.actor, order.out_trade_no)
    assert status.state is OrderState.PAID
    assert await s.purse() == 2000


async def test_top1_over_http_late_and_never(sandbox: Sandbox) -> None:
    s = sandbox
    late = await s.payments.create_topup(s.actor, 1000)
    never = await s.payments.create_topup(s.actor, 3000)
    await s.pay(late.out_trade_no, "late")
    await s.pay(never.out_trade_no, "never")
    assert await s.deliveries(late.out_trade_no, 1) == [200]
    assert await s.purse() == 1000
    s.c.clock.advance(minutes=2)
    swept = await s.payments.sweep()
    assert swept.credited == [never.out_trade_no]
    assert await s.purse() == 4000

    day = local(s.c.clock.now()).date()
    _status, text = await asyncio.to_thread(http, f"{s.url}/statement?date={day.isoformat()}")
    table = await reconcile(s.payments.ctx, s.c.op, day, parse_statement(text), provider="sandbox")
    assert table.rows[:-1] == []
    assert "2 matched" in str(table.rows[-1][1])


async def test_sandbox_api_refuses_unsigned_requests(sandbox: Sandbox) -> None:
    s = sandbox
    body: dict[str, Any] = {"mch_id": "onecard-demo", "out_trade_no": "X", "sign": "00"}
    request = urllib.request.Request(
        f"{s.url}/api/query",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
    assert err.value.code == 400
    err.value.close()
