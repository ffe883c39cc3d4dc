"""Card readers attached to the gateway host (counter desks, card-center workstations).

:mod:`gateway.readers.pcsc` is the only module that imports pyscard (ARCHITECTURE.md §2 rule 5);
import it explicitly, so the gateway runs without pyscard where no reader is attached.
"""
