"""The files Mosquitto 2.0 reads for onecard: password file, ACL file and ``mosquitto.conf``.

The terminal registry (table ``terminals``) is the source of truth. Each terminal logs in to the
broker with its terminal id as username (and, through ``use_username_as_clientid true``, as client
id) and its own password, stored only as a Mosquitto ``$7$`` PBKDF2-SHA512 hash in
``terminals.mqtt_password_hash``. ``onecard broker render`` turns the registry into the three files
below; ``kill -HUP`` (``systemctl reload mosquitto``) makes the broker re-read the password and ACL
files. A disabled terminal is simply left out of the password file: after the reload its live
session is disconnected and new logins are refused (FIELD-NOTES, measured on 2.0.11); the gateway
also checks ``enabled`` on every request (``terminal_disabled``), so the refusal does not wait for
the reload.

Facts the renderers rely on (FIELD-NOTES "Mosquitto config pitfalls", all seen on 2.0.11):

- ``listener PORT ADDRESS`` must be the first option: listener options written before it silently
  open a default listener on 0.0.0.0:1883.
- ``%c`` in an ACL is spoofable; we bind terminals to ``%u`` and set
  ``use_username_as_clientid true`` so a terminal cannot take over another's session either.
  That option belongs to a listener: it is repeated under every ``listener`` line (a TLS listener
  without it let a client connect with any client id, seen on 2.0.11).
- ``pattern`` lines apply to *every* user, gateway accounts included, so a terminal may never be
  named like a gateway account (refused here).
- With an ACL file a denied subscription is still granted; the broker just never delivers.
  Messages on a shared subscription ``$share/{group}/{filter}`` are checked against the plain topic,
  so the gateway's ``read onecard/v1/t/+/req/#`` covers its shared subscription. Any client may
  join any share group, though, and a terminal in the gateways' group swallows its round-robin
  share of the requests: one gateway uses a plain subscription, several use a secret group name.
- Mosquitto drops to user ``mosquitto`` *before* reading the password and ACL files (also on
  SIGHUP): :func:`write_broker_files` chowns them to that user when run as root.

Everything here is stdlib only and does no network I/O; only :func:`write_broker_files` touches the
file system.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import pwd
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protocol.errors import Duplicate, InvalidInput
from protocol.wire.topics import ROOT, is_valid_terminal_id

__all__ = [
    "ACL_NAME",
    "CONF_NAME",
    "DEFAULT_ITERATIONS",
    "PASSWORD_NAME",
    "BrokerFiles",
    "TerminalAccount",
    "TlsListener",
    "is_valid_broker_username",
    "mosquitto_password_hash",
    "new_password",
    "password_entries",
    "render_acl",
    "render_mosquitto_conf",
    "render_password_file",
    "verify_mosquitto_password",
    "write_broker_files",
]

#: ``$7$`` = PBKDF2-HMAC-SHA512 with a 12-byte salt, as ``mosquitto_passwd`` 2.0 writes it, but
#: 10,000 iterations instead of its 101 (issue 8, item 13): 100 times the cost of guessing an
#: operator-chosen password from a leaked password file or registry backup. Mosquitto verifies
#: the hash on every CONNECT on its single thread: measured here (2.0.11, 2 cores) 5.3 ms of
#: broker CPU per connect, so 1,000 terminals reconnecting after a broker restart cost ~5 s of
#: broker time (101: 0.1 s; 20,000: 11 s). docs/security.md has the figures and the trade-off.
DEFAULT_ITERATIONS = 10_000
_SALT_BYTES = 12
_PBKDF2_TAG = "7"
_SHA512_TAG = "6"  # the older salted SHA-512 format, still accepted by mosquitto 2.0
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_HASH_RE = re.compile(rf"\$7\$[1-9][0-9]{{0,9}}\${_B64}\${_B64}|\$6\${_B64}\${_B64}")
#: Gateway/operator account names: like terminal ids but upper case and ``.`` allowed.
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

CONF_NAME = "mosquitto.conf"
PASSWORD_NAME = "passwd"
ACL_NAME = "acl"
_FILE_MODE = 0o640
_DIR_MODE = 0o750


# --------------------------------------------------------------------------- passwords


def mosquitto_password_hash(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """``$7${iterations}${salt_b64}${pbkdf2_sha512_b64}``, the format ``mosquitto_passwd`` writes.

    The derived key is the full 64-byte SHA-512 output; salt and key are standard base64 with
    padding, exactly as mosquitto 2.0 encodes them (checked against ``mosquitto_passwd -b`` and by
    logging in to a real broker in the tests).
    """
    if not password:
        raise InvalidInput("密码不能为空", "the broker password must not be empty")
    if not 1 <= iterations <= 9_999_999_999:
        raise InvalidInput("迭代次数无效", f"invalid PBKDF2 iteration count {iterations}")
    if salt is None:
        salt = secrets.token_bytes(_SALT_BYTES)
    elif not salt:
        raise InvalidInput("盐值不能为空", "the salt must not be empty")
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"${_PBKDF2_TAG}${iterations}${_b64(salt)}${_b64(key)}"


def verify_mosquitto_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` (PBKDF2) or ``$6$`` (salted SHA-512) hash."""
    if _HASH_RE.fullmatch(encoded) is None:
        return False
    parts = encoded.split("$")
    try:
        if parts[1] == _PBKDF2_TAG:
            iterations, salt, expected = int(parts[2]), _unb64(parts[3]), _unb64(parts[4])
            got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
        else:
            salt, expected = _unb64(parts[2]), _unb64(parts[3])
            got = hashlib.sha512(password.encode("utf-8") + salt).digest()
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


