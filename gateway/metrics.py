"""The only module that imports prometheus_client. Metric names are ``onecard_*``; no card
numbers, names or IDs ever appear in labels (labels are ops, results, codes and kinds)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "onecard_decisions", "Terminal requests decided", ["op", "result"], registry=r
        )
        self.decision_seconds = Histogram(
            "onecard_decision_seconds",
            "Request receipt to reply published",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.denylist_version = Gauge(
            "onecard_denylist_version", "Deny-list version published", registry=r
        )
        self.denylist_size = Gauge("onecard_denylist_size", "Cards on the deny list", registry=r)
        self.terminals_online = Gauge(
            "onecard_terminals_online", "Terminals online", ["kind"], registry=r
        )
        self.terminal_lag = Gauge(
            "onecard_terminal_lag_versions",
            "Largest deny-list lag of an online terminal",
            ["kind"],
            registry=r,
        )
        self.terminals_lagging = Gauge(
            "onecard_terminals_lagging",
            "Online terminals behind the deny list",
            ["kind"],
            registry=r,
        )
        self.dropped = Counter(
            "onecard_messages_dropped", "Messages dropped without a reply", ["reason"], registry=r
        )
        self.errors = Counter("onecard_errors", "Error replies by code", ["code"], registry=r)
        self.mqtt_connected = Gauge(
            "onecard_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.mqtt_reconnects = Counter(
            "onecard_mqtt_reconnects", "Broker reconnections", registry=r
        )
        self.writer_commits = Gauge(
            "onecard_tapwriter_commits", "Group commits of the tap writer since start", registry=r
        )
        self.wal_bytes = Gauge(
            "onecard_registry_wal_bytes",
            "Size of the SQLite registry's write-ahead log (grows without bound if checkpoints"
            " never finish; fills a small disk)",
            registry=r,
        )
        self.writer_jobs = Gauge(
            "onecard_tapwriter_jobs",
            "Decisions committed by the tap writer since start",
            registry=r,
        )
        self.instance = Gauge(
            "onecard_gateway_instance",
            "1 for this gateway instance (its id as the label; issue 12)",
            ["instance"],
            registry=r,
        )
        self.leader = Gauge(
            "onecard_gateway_leader",
            "1 while this instance publishes the deny list and runs the scheduler",
            ["instance"],
            registry=r,
        )
        self.replays = Counter(
            "onecard_idempotent_replays", "Retries answered from the stored reply", registry=r
        )
        self.retention_due = Gauge(
            "onecard_retention_due_holders",
            "Holders past their retention period not yet purged, at the leader's last retention"
            " run (issue 15; a count, no names)",
            registry=r,
        )
        self.retention_purged = Counter(
            "onecard_retention_purged", "Holders whose personal data retention purged", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
