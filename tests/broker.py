"""A private Mosquitto for tests: one real ``mosquitto`` process per broker, no mocks.

Facts it relies on (FIELD-NOTES "MQTT clients and Mosquitto 2.0.11"):

- The configuration comes from :mod:`gateway.mqtt.broker_files`, so tests run against exactly the
  files production uses: ``listener PORT 127.0.0.1`` first, ``use_username_as_clientid true``,
  ``set_tcp_nodelay true``, a ``$7$`` password file and the onecard ACL.
- The port is a free loopback port (never the machine's own mosquitto on 1883); if the broker
  loses the race for it, another port is picked (up to 3 attempts).
- Ready when its log says ``running`` and the port accepts a TCP connection; 10 s at most, then
  :class:`BrokerError` with the log tail.
- Started as root, mosquitto drops to user ``mosquitto`` before reading the password/ACL files,
  which a private ``tmp_path`` (mode 0700 parents) does not allow. So by default the conf says
  ``user root`` when we are root; ``drop_privileges=True`` keeps the production behaviour (then the
  directory and its parents must be traversable by ``mosquitto``; the files are chowned to it).
- ``persistence false`` by default; ``persistence=True`` keeps ``mosquitto.db`` in ``data/`` so a
  restart test can check what survives a SIGTERM (and what a SIGKILL loses).
- :meth:`PrivateBroker.reload` sends SIGHUP and waits until the log shows the reload; mosquitto is
  single-threaded, so the new password/ACL files apply to everything it does after that line.

This is a plain module: the integrator wires it into fixtures. Example::

    with PrivateBroker(tmp_path, users={"gateway": "gw", "pos-001": "p1"}) as broker:
        client.connect(broker.host, broker.port)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.mqtt.broker_files import (
    CONF_NAME,
    TlsListener,
    mosquitto_password_hash,
    render_mosquitto_conf,
    write_broker_files,
)

__all__ = ["BrokerError", "PrivateBroker", "Probe", "free_port"]

HOST = "127.0.0.1"
_READY_MARK = " running"
_RELOAD_MARK = "Reloading config"
_PORT_IN_USE = "Address already in use"


class BrokerError(RuntimeError):
    """The private broker did not start, stop or reload as expected."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _mosquitto_ids() -> tuple[int, int] | None:
    """(uid, gid) of user mosquitto when we are root and it exists."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise BrokerError("mosquitto is not installed (apt: mosquitto mosquitto-clients)")
    return found


class PrivateBroker:
    """One private mosquitto process with the onecard configuration.

    ``users`` maps usernames to *plain* passwords (hashed with :func:`mosquitto_password_hash`).
    Users named in ``gateway_users`` / ``monitor_users`` get the gateway / read-only ACL sections;
    every other user is a terminal, bound to ``onecard/v1/t/{username}/...`` by the ACL patterns.
    With ``users=None`` and ``anonymous=True`` the broker allows anonymous clients and has no
    password file, no ACL and keeps client ids as sent (for tests that are not about security).
    With ``users`` given, ``anonymous=True`` changes nothing useful: ``use_username_as_clientid``
    refuses clients without a username.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        users: dict[str, str] | None = None,
        gateway_users: Sequence[str] = ("gateway",),
        anonymous: bool = False,
        *,
        monitor_users: Sequence[str] = (),
        persistence: bool = False,
        drop_privileges: bool = False,
        tls: bool = False,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port()
        self._secured = users is not None or not anonymous
        self.users: dict[str, str] = dict(users or {})
        self.gateway_users = tuple(gateway_users)
        self.monitor_users = tuple(monitor_users)
        self.anonymous = anonymous
        self.persistence = persistence
        self.drop_privileges = drop_privileges
        self.data_dir = directory / "data"
        self.log_path = directory / "mosquitto.log"
        self.conf_path = directory / CONF_NAME
        self.proc: subprocess.Popen[bytes] | None = None
        self._hashes: dict[str, str] = {}
        self.tls_cert = directory / "tls-cert.pem"
        self.tls_key = directory / "tls-key.pem"
        self._tls_port: int | None = None
        if tls:
            self._make_certificate()
            self._tls_port = free_port()
        self.write_files()

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self._port}"

    @property
    def tls_port(self) -> int:
        """The second (TLS) listener, as the production conf has for terminals."""
        if self._tls_port is None:
            raise BrokerError("this broker has no TLS listener (PrivateBroker(tls=True))")
        return self._tls_port

    def _tls_listener(self) -> TlsListener | None:
        if self._tls_port is None:
            return None
        return TlsListener(
            port=self._tls_port, bind=HOST, certfile=self.tls_cert, keyfile=self.tls_key
        )

    def _make_certificate(self) -> None:
        """A throw-away self-signed certificate for 127.0.0.1 (openssl CLI)."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise BrokerError("openssl is needed for a TLS listener")
        argv = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        argv += ["-subj", "/CN=onecard-test", "-addext", f"subjectAltName=IP:{HOST}"]
        argv += ["-keyout", str(self.tls_key), "-out", str(self.tls_cert)]
        subprocess.run(
            argv,
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.tls_key.chmod(0o640)
        owner = _mosquitto_ids() if self.drop_privileges else None
        if owner is not None:
            for path in (self.tls_key, self.tls_cert):
                os.chown(path, *owner)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BrokerError("the broker is not running")
        return self.proc.pid

    def password(self, username: str) -> str:
        return self.users[username]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 5.0, *, after: int = 0) -> None:
        """Wait until ``text`` appears in the log (past character offset ``after``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text()[after:]:
                return
            time.sleep(0.01)
        raise BrokerError(f"{text!r} not in the mosquitto log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------ files

    def _run_as(self) -> str | None:
        if self.drop_privileges or os.geteuid() != 0:
            return None
        return "root"

    def write_files(self) -> None:
        """(Re)write conf, password file and ACL from the current settings and users."""
        if self.persistence:
            self.data_dir.mkdir(exist_ok=True)
            owner = _mosquitto_ids() if self.drop_privileges else None
            if owner is not None:
                os.chown(self.data_dir, *owner)
        if not self._secured:
            self.conf_path.write_text(
                render_mosquitto_conf(
                    port=self._port,
                    password_file=None,
                    acl_file=None,
                    allow_anonymous=True,
                    persistence=self.persistence,
                    persistence_dir=self.data_dir if self.persistence else None,
                    log_dest="stderr",
                    run_as=self._run_as(),
                    tls=self._tls_listener(),
                    username_as_clientid=False,  # it would refuse clients without username
                )
            )
            return
        for name, password in self.users.items():
            if name not in self._hashes:
                self._hashes[name] = mosquitto_password_hash(password)
        privileged = set(self.gateway_users) | set(self.monitor_users)
        entries = [(n, self._hashes[n]) for n in self.users if n in privileged]
        entries += sorted((n, self._hashes[n]) for n in self.users if n not in privileged)
        write_broker_files(
            self.directory,
            entries=entries,
            gateway_users=self.gateway_users,
            monitor_users=self.monitor_users,
            port=self._port,
            persistence=self.persistence,
            persistence_dir=self.data_dir if self.persistence else None,
            log_dest="stderr",
            run_as=self._run_as(),
            tls=self._tls_listener(),
            allow_anonymous=self.anonymous,  # anonymous clients connect but the ACL gives nothing
        )

    def add_user(self, username: str, password: str, *, reload: bool = True) -> None:
        self.users[username] = password
        self._hashes.pop(username, None)
        self.write_files()
        if reload and self.running:
            self.reload()

    def remove_user(self, username: str, *, reload: bool = True) -> None:
        del self.users[username]
        self._hashes.pop(username, None)
        self.write_files()
        if reload and self.running:
            self.reload()

    # ------------------------------------------------------------------ process

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        for _attempt in range(3):
            offset = len(self.log_text())
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [_mosquitto_binary(), "-c", str(self.conf_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.directory,
                )
            if self._wait_ready(offset, timeout):
                return
            fresh = self.log_text()[offset:]
            self._reap()
            if _PORT_IN_USE in fresh and not self._fixed_port:
                self._port = free_port()
                if self._tls_port is not None:
                    self._tls_port = free_port()
                self.write_files()
                continue
            break
        raise BrokerError(f"mosquitto did not start on port {self._port}:\n{self.log_tail()}")

    def _wait_ready(self, offset: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return False
            if _READY_MARK in self.log_text()[offset:]:
                with contextlib.suppress(OSError):
                    socket.create_connection((HOST, self._port), timeout=0.5).close()
                    return True
            time.sleep(0.01)
        return False

    def _reap(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout)
        self.proc = None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (mosquitto saves its persistence file) and wait; SIGKILL if it hangs."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: nothing is saved (acked QoS 1 messages since the last autosave are lost)."""
        self._reap()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def reload(self, timeout: float = 5.0) -> None:
        """SIGHUP, then wait until mosquitto logs that it re-read its configuration."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise BrokerError("cannot reload: the broker is not running")
        before = self.log_text().count(_RELOAD_MARK)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(_RELOAD_MARK) > before:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        raise BrokerError(f"mosquitto did not reload:\n{self.log_tail()}")

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Probe:
    """A real MQTT v5 client (paho, own network thread, TCP_NODELAY) that records what it sees.

    Every wait is bounded. ``connect`` returns the CONNACK reason code instead of raising, so
    tests can assert refusals; ``publish`` returns the PUBACK reason code (QoS 1).
    """

    def __init__(
        self,
        broker: PrivateBroker,
        username: str | None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: tuple[str, bytes] | None = None,
        tls: bool = False,
    ) -> None:
        self.broker = broker
        self.port = broker.tls_port if tls else broker.port
        self.username = username
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else (username or ""),
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set(ca_certs=str(broker.tls_cert))
        if will is not None:  # the contract's last will: retained, QoS 1
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        #: (reason code, whether the broker sent a DISCONNECT packet) per lost connection
        self.disconnects: queue.Queue[tuple[ReasonCode, bool]] = queue.Queue()
        self._connacks: queue.Queue[ReasonCode] = queue.Queue()
        self._acks: dict[int, list[ReasonCode]] = {}
        self._cond = threading.Condition()
        self.client.on_socket_open = self._on_socket_open
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_unsubscribe = self._on_subscribe

    # paho callbacks (network thread)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._connacks.put(reason)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        self.disconnects.put((reason, flags.is_disconnect_packet_from_server))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def _ack(self, mid: int, reasons: list[ReasonCode]) -> None:
        with self._cond:
            self._acks[mid] = reasons
            self._cond.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        self._ack(mid, list(reasons))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._ack(mid, [reason])

    def _wait_ack(self, mid: int, timeout: float) -> list[ReasonCode]:
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acks, timeout):
                raise TimeoutError(f"{self.username}: no acknowledgement for mid {mid}")
            return self._acks.pop(mid)

    # test API (test thread)

    def connect(self, timeout: float = 5.0) -> ReasonCode:
        """Connect and return the CONNACK reason code (``.is_failure`` when refused)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.session_expiry_s:
            props.SessionExpiryInterval = self.session_expiry_s
        self.client.connect(
            self.broker.host,
            self.port,
            keepalive=60,
            clean_start=self.clean_start,
            properties=props,
        )
        self.client.loop_start()
        try:
            reason = self._connacks.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise TimeoutError(f"{self.username}: no CONNACK within {timeout} s") from None
        if reason.is_failure:
            self.client.loop_stop()
        return reason

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[ReasonCode]:
        """Subscribe and return the SUBACK reason codes."""
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise RuntimeError(f"{self.username}: subscribe failed locally: {result}")
        return self._wait_ack(mid, timeout)

    def unsubscribe(self, topic: str, timeout: float = 5.0) -> list[ReasonCode]:
        """Unsubscribe and return the UNSUBACK reason codes."""
        result, mid = self.client.unsubscribe(topic)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise RuntimeError(f"{self.username}: unsubscribe failed locally: {result}")
        return self._wait_ack(mid, timeout)

    def publish(
        self, topic: str, payload: bytes | str, *, retain: bool = False, timeout: float = 5.0
    ) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self._wait_ack(info.mid, timeout)[0]

    def next_message(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.username}: no message within {timeout} s") from None

    def drain(self) -> list[mqtt.MQTTMessage]:
        """Everything received so far, without waiting."""
        out: list[mqtt.MQTTMessage] = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def wait_disconnect(self, timeout: float = 5.0) -> tuple[ReasonCode, bool] | None:
        try:
            return self.disconnects.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Probe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
