"""The sandbox payment provider: behaves like WeChat Pay / Alipay, for the demo and the tests.

Two halves, like a real provider and its SDK:

- :class:`SandboxBank` — the provider's side: merchant orders (``create``, ``query``,
  ``close``), the holder's confirmation on its page (:meth:`SandboxBank.pay`), **signed**
  notifications (:meth:`SandboxBank.notification`) and the daily statement CSV
  (:meth:`SandboxBank.statement`). gateway/payments/sandbox_app.py serves it over HTTP with a
  confirm page and delivers notifications (duplicated, late or never, on request).
- :class:`SandboxProvider` — our adapter, behind :class:`gateway.services.payments.PaymentProvider`.
  It talks to the bank through a transport: in-process (:class:`SandboxBank` itself, tests) or
  HTTP (:class:`HttpTransport`, the demo).

Signatures: HMAC-SHA256 with the merchant key over the canonical string of the fields (keys sorted,
``k=v`` joined by ``&``, empty values and ``sign`` left out), upper-case hex — the scheme of WeChat
Pay API v2's ``HMAC-SHA256`` sign type. Requests to the bank are signed the same way. The key
comes from the configuration (a file or the environment), never from the registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

from gateway.services.payments import (
    STATEMENT_HEADERS,
    ForgedNotification,
    NotifyReply,
    ProviderOrder,
    ProviderUnavailable,
    TradeState,
    TradeStatus,
)
from protocol.cards.clock import local
from protocol.cards.fees import yuan

NAME = "sandbox"

#: Provider trade states (WeChat's names).
SUCCESS = "SUCCESS"
NOTPAY = "NOTPAY"
CLOSED = "CLOSED"
NOT_FOUND = "ORDERNOTEXIST"

_STATES = {
    SUCCESS: TradeState.PAID,
    NOTPAY: TradeState.PENDING,
    CLOSED: TradeState.CLOSED,
    NOT_FOUND: TradeState.UNKNOWN,
}


def canonical(fields: Mapping[str, object]) -> str:
    return "&".join(
        f"{k}={fields[k]}" for k in sorted(fields) if k != "sign" and fields[k] not in ("", None)
    )


def sign(fields: Mapping[str, object], key: bytes) -> str:
    return hmac.new(key, canonical(fields).encode(), hashlib.sha256).hexdigest().upper()


def signed(fields: Mapping[str, object], key: bytes) -> dict[str, str]:
    out = {k: str(v) for k, v in fields.items() if v not in ("", None)}
    out["sign"] = sign(out, key)
    return out


def verify(fields: Mapping[str, object], key: bytes) -> bool:
    given = fields.get("sign")
    return isinstance(given, str) and hmac.compare_digest(given, sign(fields, key))


class SandboxError(Exception):
    """The bank refuses a request (bad signature, unknown merchant, bad fields)."""


# --- the provider's side -----------------------------------------------------------------------


@dataclass
class BankOrder:
    out_trade_no: str
    amount: int
    description: str
    expires_at: datetime
    created_at: datetime
    notify_url: str = ""
    state: str = NOTPAY
    trade_no: str | None = None
    paid_at: datetime | None = None


class SandboxBank:
    """The provider: one merchant, its key, its orders (in memory; thread-safe)."""

    def __init__(
        self,
        key: bytes,
        *,
        merchant_id: str = "onecard-demo",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pay_url_base: str = "sandbox://pay/",
    ) -> None:
        self.key = key
        self.merchant_id = merchant_id
        self.clock = clock
        self.pay_url_base = pay_url_base
        self.orders: dict[str, BankOrder] = {}
        self._lock = threading.Lock()

    # the merchant API (signed requests, signed answers)
    def api(self, op: str, fields: Mapping[str, str]) -> dict[str, str]:
        if not verify(fields, self.key) or fields.get("mch_id") != self.merchant_id:
            raise SandboxError("signature or merchant invalid")
        number = fields.get("out_trade_no", "")
        with self._lock:
            if op == "create":
                return self._answer(self._create(fields))
            order = self.orders.get(number)
            if order is None:
                return signed(
                    {"mch_id": self.merchant_id, "out_trade_no": number, "trade_state": NOT_FOUND},
                    self.key,
                )
            if op == "close" and order.state == NOTPAY:
                order.state = CLOSED
            elif op not in ("query", "close"):
                raise SandboxError(f"unknown op {op!r}")
            return self._answer(order)

    def _create(self, fields: Mapping[str, str]) -> BankOrder:
        number = fields["out_trade_no"]
        amount = int(fields["total_fee"])
        if amount <= 0 or not number or len(number) > 32:
            raise SandboxError("bad order")
        existing = self.orders.get(number)
        if existing is not None:
            if existing.amount != amount:
                raise SandboxError("out_trade_no reused with another amount")
            return existing
        order = BankOrder(
            out_trade_no=number,
            amount=amount,
            description=fields.get("body", ""),
            expires_at=datetime.fromisoformat(fields["time_expire"]),
            created_at=self.clock(),
            notify_url=fields.get("notify_url", ""),
        )
        self.orders[number] = order
        return order

    def _answer(self, order: BankOrder) -> dict[str, str]:
        return signed(
            {
                "mch_id": self.merchant_id,
                "out_trade_no": order.out_trade_no,
                "transaction_id": order.trade_no,
                "trade_state": order.state,
                "total_fee": order.amount,
                "success_time": order.paid_at.isoformat() if order.paid_at else None,
                "code_url": self.pay_url_base + order.out_trade_no,
                "nonce_str": secrets.token_hex(8),
            },
            self.key,
        )

    # the holder, on the provider's page
    def pay(self, out_trade_no: str, *, amount: int | None = None) -> BankOrder:
        """The holder confirms; ``amount`` lets a test make the provider charge another sum.
        Paying an expired or closed order is refused, as real providers do."""
        with self._lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                raise SandboxError("no such order")
            if order.state == SUCCESS:
                return order
            now = self.clock()
            if order.state == CLOSED or now >= order.expires_at:
                raise SandboxError("order closed or expired")
            order.state = SUCCESS
            order.trade_no = f"42{local(now):%Y%m%d}{secrets.randbelow(10**18):018d}"
            order.paid_at = now
            if amount is not None:
                order.amount = amount
            return order

    def notification(self, out_trade_no: str, *, key: bytes | None = None) -> bytes:
        """The signed notification body for a paid order (JSON); ``key`` forges it."""
        with self._lock:
            order = self.orders[out_trade_no]
            fields = {
                "mch_id": self.merchant_id,
                "out_trade_no": order.out_trade_no,
                "transaction_id": order.trade_no,
                "trade_state": order.state,
                "total_fee": order.amount,
                "success_time": order.paid_at.isoformat() if order.paid_at else None,
                "nonce_str": secrets.token_hex(8),
            }
        return json.dumps(signed(fields, key or self.key), sort_keys=True).encode()

    def statement(self, day: date) -> str:
        """The daily statement CSV: every paid trade of the campus ``day``, then a summary."""
        with self._lock:
            paid = sorted(
                (o for o in self.orders.values() if o.paid_at and local(o.paid_at).date() == day),
                key=lambda o: (o.paid_at or o.created_at, o.out_trade_no),
            )
        lines = [",".join(STATEMENT_HEADERS)]
        lines.extend(
            ",".join(
                [
                    f"`{local(o.paid_at):%Y-%m-%d %H:%M:%S}" if o.paid_at else "",
                    f"`{self.merchant_id}",
                    f"`{o.out_trade_no}",
                    f"`{o.trade_no}",
                    f"`{o.state}",
                    f"`{yuan(o.amount)}",
                ]
            )
            for o in paid
        )
        lines += ["", "总交易单数/count,总金额(元)/total_yuan"]
        lines.append(f"`{len(paid)},`{yuan(sum(o.amount for o in paid))}")
        return "\n".join(lines) + "\n"


# --- our adapter -------------------------------------------------------------------------------


class Transport(Protocol):
    async def call(self, op: str, fields: dict[str, str]) -> dict[str, str]: ...


class InProcessTransport:
    """Calls the bank directly (tests): the same signed fields as over HTTP."""

    def __init__(self, bank: SandboxBank) -> None:
        self.bank = bank

    async def call(self, op: str, fields: dict[str, str]) -> dict[str, str]:
        try:
            return self.bank.api(op, fields)
        except SandboxError as exc:
            raise ProviderUnavailable(
                "支付平台拒绝请求", f"the payment provider refused: {exc}"
            ) from exc


class HttpTransport:
    """POSTs JSON to the sandbox app (``{api_url}/api/{op}``), in a thread (stdlib urllib)."""

    def __init__(self, api_url: str, *, timeout_s: float = 5.0) -> None:
        if not api_url.startswith(("http://", "https://")):
            msg = f"payments api_url must be http(s): {api_url!r}"
            raise ValueError(msg)
        self.api_url = api_url.rstrip("/")
        self.timeout_s = timeout_s

    async def call(self, op: str, fields: dict[str, str]) -> dict[str, str]:
        return await asyncio.to_thread(self._post, op, fields)

    def _post(self, op: str, fields: dict[str, str]) -> dict[str, str]:
        request = urllib.request.Request(  # noqa: S310 - http(s) checked in __init__
            f"{self.api_url}/api/{op}",
            data=json.dumps(fields).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310
                data: Any = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ProviderUnavailable(
                "支付平台拒绝请求", f"the payment provider answered {exc.code}"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ProviderUnavailable(
                "支付平台无法连接", f"the payment provider is unreachable: {exc!r}"
            ) from exc
        if not isinstance(data, dict):
            raise ProviderUnavailable("支付平台应答无效", "bad answer from the payment provider")
        return {str(k): str(v) for k, v in data.items()}


class SandboxProvider:
    """:class:`gateway.services.payments.PaymentProvider` for the sandbox bank."""

    name = NAME

    def __init__(self, transport: Transport, *, key: bytes, merchant_id: str, notify_url: str):
        self.transport = transport
        self.key = key
        self.merchant_id = merchant_id
        self.notify_url = notify_url

    async def _call(self, op: str, **fields: object) -> dict[str, str]:
        request = signed(
            {"mch_id": self.merchant_id, "nonce_str": secrets.token_hex(8), **fields}, self.key
        )
        answer = await self.transport.call(op, request)
        if not verify(answer, self.key) or answer.get("mch_id") != self.merchant_id:
            raise ProviderUnavailable("支付平台应答签名无效", "the provider's answer is not signed")
        return answer

    async def create_order(
        self, *, out_trade_no: str, amount: int, description: str, expires_at: datetime
    ) -> ProviderOrder:
        answer = await self._call(
            "create",
            out_trade_no=out_trade_no,
            total_fee=amount,
            body=description,
            time_expire=expires_at.isoformat(),
            notify_url=self.notify_url,
        )
        return ProviderOrder(pay_url=answer["code_url"], prepay_id=answer["out_trade_no"])

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> TradeStatus:  # noqa: ARG002
        try:
            fields = json.loads(body)
        except (ValueError, RecursionError):
            raise ForgedNotification("通知格式无效", "the notification is not JSON") from None
        if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
            raise ForgedNotification("通知格式无效", "the notification is not a flat object")
        if not verify(fields, self.key):
            raise ForgedNotification("通知签名无效", "the notification's signature is invalid")
        if fields.get("mch_id") != self.merchant_id:
            raise ForgedNotification("通知商户号不符", "the notification names another merchant")
        return _status(fields)

    def notify_reply(self, ok: bool) -> NotifyReply:
        body = {"code": "SUCCESS" if ok else "FAIL", "message": "OK" if ok else "refused"}
        return NotifyReply(200 if ok else 400, "application/json", json.dumps(body).encode())

    async def query_order(self, out_trade_no: str) -> TradeStatus:
        return _status(await self._call("query", out_trade_no=out_trade_no))

    async def close_order(self, out_trade_no: str) -> TradeStatus:
        return _status(await self._call("close", out_trade_no=out_trade_no))


def _status(fields: Mapping[str, str]) -> TradeStatus:
    try:
        state = _STATES[fields.get("trade_state", "")]
        amount = int(fields["total_fee"]) if fields.get("total_fee") else None
        paid_at = (
            datetime.fromisoformat(fields["success_time"]) if fields.get("success_time") else None
        )
    except (KeyError, ValueError):
        raise ForgedNotification("通知内容无效", "the provider's fields are invalid") from None
    if paid_at is not None and paid_at.tzinfo is None:
        raise ForgedNotification("通知时间无时区", "success_time has no offset")
    return TradeStatus(
        out_trade_no=fields.get("out_trade_no", ""),
        state=state,
        amount=amount,
        trade_no=fields.get("transaction_id") or None,
        paid_at=paid_at,
    )


__all__ = [
    "NAME",
    "BankOrder",
    "HttpTransport",
    "InProcessTransport",
    "SandboxBank",
    "SandboxError",
    "SandboxProvider",
    "canonical",
    "sign",
    "signed",
    "verify",
]
