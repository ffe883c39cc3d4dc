"""The onecard broker files on a real private Mosquitto 2.0: who may read and write what.

Every absence check is made deterministic with a sentinel: after the forbidden action, an allowed
message is sent to the same subscriber; mosquitto delivers to one client in the order it accepted
the publishes, so once the sentinel arrives anything forbidden would already be there.
Observed on mosquitto 2.0.11 (FIELD-NOTES): a subscription the ACL forbids is still granted
(SUBACK 0x01) and never delivers; a forbidden QoS 1 publish gets PUBACK 0x87; bad credentials get
CONNACK 0x87 "Not authorized".
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from gateway.mqtt.broker_files import (
    DEFAULT_ITERATIONS,
    mosquitto_password_hash,
    verify_mosquitto_password,
)
from tests.broker import PrivateBroker, Probe

pytestmark = pytest.mark.broker

NOT_AUTHORIZED = 0x87
GRANTED_QOS1 = 0x01
USERS = {"gateway": "gw-secret", "pos-001": "p1-secret", "pos-002": "p2-secret", "kiosk-001": "k1"}
REQ_FILTER = "onecard/v1/t/+/req/#"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    with PrivateBroker(tmp_path / "mqtt", users=dict(USERS)) as b:
        yield b


@pytest.fixture
def clients() -> Iterator[list[Probe]]:
    """Probes created by a test; all closed at the end."""
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


def connect(
    broker: PrivateBroker,
    clients: list[Probe],
    username: str,
    *,
    client_id: str | None = None,
    will: tuple[str, bytes] | None = None,
) -> Probe:
    probe = Probe(broker, username, broker.password(username), client_id=client_id, will=will)
    clients.append(probe)
    reason = probe.connect()
    assert not reason.is_failure, f"{username}: {reason}"
    return probe


def accepted(reason: ReasonCode) -> bool:
    """PUBACK success: 0x00, or 0x10 "no matching subscribers" (still stored, e.g. retained)."""
    return not reason.is_failure


def payloads(probe: Probe) -> list[tuple[str, bytes]]:
    return [(m.topic, bytes(m.payload)) for m in probe.drain()]


def collect(probes: list[Probe], count: int, timeout: float = 5.0) -> list[list[bytes]]:
    """Payloads per probe until ``count`` messages arrived in total (bounded by ``timeout``)."""
    out: list[list[bytes]] = [[] for _ in probes]
    deadline = time.monotonic() + timeout
    while sum(map(len, out)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sum(map(len, out))} of {count} messages: {out}")
        for i, probe in enumerate(probes):
            out[i] += [bytes(m.payload) for m in probe.drain()]
        time.sleep(0.005)
    return out


def test_a_terminal_cannot_read_another_terminals_replies(
    broker: PrivateBroker, clients: list[Probe]
) -> None:
    gateway = connect(broker, clients, "gateway")
    pos1 = connect(broker, clients, "pos-001")
    pos2 = connect(broker, clients, "pos-002")
    assert [int(r.value) for r in pos1.subscribe("onecard/v1/t/pos-001/resp/+")] == [GRANTED_QOS1]
    # The ACL does not refuse these subscriptions (granted), it only never delivers.
    for spy_filter in ("onecard/v1/t/pos-001/resp/#", "onecard/v1/t/+/resp/#", "#"):
        assert [int(r.value) for r in pos2.subscribe(spy_filter)] == [GRANTED_QOS1]

    assert accepted(gateway.publish("onecard/v1/t/pos-001/resp/purchase", b"reply-for-1"))
    got = pos1.next_message()
    assert (got.topic, got.payload) == ("onecard/v1/t/pos-001/resp/purchase", b"reply-for-1")

    # Sentinel: pos-002's own reply, sent after; pos-002 gets it (once per matching filter) and
    # nothing of pos-001's.
    assert accepted(gateway.publish("onecard/v1/t/pos-002/resp/purchase", b"reply-for-2"))
    first = pos2.next_message()
    assert first.payload == b"reply-for-2"
    seen = [(first.topic, first.payload), *payloads(pos2)]
    assert all(topic == "onecard/v1/t/pos-002/resp/purchase" for topic, _ in seen), seen


def test_a_terminal_cannot_publish_as_another(broker: PrivateBroker, clients: list[Probe]) -> None:
    gateway = connect(broker, clients, "gateway")
    gateway.subscribe(REQ_FILTER)
    gateway.subscribe("onecard/v1/t/+/status")
    pos2 = connect(broker, clients, "pos-002")

    spoofs = [
        "onecard/v1/t/pos-001/req/purchase",
        "onecard/v1/t/pos-001/status",
        "onecard/v1/t/pos-001/resp/purchase",
        "onecard/v1/blacklist/snapshot",
        "onecard/v1/gateway/status",
    ]
    for topic in spoofs:
        assert int(pos2.publish(topic, b'{"v":1}').value) == NOT_AUTHORIZED, topic

    assert accepted(pos2.publish("onecard/v1/t/pos-002/req/purchase", b"own"))
    got = gateway.next_message()
    assert (got.topic, got.payload) == ("onecard/v1/t/pos-002/req/purchase", b"own")
    assert payloads(gateway) == []


def test_gateway_writes_replies_only_under_resp(
    broker: PrivateBroker, clients: list[Probe]
) -> None:
    """A Response Topic outside ``.../resp/`` cannot be honoured: the broker refuses the reply."""
    gateway = connect(broker, clients, "gateway")
    for topic in (
        "onecard/v1/t/pos-001/req/purchase",
        "onecard/v1/t/pos-001/status",
        "onecard/v1/t/pos-001/replies/purchase",
    ):
        assert int(gateway.publish(topic, b"{}").value) == NOT_AUTHORIZED, topic
    assert accepted(gateway.publish("onecard/v1/t/pos-001/resp/x/y", b"{}"))


def test_a_foreign_last_will_is_not_delivered(broker: PrivateBroker, clients: list[Probe]) -> None:
    gateway = connect(broker, clients, "gateway")
    gateway.subscribe("onecard/v1/t/+/status")
    offline = b'{"v":1,"state":"offline"}'
    # 2.0.11 accepts the CONNECT; the will is checked when it would be published.
    liar = connect(broker, clients, "pos-002", will=("onecard/v1/t/pos-001/status", offline))
    honest = connect(broker, clients, "pos-001", will=("onecard/v1/t/pos-001/status", offline))
    sock = liar.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)  # abrupt loss: the broker must decide about the will
    broker.wait_log("Client pos-002 closed its connection")  # will handled by then
    sock = honest.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    got = gateway.next_message()
    assert (got.topic, got.payload) == ("onecard/v1/t/pos-001/status", offline)
    assert payloads(gateway) == []


def test_client_id_of_another_terminal_does_not_kick_it(
    broker: PrivateBroker, clients: list[Probe]
) -> None:
    gateway = connect(broker, clients, "gateway")
    pos1 = connect(broker, clients, "pos-001")
    pos1.subscribe("onecard/v1/t/pos-001/resp/+")
    sock = pos1.client.socket()
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1

    impostor = connect(broker, clients, "pos-002", client_id="pos-001")
    # use_username_as_clientid: the broker renamed the impostor to its username.
    assert "as pos-002 (p5" in broker.log_text()
    assert impostor.publish("onecard/v1/t/pos-001/status", b"{}").value == NOT_AUTHORIZED

    assert accepted(gateway.publish("onecard/v1/t/pos-001/resp/hello", b"still-there"))
    assert pos1.next_message().payload == b"still-there"
    assert pos1.connected
    assert pos1.disconnects.empty()


def test_client_id_is_the_username_on_the_tls_listener_too(
    tmp_path: Path, clients: list[Probe]
) -> None:
    """``use_username_as_clientid`` is a per-listener option: the rendered conf repeats it under
    the TLS listener (without it, 2.0.11 kept the client's own id there)."""
    with PrivateBroker(tmp_path / "mqtt-tls", users=dict(USERS), tls=True) as b:
        gateway = connect(b, clients, "gateway")
        pos1 = connect(b, clients, "pos-001")
        impostor = Probe(b, "pos-002", b.password("pos-002"), client_id="pos-001", tls=True)
        clients.append(impostor)
        assert not impostor.connect().is_failure
        b.wait_log("as pos-002 (p5")
        pos1.subscribe("onecard/v1/t/pos-001/resp/+")
        assert accepted(gateway.publish("onecard/v1/t/pos-001/resp/hello", b"still-there"))
        assert pos1.next_message().payload == b"still-there"
        assert pos1.disconnects.empty()
        assert impostor.publish("onecard/v1/t/pos-001/req/purchase", b"{}").value == NOT_AUTHORIZED


def test_same_username_takes_over_the_session(broker: PrivateBroker, clients: list[Probe]) -> None:
    """Why two gateway instances need two accounts: client id = username, so a second login
    with the same account disconnects the first. Observed on 2.0.11: the old connection is just
    closed ("already connected, closing old connection"), no DISCONNECT 0x8E is sent."""
    first = connect(broker, clients, "gateway")
    connect(broker, clients, "gateway")
    lost = first.wait_disconnect()
    assert lost is not None
    reason, from_server = lost
    assert (int(reason.value), from_server) == (0x80, False)
    assert "Client gateway already connected, closing old connection." in broker.log_text()


@pytest.mark.parametrize(
    ("username", "password"),
    [("pos-001", "wrong"), ("pos-999", "p1-secret"), (None, None)],
    ids=["wrong-password", "unknown-user", "anonymous"],
)
def test_bad_credentials_are_refused(
    broker: PrivateBroker, clients: list[Probe], username: str | None, password: str | None
) -> None:
    probe = Probe(broker, username, password, client_id="someone")
    clients.append(probe)
    reason = probe.connect()
    assert reason.is_failure
    assert int(reason.value) == NOT_AUTHORIZED


def test_removed_terminal_is_cut_off_at_reload(broker: PrivateBroker, clients: list[Probe]) -> None:
    """Disabling a terminal = leaving it out of the password file + SIGHUP (FIELD-NOTES)."""
    pos1 = connect(broker, clients, "pos-001")
    pos2 = connect(broker, clients, "pos-002")
    password = broker.password("pos-001")

    broker.remove_user("pos-001")  # rewrites passwd, SIGHUP, waits for "Reloading config"

    lost = pos1.wait_disconnect()
    # Observed on 2.0.11: the live session is closed without a DISCONNECT packet (paho reports
    # 0x80 "Unspecified error" for the lost connection).
    assert lost is not None
    reason, from_server = lost
    assert (int(reason.value), from_server) == (0x80, False)
    again = Probe(broker, "pos-001", password)
    clients.append(again)
    assert int(again.connect().value) == NOT_AUTHORIZED
    # Other terminals are untouched.
    assert pos2.connected
    assert pos2.disconnects.empty()

    broker.add_user("pos-001", password)
    connect(broker, clients, "pos-001")


def test_gateway_shared_subscription_receives_requests(
    tmp_path: Path, clients: list[Probe]
) -> None:
    """Two gateway instances (two accounts) load-balance one share group under the ACL."""
    users = {"gw-a": "a", "gw-b": "b", "pos-001": "p1", "kiosk-001": "k1"}
    with PrivateBroker(tmp_path / "mqtt-shared", users=users, gateway_users=("gw-a", "gw-b")) as b:
        gw_a = connect(b, clients, "gw-a")
        gw_b = connect(b, clients, "gw-b")
        for gw in (gw_a, gw_b):
            assert [int(r.value) for r in gw.subscribe(f"$share/gw/{REQ_FILTER}")] == [1]
        pos = connect(b, clients, "pos-001")
        kiosk = connect(b, clients, "kiosk-001")
        sent = []
        for i in range(10):
            for term, topic in ((pos, "pos-001/req/purchase"), (kiosk, "kiosk-001/req/login")):
                payload = f"{topic}:{i}".encode()
                assert accepted(term.publish(f"onecard/v1/t/{topic}", payload))
                sent.append(payload)
        got_a, got_b = collect([gw_a, gw_b], len(sent))
        assert sorted(got_a + got_b) == sorted(sent)  # every request exactly once
        assert got_a
        assert got_b  # ... and both instances took a share
        assert payloads(gw_a) == []
        assert payloads(gw_b) == []


def test_share_group_name_must_stay_secret(broker: PrivateBroker, clients: list[Probe]) -> None:
    """A terminal cannot read requests through a shared subscription, but joining the gateway's
    own group takes turns in the round robin and those requests are dropped (ACL-denied for the
    terminal, never offered to the gateway). Observed on 2.0.11: hence a secret group name, or no
    shared subscription with a single gateway instance."""
    gateway = connect(broker, clients, "gateway")
    gateway.subscribe(f"$share/gw-7f3a9c/{REQ_FILTER}")
    pos1 = connect(broker, clients, "pos-001")
    thief = connect(broker, clients, "pos-002")
    assert [int(r.value) for r in thief.subscribe(f"$share/other/{REQ_FILTER}")] == [1]

    for i in range(4):
        assert accepted(pos1.publish("onecard/v1/t/pos-001/req/purchase", str(i).encode()))
    assert [gateway.next_message().payload for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    assert payloads(thief) == []

    thief.subscribe(f"$share/gw-7f3a9c/{REQ_FILTER}")
    for i in range(4, 8):
        assert accepted(pos1.publish("onecard/v1/t/pos-001/req/purchase", str(i).encode()))
    thief.unsubscribe(f"$share/gw-7f3a9c/{REQ_FILTER}")
    assert accepted(pos1.publish("onecard/v1/t/pos-001/req/hello", b"sentinel"))
    seen = [gateway.next_message().payload]
    while seen[-1] != b"sentinel":
        seen.append(gateway.next_message().payload)
    assert seen == [b"4", b"6", b"sentinel"] or seen == [b"5", b"7", b"sentinel"], seen
    assert payloads(thief) == []


def test_terminals_read_retained_blacklist_and_gateway_status(
    broker: PrivateBroker, clients: list[Probe]
) -> None:
    gateway = connect(broker, clients, "gateway")
    snapshot = b'{"v":1,"version":3,"count":0,"entries":[]}'
    status = b'{"v":1,"state":"online","denylist_version":3}'
    assert accepted(gateway.publish("onecard/v1/blacklist/snapshot", snapshot, retain=True))
    assert accepted(gateway.publish("onecard/v1/gateway/status", status, retain=True))

    for name in ("pos-001", "kiosk-001"):
        term = connect(broker, clients, name)
        term.subscribe("onecard/v1/blacklist/snapshot")
        term.subscribe("onecard/v1/gateway/status")
        got = {m.topic: (m.payload, m.retain) for m in (term.next_message(), term.next_message())}
        assert got == {
            "onecard/v1/blacklist/snapshot": (snapshot, True),
            "onecard/v1/gateway/status": (status, True),
        }
        # ... and live deltas.
        term.subscribe("onecard/v1/blacklist/delta")
        assert accepted(gateway.publish("onecard/v1/blacklist/delta", name.encode()))
        assert term.next_message().payload == name.encode()


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    pwfile = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(pwfile), "pos-001", "s3cret-密码"], check=True)
    username, theirs = pwfile.read_text().strip().split(":", 1)
    assert username == "pos-001"
    tag, kind, iterations, salt_b64, _ = theirs.split("$")
    assert (tag, kind) == ("", "7")
    ours = mosquitto_password_hash(
        "s3cret-密码", salt=base64.b64decode(salt_b64), iterations=int(iterations)
    )
    assert ours == theirs
    assert verify_mosquitto_password("s3cret-密码", theirs)
    assert not verify_mosquitto_password("s3cret", theirs)


