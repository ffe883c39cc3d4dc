"""Use cases of the card center. Services see the registry only through :mod:`storage.ports`,
get time from an injected :class:`~gateway.services.base.Clock` and never touch MQTT, metrics or a
concrete backend (ARCHITECTURE.md §2 rule 4)."""
