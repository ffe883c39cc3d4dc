"""Payment provider adapters behind :class:`gateway.services.payments.PaymentProvider`
(online top-up, TOP-1): the sandbox (:mod:`gateway.payments.sandbox`, served by
:mod:`gateway.payments.sandbox_app`); WeChat Pay or Alipay would be one more module here and one
more ``provider`` value in :class:`gateway.config.PaymentsConfig`."""

from __future__ import annotations

from datetime import timedelta

from gateway.config import PaymentsConfig
from gateway.services.base import Context
from gateway.services.payments import PaymentProvider, PaymentService, TopupRules


def topup_rules(config: PaymentsConfig) -> TopupRules:
    return TopupRules(
        min_amount=config.min_amount_fen,
        max_amount=config.max_amount_fen,
        max_daily=config.max_daily_fen,
        order_ttl=timedelta(seconds=config.order_ttl_s),
        query_after=timedelta(seconds=config.query_after_s),
    )


def open_provider(config: PaymentsConfig) -> PaymentProvider:
    """The adapter ``config.provider`` names, talking to the provider over HTTP."""
    from gateway.payments.sandbox import HttpTransport, SandboxProvider

    return SandboxProvider(
        HttpTransport(config.api_url),
        key=config.signing_key(),
        merchant_id=config.merchant_id,
        notify_url=config.notify_url,
    )


def payment_service(ctx: Context, config: PaymentsConfig) -> PaymentService:
    """What the web process calls for online top-up (see gateway/services/payments.py)."""
    return PaymentService(ctx, open_provider(config), topup_rules(config))
