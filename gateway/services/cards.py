"""The counter's card procedures: issue, loss, unlock, replace, exchange, extend, refund,
terminate, graduate, scrap (ISS, LOSS, REP, EXC, REF, TERM, SCR).

:class:`CardService` joins the procedure families, one module each, as the rule chapters are
(ARCHITECTURE.md §10): issuing and hand-over (:mod:`gateway.services.cards_issue`), loss and
replacement (:mod:`gateway.services.cards_loss`), exchange (:mod:`gateway.services.cards_exchange`),
validity, refund, termination, graduation and scrapping (:mod:`gateway.services.cards_end`).
"""

from __future__ import annotations

from gateway.services.cards_base import CardResult, GraduationReport, RefundSlip
from gateway.services.cards_end import EndProcedures
from gateway.services.cards_exchange import ExchangeProcedures
from gateway.services.cards_issue import IssueProcedures
from gateway.services.cards_loss import LossProcedures


class CardService(IssueProcedures, LossProcedures, ExchangeProcedures, EndProcedures):
    """Every card procedure of the counter (and of the kiosk and web where the rules allow)."""


__all__ = ["CardResult", "CardService", "GraduationReport", "RefundSlip"]
