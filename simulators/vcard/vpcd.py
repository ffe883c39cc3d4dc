"""Connect a :class:`~simulators.vcard.card.VirtualCard` to pcscd's vpcd driver (vsmartcard).

vpcd runs in server mode: it listens on one TCP port per virtual reader (35963 for "Virtual PCD
00 00", 35964 for "... 00 01" with the Debian ``/etc/reader.conf.d/vpcd``) and the card connects.
The card is *present* while its connection is open: :meth:`VpcdCard.insert` connects,
:meth:`VpcdCard.remove` closes. pcscd notices within its 400 ms polling period.

Framing, both ways: a 2-byte big-endian length and the payload. A 1-byte payload from the reader
is a control message (``00`` power off, ``01`` power on, ``02`` reset: no answer; ``04``: answer
with the ATR); a longer one is a C-APDU, answered with the R-APDU.

Latency (FIELD-NOTES "PC/SC with a virtual card"): vpcd sends without TCP_NODELAY, so the card
re-arms ``TCP_QUICKACK`` after every ``recv`` (it is a one-shot flag on Linux); otherwise each
APDU waits ~43 ms for the delayed ACK. We also set ``TCP_NODELAY`` on our side.

The socket is served by one daemon thread per inserted card, so tests can call blocking pyscard
from the main thread. :meth:`VpcdCard.stall` makes the card swallow C-APDUs without answering
(a stalled card, to exercise the gateway's watchdog) until :meth:`VpcdCard.resume` or removal.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from types import TracebackType

from protocol.cardfile.layout import CampusRecord
from simulators.vcard.card import VirtualCard

log = logging.getLogger("onecard.simulators.vcard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963

CTRL_POWER_OFF = 0x00
CTRL_POWER_ON = 0x01
CTRL_RESET = 0x02
CTRL_GET_ATR = 0x04

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class VpcdCard:
    """One virtual card that can be inserted into (connected to) a vpcd reader slot."""

    def __init__(
        self,
        card: VirtualCard,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        connect_timeout: float = 5.0,
    ) -> None:
        self.card = card
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        #: Held while the card model is read or changed; take it to inspect ``card`` safely.
        self.lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._answering = threading.Event()
        self._answering.set()
        self._disconnected = threading.Event()
        self._disconnected.set()
        self.apdus_stalled = 0

    # -- insertion -----------------------------------------------------------------------------
    @property
    def inserted(self) -> bool:
        """True while the connection to vpcd is open."""
        return not self._disconnected.is_set()

    def insert(self) -> None:
        """Connect to vpcd, retrying while the port refuses (pcscd still starting)."""
        if self.inserted:
            raise RuntimeError("card already inserted")
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._quickack(sock)
        self._sock = sock
        self._closing.clear()
        self._disconnected.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name=f"vcard-{self.port}", daemon=True
        )
        self._thread.start()
        log.info("virtual card inserted into vpcd port %d", self.port)

    def remove(self) -> None:
        """Close the connection: pcscd sees the card removed at its next poll."""
        self._closing.set()
        self._answering.set()  # wake a stalled APDU so the thread can exit
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._sock = None
        self._answering.set()
        log.info("virtual card removed from vpcd port %d", self.port)

    def wait_disconnected(self, timeout: float) -> bool:
        """Wait until the connection is gone (removed, or pcscd went away)."""
        return self._disconnected.wait(timeout)

    def __enter__(self) -> VpcdCard:
        self.insert()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    # -- faults --------------------------------------------------------------------------------
    def stall(self) -> None:
        """From now on, receive C-APDUs but do not answer them (until resume or removal)."""
        self._answering.clear()

    def resume(self) -> None:
        self._answering.set()

    # -- inspection ------------------------------------------------------------------------------
    def record(self) -> CampusRecord:
        """The campus record the card holds now (thread-safe)."""
        with self.lock:
            return self.card.record

    # -- the socket loop -----------------------------------------------------------------------
    @staticmethod
    def _quickack(sock: socket.socket) -> None:
        if _TCP_QUICKACK is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def _recv_exactly(self, sock: socket.socket, size: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < size:
            chunk = sock.recv(size - len(buf))
            self._quickack(sock)
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                header = self._recv_exactly(sock, 2)
                if header is None:
                    break
                payload = self._recv_exactly(sock, int.from_bytes(header, "big"))
                if payload is None:
                    break
                reply = self._dispatch(payload)
                if reply is not None:
                    sock.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError as exc:
            if not self._closing.is_set():
                log.warning("vpcd connection on port %d failed: %s", self.port, exc)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            self._disconnected.set()
            if not self._closing.is_set():
                log.info("vpcd closed the connection on port %d", self.port)

    def _dispatch(self, payload: bytes) -> bytes | None:
        if len(payload) == 1:
            control = payload[0]
            with self.lock:
                if control == CTRL_POWER_OFF:
                    self.card.power_off()
                elif control == CTRL_POWER_ON:
                    self.card.power_on()
                elif control == CTRL_RESET:
                    self.card.reset()
                elif control == CTRL_GET_ATR:
                    return self.card.atr
                else:
                    log.warning("unknown vpcd control byte %02X", control)
            return None
        if not self._answering.is_set():
            self.apdus_stalled += 1
            self._answering.wait()
            if self._closing.is_set():
                return None
        with self.lock:
            return self.card.process(payload)