def new_password(nbytes: int = 24) -> str:
    """A fresh random broker password (URL-safe, no ``:`` or whitespace) for one account."""
    return secrets.token_urlsafe(nbytes)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def is_valid_broker_username(username: str) -> bool:
    """A name we are willing to write into the password and ACL files (no ``:``, space, ``/``)."""
    return _ACCOUNT_RE.fullmatch(username) is not None


def _check_account(username: str) -> str:
    if not is_valid_broker_username(username):
        raise InvalidInput("账号名无效", f"invalid broker username {username[:80]!r}")
    return username


# --------------------------------------------------------------------------- password file


class TerminalAccount(Protocol):
    """What the renderer needs from a ``terminals`` row (a SQLAlchemy row or a dataclass)."""

    @property
    def id(self) -> str: ...

    @property
    def enabled(self) -> bool: ...

    @property
    def mqtt_password_hash(self) -> str: ...


def password_entries(
    terminals: Iterable[TerminalAccount],
    gateway_accounts: Mapping[str, str] | Iterable[tuple[str, str]],
) -> list[tuple[str, str]]:
    """``(username, hash)`` lines for the password file: gateway accounts, then enabled terminals.

    Disabled terminals are left out, so the broker refuses them after the next reload. A terminal
    id that is not a valid terminal id, or that equals a gateway account name (ACL ``pattern``
    lines apply to every user), is refused.
    """
    gateways = list(
        gateway_accounts.items() if isinstance(gateway_accounts, Mapping) else gateway_accounts
    )
    gateway_names = {_check_account(name) for name, _ in gateways}
    rows: list[tuple[str, str]] = []
    for terminal in terminals:
        if not is_valid_terminal_id(terminal.id):
            raise InvalidInput("终端编号无效", f"invalid terminal id {terminal.id[:80]!r}")
        if terminal.id in gateway_names:
            raise Duplicate(
                "终端编号与网关账号重名", f"terminal id {terminal.id!r} equals a gateway account"
            )
        if terminal.enabled:
            rows.append((terminal.id, terminal.mqtt_password_hash))
    rows.sort()
    return gateways + rows


