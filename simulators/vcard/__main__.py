"""Run one virtual campus card against a vpcd reader until Ctrl-C.

Example::

    python -m simulators.vcard --port 35963 --uid 04A1B2C3D4E5F6 --serial 2024000001 \\
        --holder 20240001 --kind smart --type-group 0

The card stays inserted until interrupted; with ``--reinsert`` it reconnects when pcscd drops the
connection (a pcscd restart). On exit it prints the record as the card holds it, so a MEAL-3
write-back made by the gateway can be checked by eye.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from protocol.cardfile.layout import CampusRecord, CardFileError, mask
from protocol.types import CardKind
from simulators.vcard.card import VirtualCard
from simulators.vcard.vpcd import DEFAULT_HOST, DEFAULT_PORT, VpcdCard


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulators.vcard", description=__doc__)
    p.add_argument("--host", default=DEFAULT_HOST, help="vpcd host (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="vpcd port (default 35963)")
    p.add_argument("--uid", required=True, help="card UID in hex, 4/7/10 bytes")
    p.add_argument("--serial", required=True, help="card serial, 10 digits")
    p.add_argument("--holder", default="20240001", help="holder number (学号/工号)")
    p.add_argument("--kind", choices=[k.value for k in CardKind], default=CardKind.SMART.value)
    p.add_argument("--type-group", type=int, default=0, help="type group byte (1 = 电子工作证)")
    p.add_argument("--valid-until", default=None, help="YYYY-MM-DD (temporary cards)")
    p.add_argument("--reinsert", action="store_true", help="reconnect when vpcd drops us")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        uid = bytes.fromhex(args.uid)
        valid_until = dt.date.fromisoformat(args.valid_until) if args.valid_until else None
        record = CampusRecord(
            serial=args.serial,
            holder_number=args.holder,
            kind=CardKind(args.kind),
            type_group=args.type_group,
            valid_until=valid_until,
        )
        card = VirtualCard(uid, record)
    except (ValueError, CardFileError) as exc:
        print(f"参数错误 / invalid argument: {exc}", file=sys.stderr)
        return 2
    link = VpcdCard(card, host=args.host, port=args.port, connect_timeout=30.0)
    signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly under a supervisor or `kill`
    try:
        link.insert()
        print(f"卡片已插入 / card inserted: uid={uid.hex().upper()} serial={mask(record.serial)}")
        while True:
            if link.wait_disconnected(0.5):
                if not args.reinsert:
                    print("读卡器已断开 / reader closed the connection")
                    break
                link.insert()
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"无法连接读卡器 / cannot reach vpcd: {exc}", file=sys.stderr)
        return 1
    finally:
        link.remove()
        print(f"卡片已移除 / card removed: {link.record()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
