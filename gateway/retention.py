"""Retention of personal data (issue 15, PIPL art. 19; docs/privacy.md §5): one run, for the CLI
(``onecard privacy retention``) and the leader gateway's daily scheduler round.

A run lists the deregistered holders whose period has passed (the dry run, always), audits it
(``pii.retention_plan``, or ``pii.retention_run`` when applying), and -- only when applying, with
an archive -- writes each due holder's full export encrypted under the registry's current key
(``holder-<id>.json.pii1``, 0600) and then purges their personal fields
(:meth:`PrivacyService.purge`, audited ``pii.purge``). Holders with a balance left are listed
as blocked and never purged.

The registry-specific parts (sealing under the registry's key, compacting the file after a
purge) come from the composition root as two callables, so this module names no backend.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import PrivacyConfig
from gateway.metrics import Metrics
from gateway.services.base import SYSTEM, Actor, Context
from gateway.services.privacy import PrivacyService, RetentionDue, RetentionPolicy, collect
from protocol.cards.clock import fmt_local
from protocol.errors import OnecardError

log = logging.getLogger("onecard.retention")
PRIVATE_FILE_MODE = 0o600
#: Holders a scheduler round names in its log (masked); the rest are counted.
LOGGED_DUE = 20


def _own_plain_file(fd: int, path: Path) -> None:
    found = os.fstat(fd)
    if found.st_uid != os.geteuid() or not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:
        raise PermissionError(
            errno.EPERM, "another user's file, or not a plain file: not written", str(path)
        )


def write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only, whatever the umask (an export holds an ID).

    Never through a symbolic link, and never into a file another user prepared (run as root,
    ``fchmod`` would have left that user the owner of the export): such a path is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a planted FIFO
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        _own_plain_file(fd, path)
        os.fchmod(fd, PRIVATE_FILE_MODE)
        os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


@dataclass(frozen=True, slots=True)
class Archive:
    """Where the encrypted archives go and how a holder's export is sealed (the registry's
    current encryption key: ``pii1:`` token text)."""

    directory: Path
    seal: Callable[[bytes], str]

    def write(self, holder_id: int, text: str) -> Path:
        path = self.directory / f"holder-{holder_id}.json.pii1"
        write_private(path, self.seal(text.encode()) + "\n")
        return path


@dataclass(slots=True)
class RetentionRun:
    plan: list[RetentionDue]
    applied: bool
    purged: list[int] = field(default_factory=list)
    #: due but refused at the purge (the plan went stale): archived, not purged
    failed: list[int] = field(default_factory=list)

    @property
    def blocked(self) -> int:
        return sum(1 for d in self.plan if d.blocked is not None)


async def run_retention(
    ctx: Context,
    actor: Actor,
    policy: RetentionPolicy,
    *,
    archive: Archive | None = None,
    compact: Callable[[], Awaitable[None]] | None = None,
) -> RetentionRun:
    """The plan (audited), then, given an archive, archive-and-purge each due holder."""
    service = PrivacyService(ctx)
    plan = await service.retention_plan(policy)
    apply = archive is not None
    now = ctx.clock.now()
    async with ctx.registry.transaction() as tx:
        await tx.audit(
            now,
            actor.name,
            "pii.retention_run" if apply else "pii.retention_plan",
            "holder",
            "*",
            None,
            {
                "due": [d.holder_id for d in plan],
                "apply": apply,
                "channel": actor.channel,
                "days": [policy.after_graduation_days, policy.after_termination_days],
            },
        )
    run = RetentionRun(plan, apply)
    if archive is None:
        return run
    for due in plan:
        if due.blocked is not None:
            continue
        async with ctx.registry.read() as tx:
            data = await collect(tx, due.holder_id, now)
        archive.write(due.holder_id, data.to_json())
        try:
            await service.purge(actor, due, policy)
        except OnecardError as exc:  # stale since the plan (a balance, an extension): kept
            log.warning("retention: holder #%d not purged: %s", due.holder_id, exc.code.value)
            run.failed.append(due.holder_id)
            continue
        run.purged.append(due.holder_id)
    if run.purged and compact is not None:
        await compact()
    return run


@dataclass(frozen=True, slots=True)
class RetentionIO:
    """What the composition root gives a retention job for its registry: seal an archive under
    the current encryption key, compact the registry file after a purge."""

    seal: Callable[[bytes], str]
    compact: Callable[[], Awaitable[None]] | None = None


class RetentionJob:
    """The leader's daily retention step (``[privacy]`` in the gateway's config).

    Every ``interval_s`` (a day by default; the first round right after the gateway becomes
    the leader) it runs the plan; it archives and purges only when ``enabled`` is set (with
    ``archive_dir``) and the composition root gave a way to seal archives."""

    def __init__(
        self,
        ctx: Context,
        config: PrivacyConfig,
        *,
        io: RetentionIO | None = None,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.policy = RetentionPolicy(config.after_graduation_days, config.after_termination_days)
        self.archive = (
            Archive(config.archive_dir, io.seal)
            if config.enabled and config.archive_dir is not None and io is not None
            else None
        )
        self.compact = io.compact if io is not None else None
        self.metrics = metrics
        self.monotonic = monotonic
        self._next = 0.0

    async def maybe_run(self, actor: Actor = SYSTEM) -> RetentionRun | None:
        """One run when its interval has passed (else None). A busy registry or a refused purge
        is logged and tried again at the next interval; the next run carries on."""
        now = self.monotonic()
        if now < self._next:
            return None
        self._next = now + self.config.interval_s
        if self.config.enabled and self.archive is None:
            log.warning("retention: enabled but no archive can be written: dry run only")
        try:
            run = await run_retention(
                self.ctx, actor, self.policy, archive=self.archive, compact=self.compact
            )
        except (OnecardError, OSError) as exc:  # busy registry, archive not writable
            log.warning(
                "retention round failed (%s); next in %.0f s",
                exc.code.value if isinstance(exc, OnecardError) else type(exc).__name__,
                self.config.interval_s,
            )
            return None
        _log_run(run)
        if self.metrics is not None:
            self.metrics.retention_due.set(len(run.plan) - len(run.purged))
            self.metrics.retention_purged.inc(len(run.purged))
        return run


def _log_run(run: RetentionRun) -> None:
    """The run in the log: holder numbers and masked names only."""
    log.info(
        "retention %s: %d holders due, %d blocked by a balance, %d purged",
        "applied" if run.applied else "dry run",
        len(run.plan),
        run.blocked,
        len(run.purged),
    )
    for due in run.plan[:LOGGED_DUE]:
        log.info(
            "retention due: #%d %s (%s) since %s%s%s",
            due.holder_id,
            due.name_masked,
            due.reason,
            fmt_local(due.due_at),
            " purged" if due.holder_id in run.purged else "",
            f" blocked: {due.blocked}" if due.blocked else "",
        )
