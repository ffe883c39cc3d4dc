"""What a gateway run needs to know about the site under test: test terminals and test cards.

A site file (JSON)::

    {"terminals": {"pos":   {"id": "conf-pos",   "password": "..."},
                   "kiosk": {"id": "conf-kiosk", "password": "..."},
                   "door":  {"id": "conf-door",  "password": "..."},
                   "water": {"id": "conf-water", "password": "..."}},
     "cards": [{"uid": "04A1B2C3D4E5F6", "number": "2026000002", "password": "034316"}, ...]}

``cards[0]`` pays (it needs a few yuan of balance), ``cards[1]`` is reported lost through the
kiosk (a destructive step: give a card you can unlock at the counter afterwards). Terminals must be
provisioned for the kit only (contract §2.2): the kit connects under their ids and would take over
a live terminal's session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.wire import TerminalKind

__all__ = ["Card", "Site", "SiteError", "TerminalCreds"]


class SiteError(ValueError):
    """The site file is unusable (said in words, exit status 2)."""


@dataclass(frozen=True, slots=True)
class TerminalCreds:
    id: str
    kind: TerminalKind
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Card:
    uid: str
    number: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Site:
    terminals: dict[TerminalKind, TerminalCreds]
    cards: list[Card]

    @classmethod
    def from_dict(cls, raw: Any) -> Site:
        try:
            terminals = {
                TerminalKind(kind): TerminalCreds(
                    str(t["id"]), TerminalKind(kind), str(t["password"])
                )
                for kind, t in dict(raw["terminals"]).items()
            }
            cards = [
                Card(
                    str(c["uid"]),
                    None if c.get("number") is None else str(c["number"]),
                    None if c.get("password") is None else str(c["password"]),
                )
                for c in raw["cards"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise SiteError(f"site file: {exc!r}") from None
        if not cards:
            raise SiteError("site file: at least one card is needed")
        return cls(terminals, cards)

    @classmethod
    def load(cls, path: Path) -> Site:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SiteError(f"cannot read {path}: {exc}") from None
        return cls.from_dict(raw)