def test_password_hash_logs_in_to_real_broker(tmp_path: Path) -> None:
    """A password file written only from our hashes (random salt, default 10,000 iterations:
    Mosquitto reads the count from each hash)."""
    with (
        PrivateBroker(tmp_path / "mqtt", users={"gateway": "g", "water-b12-03": "热水-42"}) as b,
        Probe(b, "water-b12-03", "热水-42") as good,
        Probe(b, "water-b12-03", "热水-43") as bad,
    ):
        assert f"$7${DEFAULT_ITERATIONS}$" in (b.directory / "passwd").read_text()
        assert not good.connect().is_failure
        assert int(bad.connect().value) == NOT_AUTHORIZED


def test_broker_drops_privileges_and_reads_its_chowned_files(clients: list[Probe]) -> None:
    """Production behaviour: started as root, mosquitto reads passwd/acl as user mosquitto."""
    workdir = Path(tempfile.mkdtemp(prefix="onecard-broker-"))
    try:
        workdir.chmod(0o755)  # mkdtemp makes 0700; mosquitto must traverse it
        with PrivateBroker(workdir, users={"gateway": "g"}, drop_privileges=True) as b:
            probe = Probe(b, "gateway", "g")
            clients.append(probe)
            assert not probe.connect().is_failure
            status = Path(f"/proc/{b.pid}/status").read_text()
            uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
            if os.geteuid() == 0:
                expected = pwd.getpwnam("mosquitto").pw_uid
                assert (b.directory / "passwd").stat().st_uid == expected
            else:
                expected = os.geteuid()
            assert uid == expected
            assert (b.directory / "acl").stat().st_mode & 0o777 == 0o640
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_persistent_broker_keeps_retained_messages_across_restart(
    tmp_path: Path, clients: list[Probe]
) -> None:
    with PrivateBroker(tmp_path / "mqtt", users={"gateway": "g"}, persistence=True) as b:
        gateway = Probe(b, "gateway", "g")
        assert not gateway.connect().is_failure
        assert accepted(gateway.publish("onecard/v1/gateway/status", b"kept", retain=True))
        gateway.close()
        b.restart()  # SIGTERM saves mosquitto.db
        assert (b.data_dir / "mosquitto.db").exists()
        again = Probe(b, "gateway", "g")
        clients.append(again)
        assert not again.connect().is_failure
        again.subscribe("onecard/v1/gateway/status")
        assert again.next_message().payload == b"kept"


def test_anonymous_private_broker_for_tests_that_need_no_security(
    tmp_path: Path, clients: list[Probe]
) -> None:
    broker = PrivateBroker(tmp_path / "anon", anonymous=True)
    assert "allow_anonymous true" in broker.conf_path.read_text()
    assert not (broker.directory / "acl").exists()
    with broker:
        sub = Probe(broker, None, client_id="sub")
        pub = Probe(broker, None, client_id="pub")
        clients += [sub, pub]
        assert not sub.connect().is_failure
        assert not pub.connect().is_failure
        sub.subscribe("anything/#")
        assert accepted(pub.publish("anything/x", b"free"))
        assert sub.next_message().payload == b"free"
        broker.kill()  # SIGKILL, then a fresh start on the same port
        assert sub.wait_disconnect() is not None
        broker.start()
        again = Probe(broker, None, client_id="again")
        clients.append(again)
        assert not again.connect().is_failure
