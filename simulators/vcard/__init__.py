"""The project's virtual campus card for the real PC/SC stack (pcscd + vsmartcard vpcd).

- :mod:`simulators.vcard.card`: a pure ISO 7816-4 card model (UID, campus application, EF 0001);
- :mod:`simulators.vcard.vpcd`: the client of vpcd's socket protocol (insert = connect);
- ``python -m simulators.vcard --port 35963 --uid 04A1B2C3D4 --serial 2024000001 ...``: run one.
"""

from __future__ import annotations

from simulators.vcard.card import DEFAULT_ATR, VirtualCard, build_contactless_atr
from simulators.vcard.vpcd import VpcdCard

__all__ = ["DEFAULT_ATR", "VirtualCard", "VpcdCard", "build_contactless_atr"]
