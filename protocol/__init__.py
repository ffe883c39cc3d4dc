"""The pure core of onecard: terminal contract, card lifecycle and ledger rules.

Nothing in this package performs I/O, reads a clock or imports an I/O library; every rule with
a duration takes ``now`` as an argument (ARCHITECTURE.md §1, §6).
"""
