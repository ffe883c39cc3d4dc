"""National IDs at rest: AES-256-GCM, a keyed hash for lookups, the masked form (issue 15).

A holder's identity document number (``holders.national_id`` before migration 0010) is stored as

- ``national_id_enc``: ``pii1:<kid>:<base64(nonce ‖ ciphertext ‖ tag)>`` — AES-256-GCM under the
  current encryption key ``kid`` (an authenticated cipher: a changed byte fails, never decrypts to
  another number); the column name is bound in as associated data;
- ``national_id_hmac``: HMAC-SHA256 of the normalised number under a separate lookup key, for
  exact lookup and duplicate checks without decrypting (an equality index, not a LIKE);
- ``national_id_masked``: ``1101**********002X`` for display where the full number is not needed.

Keys live outside the database: a key file (``ONECARD_PII_KEY_FILE``, mode 0600/0640) or the
environment (``ONECARD_PII_KEY``), never a table. A key file holds one ``hmac`` line and one or more
``enc`` lines, newest (current) first; ``kid`` is a fingerprint of the key, so a ciphertext names
the key it needs and a wrong key is refused, never silently used. Without either setting a SQLite
registry gets ``<registry>.key`` beside it (created 0600 on first use) and a PostgreSQL registry
``<host>-<port>-<db>.key`` in ``ONECARD_PII_KEY_DIR`` (default ``~/.config/onecard/pii-keys``);
docs/privacy.md says where production keys belong and how rotation works.

The lookup key never rotates with the encryption keys (every lookup hash would change at once);
an HMAC without the key reveals nothing, and the registry remembers a check value of its lookup
key (``pii_meta``) so a gateway started with another key file refuses instead of writing rows
nobody can find.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.cards.identity import mask_id_doc
from protocol.errors import ErrorCode, OnecardError

PREFIX = "pii1"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE_MODE = 0o600
ENV_KEY = "ONECARD_PII_KEY"
ENV_KEY_FILE = "ONECARD_PII_KEY_FILE"
#: where the default key files of PostgreSQL registries go (tests point it at a temp directory)
ENV_KEY_DIR = "ONECARD_PII_KEY_DIR"
#: associated data: a ciphertext copied into another column or table does not decrypt there
AAD_NATIONAL_ID = b"onecard:holders.national_id"
AAD_EXPORT = b"onecard:holder-archive-file"
_CHECK_MESSAGE = b"onecard:pii-lookup-key-check"
_LINE = re.compile(r"^(hmac|enc)\s+([A-Za-z0-9+/=_-]+)\s*$")

#: every encryption key this process has loaded, by key id: a holder row read on the tap path
#: (records.Holder.from_row) names its key id and finds the key here
_KNOWN: dict[str, bytes] = {}
#: key files this process has read: re-read once when a value names a key not loaded yet (another
#: process rotated the key since this one started)
_SOURCES: set[Path] = set()


class PiiKeyError(OnecardError):
    """A key is missing, malformed or does not match the registry (never shows key material)."""

    def __init__(self, message_zh: str, message_en: str) -> None:
        super().__init__(message_zh, message_en, code=ErrorCode.UNAVAILABLE)


def key_id(key: bytes) -> str:
    """The public fingerprint of an encryption key (8 hex digits; reveals nothing of it)."""
    return hashlib.sha256(b"onecard-pii-kid:" + key).hexdigest()[:8]


def normalise(number: str) -> str:
    """The form a number is hashed and stored in: trimmed, upper case (``x`` check digits)."""
    return number.strip().upper()


@dataclass(frozen=True, slots=True)
class Keyring:
    """The lookup key and the encryption keys, current first."""

    hmac_key: bytes
    enc_keys: tuple[bytes, ...]
    source: str = "?"

    def __post_init__(self) -> None:
        if len(self.hmac_key) < KEY_BYTES or not self.enc_keys:
            raise PiiKeyError("个人信息密钥不完整", f"personal-data key incomplete ({self.source})")
        for key in self.enc_keys:
            if len(key) != KEY_BYTES:
                raise PiiKeyError("加密密钥须为 32 字节", "encryption keys must be 32 bytes")
            if key == self.hmac_key:
                raise PiiKeyError(
                    "查询密钥与加密密钥不得相同", "the lookup key must differ from encryption keys"
                )
            _KNOWN[key_id(key)] = key

    @property
    def current_kid(self) -> str:
        return key_id(self.enc_keys[0])

    @property
    def kids(self) -> list[str]:
        return [key_id(k) for k in self.enc_keys]

    def lookup(self, number: str) -> str:
        """HMAC-SHA256 (hex) of the normalised number: equal numbers, equal values."""
        return hmac.new(self.hmac_key, normalise(number).encode(), hashlib.sha256).hexdigest()

    def check_value(self) -> str:
        """What the registry remembers of its lookup key (``pii_meta``)."""
        return hmac.new(self.hmac_key, _CHECK_MESSAGE, hashlib.sha256).hexdigest()

    def seal(self, number: str, aad: bytes = AAD_NATIONAL_ID) -> str:
        return seal_bytes(self.enc_keys[0], normalise(number).encode(), aad)

    def columns(self, number: str | None) -> dict[str, Any]:
        """The stored columns for a national ID (all ``None`` for no number)."""
        if number is None or not number.strip():
            return {
                "national_id": None,
                "national_id_enc": None,
                "national_id_hmac": None,
                "national_id_masked": None,
            }
        return {
            "national_id": None,
            "national_id_enc": self.seal(number),
            "national_id_hmac": self.lookup(number),
            "national_id_masked": mask_id_doc(normalise(number)),
        }

    def to_text(self) -> str:
        lines = [
            "# onecard personal-data keys (docs/privacy.md). Keep outside the registry, mode 0600.",
            "# hmac: the lookup key (never rotated); enc: encryption keys, the current one first.",
            f"hmac {_b64(self.hmac_key)}",
        ]
        lines += [f"enc {_b64(k)}" for k in self.enc_keys]
        return "\n".join(lines) + "\n"


def new_keyring(source: str = "new") -> Keyring:
    return Keyring(secrets.token_bytes(KEY_BYTES), (secrets.token_bytes(KEY_BYTES),), source)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def seal_bytes(key: bytes, plain: bytes, aad: bytes) -> str:
    nonce = secrets.token_bytes(NONCE_BYTES)
    body = AESGCM(key).encrypt(nonce, plain, aad)
    return f"{PREFIX}:{key_id(key)}:{base64.b64encode(nonce + body).decode()}"


def sealed_kid(token: str) -> str | None:
    parts = token.split(":", 2)
    return parts[1] if len(parts) == 3 and parts[0] == PREFIX else None


def open_bytes(token: str, aad: bytes, keys: Mapping[str, bytes] | None = None) -> bytes:
    """Decrypt a ``pii1:`` token with the key it names (from ``keys`` or every key loaded)."""
    kid = sealed_kid(token)
    if kid is None:
        raise PiiKeyError("密文格式无效", "not a sealed value")
    if keys is None and kid not in _KNOWN:
        _reload()
    key = (keys or _KNOWN).get(kid)
    if key is None:
        raise PiiKeyError(
            f"缺少解密密钥 {kid}（密钥文件不对或已删除）",
            f"no key {kid} loaded to decrypt personal data (wrong or pruned key file)",
        )
    raw = base64.b64decode(token.split(":", 2)[2])
    try:
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
    except InvalidTag:
        raise PiiKeyError(
            "密文校验失败（数据被改动）", "sealed value fails authentication"
        ) from None


def open_id(token: str) -> str:
    return open_bytes(token, AAD_NATIONAL_ID).decode()


def holder_row(row: dict[str, Any]) -> dict[str, Any]:
    """A holders row with ``national_id`` decrypted in place (the stored columns stay)."""
    token = row.get("national_id_enc")
    if token and row.get("national_id") is None:
        row["national_id"] = open_id(token)
    return row


# --- key files and the environment ---------------------------------------------------------------
def parse(text: str, source: str) -> Keyring:
    """``hmac <b64>`` and ``enc <b64>`` lines (``#`` comments), or the same joined by ``,``/``;``
    with ``:`` instead of a space (the environment form ``hmac:…,enc:…``)."""
    hmac_key: bytes | None = None
    enc: list[bytes] = []
    entries = (
        part
        for line in text.splitlines()
        if not line.lstrip().startswith("#")
        for part in re.split(r"[,;]", line)
    )
    for raw in entries:
        line = raw.strip().replace(":", " ", 1)
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise PiiKeyError(f"密钥格式无效：{source}", f"malformed personal-data key in {source}")
        try:
            value = base64.b64decode(m.group(2).replace("-", "+").replace("_", "/"), validate=True)
        except ValueError:
            raise PiiKeyError(
                f"密钥不是 base64：{source}", f"key is not base64 in {source}"
            ) from None
        if m.group(1) == "hmac":
            if hmac_key is not None:
                raise PiiKeyError("只能有一个查询密钥", f"more than one hmac key in {source}")
            hmac_key = value
        else:
            enc.append(value)
    if hmac_key is None:
        raise PiiKeyError(f"缺少查询密钥：{source}", f"no hmac line in {source}")
    return Keyring(hmac_key, tuple(enc), source)


def write_key_file(path: Path, keyring: Keyring) -> None:
    """Replace the key file atomically, mode 0600 whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".key-", dir=path.parent)
    try:
        os.fchmod(fd, KEY_FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(keyring.to_text())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_key_file(path: Path) -> Keyring:
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PiiKeyError(
            f"无法读取个人信息密钥文件 {path}（新建：onecard privacy init-key {path}）",
            f"cannot read personal-data key file {path} ({exc.strerror}); a new registry's key is"
            f" made with `onecard privacy init-key {path}`",
        ) from None
    if mode & 0o027:
        raise PiiKeyError(
            f"密钥文件 {path} 权限过宽 ({mode:04o})，请 chmod 600",
            f"key file {path} is accessible to others (mode {mode:04o}): chmod 600 (or 640)",
        )
    keyring = parse(text, str(path))
    _SOURCES.add(path)
    return keyring


def _reload() -> None:
    for path in list(_SOURCES):
        try:
            read_key_file(path)  # registers its keys
        except PiiKeyError:
            continue


def default_key_path(url: str) -> Path:
    """Where a registry's key lives when nothing is configured (see the module docstring)."""
    if url.startswith("sqlite"):
        registry = Path(url.split(":///", 1)[1].split("?", 1)[0]).expanduser()
        return registry.with_name(registry.name + ".key")
    tail = url.split("://", 1)[-1].split("@", 1)[-1].split("?", 1)[0]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", tail.replace(":", "-").replace("/", "-"))
    configured = os.environ.get(ENV_KEY_DIR)
    if configured:
        return Path(configured).expanduser() / f"{name}.key"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "onecard" / "pii-keys" / f"{name}.key"


def key_path(url: str) -> Path:
    configured = os.environ.get(ENV_KEY_FILE)
    return Path(configured).expanduser() if configured else default_key_path(url)


def load_keyring(url: str, *, create: bool = True) -> Keyring:
    """The keyring for the registry at ``url``: environment, configured file, default file
    (created with fresh keys when ``create`` and it does not exist yet)."""
    inline = os.environ.get(ENV_KEY)
    if inline:
        return parse(inline, ENV_KEY)
    path = key_path(url)
    if create and not path.exists() and not os.environ.get(ENV_KEY_FILE):
        write_key_file(path, new_keyring(str(path)))
    return read_key_file(path)


def kid_counts(tokens: Iterable[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for token in tokens:
        kid = sealed_kid(token) if token else None
        if kid:
            out[kid] = out.get(kid, 0) + 1
    return out