def render_password_file(entries: Iterable[tuple[str, str]]) -> str:
    """The mosquitto password file: one ``username:hash`` line per account, in the given order.

    Hashes must already be ``$7$``/``$6$`` hashes (plain text passwords are refused: mosquitto
    would treat them as a hash that never matches). No comment lines are written: the file is for
    the broker only. An empty file is valid (nobody can log in).
    """
    seen: set[str] = set()
    lines: list[str] = []
    for username, encoded in entries:
        _check_account(username)
        if username in seen:
            raise Duplicate("账号重复", f"broker account {username!r} listed twice")
        if _HASH_RE.fullmatch(encoded) is None:
            raise InvalidInput("密码散列格式错误", f"account {username!r}: not a mosquitto hash")
        seen.add(username)
        lines.append(f"{username}:{encoded}\n")
    return "".join(lines)


# --------------------------------------------------------------------------- ACL

#: Terminal permissions, bound to the authenticated username (= terminal id = client id).
TERMINAL_PATTERNS: tuple[tuple[str, str], ...] = (
    ("write", f"{ROOT}/t/%u/req/#"),
    ("read", f"{ROOT}/t/%u/resp/#"),
    ("readwrite", f"{ROOT}/t/%u/status"),
    ("read", f"{ROOT}/blacklist/#"),
    ("read", f"{ROOT}/gateway/status"),
)
#: Gateway permissions. Reading the deny-list topics back lets a restarted gateway see the
#: retained snapshot it published.
GATEWAY_TOPICS: tuple[tuple[str, str], ...] = (
    ("read", f"{ROOT}/t/+/req/#"),
    ("read", f"{ROOT}/t/+/status"),
    ("write", f"{ROOT}/t/+/resp/#"),
    ("readwrite", f"{ROOT}/gateway/#"),
    ("readwrite", f"{ROOT}/blacklist/#"),
)
#: Read-only operator accounts (``mosquitto_sub`` watching presence and the deny list). With
#: several gateways each instance also keeps its own retained status under ``gateway/instance/``.
MONITOR_TOPICS: tuple[tuple[str, str], ...] = (
    ("read", f"{ROOT}/t/+/status"),
    ("read", f"{ROOT}/gateway/status"),
    ("read", f"{ROOT}/gateway/instance/+/status"),
    ("read", f"{ROOT}/blacklist/#"),
)


