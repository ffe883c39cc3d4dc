"""Payment provider adapters behind :class:`gateway.services.payments.PaymentProvider`
(online top-up, TOP-1): the sandbox (``sandbox``, ``sandbox_app``); WeChat Pay or Alipay would
be one more module here."""
