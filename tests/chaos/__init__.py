"""The chaos suite of issue 8: faults injected into a real site, invariants checked after each.

A site is the product as it runs: a private Mosquitto (:class:`tests.broker.PrivateBroker`, the
production configuration), ``onecard serve`` as its own process on a seeded SQLite registry, and
simulated terminals (:mod:`simulators.terminals`) speaking the contract from this process.

- :mod:`tests.chaos.site` builds and drives the site (gateway process, load, status watcher);
- :mod:`tests.chaos.faults` injects faults (network namespace + nftables partition, a full
  tmpfs under the registry, a write lock held by another process, a flooding terminal);
- :mod:`tests.chaos.invariants` checks what must hold after every scenario;
- :mod:`tests.chaos.scenarios` runs the seven scenarios at a given size;
- ``python -m tests.chaos`` (``make chaos``) runs them all at full size, prints the table and
  writes ``docs/reliability.md``; ``tests/chaos/test_chaos.py`` runs each one small.
"""