def render_acl(gateway_users: Sequence[str], *, monitor_users: Sequence[str] = ()) -> str:
    """The mosquitto ACL file.

    No topic line precedes the first ``user`` line, so anonymous clients (if ever allowed) get
    nothing. Terminals need no ``user`` section: the ``pattern`` lines give each username its own
    ``onecard/v1/t/{username}/...`` subtree.
    """
    gateways = [_check_account(u) for u in gateway_users]
    monitors = [_check_account(u) for u in monitor_users]
    if not gateways:
        raise InvalidInput("至少需要一个网关账号", "at least one gateway account is needed")
    if len(set(gateways + monitors)) != len(gateways) + len(monitors):
        raise Duplicate("账号重复", "an account is listed twice")
    out = [
        "# onecard broker ACL (generated by `onecard broker render`; edits are overwritten).",
        "# Nothing before the first `user` line: anonymous clients get no topic at all.",
        "# A denied subscription is still granted by mosquitto 2.0; it just never delivers.",
        "",
        "# Terminals: username = terminal id = client id (use_username_as_clientid true).",
        "# `pattern` lines apply to every user, so no terminal may share a gateway account name.",
    ]
    out += [f"pattern {access} {topic}" for access, topic in TERMINAL_PATTERNS]
    for user in gateways:
        out += ["", f"# gateway instance {user}", f"user {user}"]
        out += [f"topic {access} {topic}" for access, topic in GATEWAY_TOPICS]
    for user in monitors:
        out += ["", f"# read-only operator account {user}", f"user {user}"]
        out += [f"topic {access} {topic}" for access, topic in MONITOR_TOPICS]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- mosquitto.conf


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A second listener for terminals on the campus network (the contract's TLS port 8883)."""

    port: int
    certfile: Path
    keyfile: Path
    bind: str | None = None
    cafile: Path | None = None
    tls_version: str = "tlsv1.2"


#: Options that belong to the listener written just before them, so every listener repeats them.
#: ``use_username_as_clientid`` is one (seen on 2.0.11: a second listener without it let a
#: client keep a client id other than its username).
_LISTENER_OPTIONS: tuple[str, ...] = (
    "# Per listener: the client id is replaced by the username, so a terminal cannot take over",
    "# another terminal's session with its client id (the ACL binds to %u, never %c).",
    "use_username_as_clientid true",
)


def _check_conf_value(name: str, value: str) -> str:
    if not value or any(c in value for c in "\n\r\0"):
        raise InvalidInput("配置值无效", f"invalid value for {name}: {value[:80]!r}")
    return value


#: Broker-wide packet ceiling: room for a deny-list snapshot of ~1 M cards (1.7 bytes a card).
MAX_PACKET_SIZE = 8 * 1024 * 1024


def _check_packet_size(size: int) -> int:
    if not 20_000 <= size <= 268_435_455:
        raise InvalidInput("报文上限无效", f"invalid max_packet_size {size}")
    return size


def _check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise InvalidInput("端口无效", f"invalid port {port}")
    return port


def render_mosquitto_conf(
    *,
    port: int,
    bind: str = "127.0.0.1",
    password_file: Path | None,
    acl_file: Path | None,
    persistence: bool,
    persistence_dir: Path | None = None,
    autosave_interval_s: int = 60,
    log_dest: str | Path = "syslog",
    allow_anonymous: bool = False,
    run_as: str | None = None,
    tls: TlsListener | None = None,
    max_inflight_messages: int = 1000,
    max_queued_messages: int = 10000,
    username_as_clientid: bool = True,
    max_packet_size: int = MAX_PACKET_SIZE,
) -> str:
    """``mosquitto.conf`` with ``listener PORT BIND`` as its first option line.

    ``log_dest`` is a Path (``log_dest file PATH``) or one of mosquitto's words (``syslog``,
    ``stderr``, ``stdout``, ``topic``, ``none``). ``run_as`` writes a ``user`` line (``root`` keeps
    a root-started broker from dropping privileges; tests use it for files under a private temp
    dir). ``allow_anonymous`` without a password file is only for throw-away test brokers; they
    also need ``username_as_clientid=False``, since that option refuses clients without username.
    """
    listener_options = _LISTENER_OPTIONS if username_as_clientid else ()
    _check_port(port)
    _check_conf_value("bind", bind)
    if not allow_anonymous and password_file is None:
        raise InvalidInput("缺少密码文件", "a password file is needed unless anonymous is allowed")
    if persistence and persistence_dir is None:
        raise InvalidInput("缺少持久化目录", "persistence needs persistence_dir")
    out = [
        "# onecard mosquitto configuration (generated by `onecard broker render`).",
        "# The listener line comes first: listener options written before any `listener` line",
        "# silently open a default listener on 0.0.0.0:1883.",
        f"listener {port} {bind}",
        *listener_options,
        "",
        "# Authentication: every client has its own account; no anonymous access.",
        f"allow_anonymous {'true' if allow_anonymous else 'false'}",
    ]
    if password_file is not None:
        out.append(f"password_file {_check_conf_value('password_file', str(password_file))}")
    if acl_file is not None:
        out.append(f"acl_file {_check_conf_value('acl_file', str(acl_file))}")
    out += [
        "",
        "# Latency: without TCP_NODELAY a request/reply round trip costs ~44 ms (Nagle).",
        "set_tcp_nodelay true",
        "# Receive-maximum announced to MQTT v5 clients; 20 (the default) stalls busy gateways.",
        f"max_inflight_messages {max_inflight_messages}",
        f"max_queued_messages {max_queued_messages}",
        "# No client may send a packet bigger than this: the broker disconnects it after reading",
        "# the fixed header, before the body (the default is 256 MiB). It leaves room for the",
        "# gateway's deny-list snapshot; requests are at most 16 KiB, and the gateway refuses a",
        "# bigger one after reading it in linear time.",
        f"max_packet_size {_check_packet_size(max_packet_size)}",
        "",
    ]
    if persistence:
        assert persistence_dir is not None
        location = _check_conf_value("persistence_dir", str(persistence_dir)).rstrip("/") + "/"
        out += [
            "# Sessions and queued QoS 1 messages survive a clean restart (SIGTERM). A SIGKILL",
            "# loses what changed since the last autosave: a PUBACK is not durability.",
            "persistence true",
            f"persistence_location {location}",
            f"autosave_interval {autosave_interval_s}",
        ]
    else:
        out.append("persistence false")
    out.append("")
    if isinstance(log_dest, Path):
        out.append(f"log_dest file {_check_conf_value('log_dest', str(log_dest))}")
    else:
        out.append(f"log_dest {_check_conf_value('log_dest', log_dest)}")
    out += ["log_type error", "log_type warning", "log_type notice", "log_type information"]
    out.append("connection_messages true")
    if run_as is not None:
        out += ["", f"user {_check_account(run_as)}"]
    if tls is not None:
        out += [
            "",
            "# Terminals on the campus network: MQTT over TLS (terminal contract §1).",
            f"listener {_check_port(tls.port)}"
            + (f" {_check_conf_value('tls.bind', tls.bind)}" if tls.bind else ""),
            *listener_options,
            f"certfile {_check_conf_value('certfile', str(tls.certfile))}",
            f"keyfile {_check_conf_value('keyfile', str(tls.keyfile))}",
        ]
        if tls.cafile is not None:
            out.append(f"cafile {_check_conf_value('cafile', str(tls.cafile))}")
        out.append(f"tls_version {_check_conf_value('tls_version', tls.tls_version)}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    conf: Path
    password_file: Path
    acl_file: Path


def _owner_ids(owner: str | None) -> tuple[int, int] | None:
    """(uid, gid) to chown to: only when we are root and the user exists."""
    if owner is None or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _write_atomic(path: Path, text: str, ids: tuple[int, int] | None) -> None:
    """Write next to ``path`` then rename: a SIGHUP never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), _FILE_MODE)
            if ids is not None:
                os.fchown(fh.fileno(), *ids)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_broker_files(
    directory: Path,
    *,
    entries: Iterable[tuple[str, str]],
    gateway_users: Sequence[str],
    monitor_users: Sequence[str] = (),
    port: int = 1883,
    bind: str = "127.0.0.1",
    persistence: bool = True,
    persistence_dir: Path | None = Path("/var/lib/mosquitto"),
    log_dest: str | Path = "syslog",
    run_as: str | None = None,
    tls: TlsListener | None = None,
    owner: str | None = "mosquitto",
    allow_anonymous: bool = False,
) -> BrokerFiles:
    """Write ``mosquitto.conf``, ``passwd`` and ``acl`` into ``directory`` (mode 0640).

    ``entries`` are ``(username, hash)`` pairs, e.g. from :func:`password_entries`. When running
    as root and user ``owner`` exists, the files are chowned to it (and a directory we create
    becomes ``root:{owner's group}`` 0750): mosquitto reads the password and ACL files after
    dropping privileges, also on SIGHUP. Every file is replaced atomically; send SIGHUP
    afterwards to apply the password and ACL files.
    """
    ids = _owner_ids(owner)
    if not directory.exists():
        directory.mkdir(parents=True, mode=_DIR_MODE)
        if ids is not None:
            os.chown(directory, 0, ids[1])
    files = BrokerFiles(
        conf=directory / CONF_NAME,
        password_file=directory / PASSWORD_NAME,
        acl_file=directory / ACL_NAME,
    )
    password_text = render_password_file(entries)
    acl_text = render_acl(gateway_users, monitor_users=monitor_users)
    conf_text = render_mosquitto_conf(
        port=port,
        bind=bind,
        password_file=files.password_file.resolve(),
        acl_file=files.acl_file.resolve(),
        persistence=persistence,
        persistence_dir=persistence_dir if persistence else None,
        log_dest=log_dest,
        run_as=run_as,
        tls=tls,
        allow_anonymous=allow_anonymous,
    )
    _write_atomic(files.password_file, password_text, ids)
    _write_atomic(files.acl_file, acl_text, ids)
    _write_atomic(files.conf, conf_text, ids)
    return files
