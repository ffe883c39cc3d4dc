"""Benchmarks for onecard: tap decisions against the broker floor, deny-list propagation, scale
and durability cost. Run ``python -m bench.run [--quick]``; results land in ``bench/results/``
and ``docs/benchmarks.md``. Performance is proven here, never by timed asserts in tests."""
