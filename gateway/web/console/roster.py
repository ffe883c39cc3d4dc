"""Roster upload in the console (ISS-1 / ISS-6, issue 11): the same reader and row-by-row report
as ``onecard holder import``, with a progress bar.

The upload is spooled to a private temporary file and read in a worker thread
(:func:`gateway.rosterio.read_roster`, which reports progress); the page polls the job. Nothing is
imported until the clerk confirms a file without errors (all or nothing, like the CLI) or asks to
skip the bad rows. Jobs live in the operator's session and their files are deleted when read.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.rosterio import RosterResult, read_roster

#: Largest roster file taken (an admitted-students list of 10,000 rows is about 1 MiB).
MAX_UPLOAD = 20 * 1024 * 1024
SUFFIXES = (".xlsx", ".csv")


@dataclass
class RosterJob:
    id: str
    kind: str
    filename: str
    done: int = 0
    total: int | None = None
    result: RosterResult | None = None
    imported: int | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def percent(self) -> int:
        if self.result is not None:
            return 100
        if not self.total:
            return 0
        return min(99, int(100 * self.done / self.total))

    def status(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "total": self.total,
            "percent": self.percent,
            "finished": self.result is not None,
        }


def start(upload: Any, kind: str, filename: str) -> RosterJob:
    """Spool ``upload`` (a starlette UploadFile's binary file) and read it in a thread."""
    suffix = Path(filename).suffix.lower()
    job = RosterJob(secrets.token_urlsafe(12), kind, Path(filename).name[:100])
    directory = Path(tempfile.mkdtemp(prefix="onecard-roster-"))
    path = directory / f"upload{suffix}"
    with path.open("wb") as out:
        shutil.copyfileobj(upload, out)

    def tick(done: int, total: int | None) -> None:
        job.done, job.total = done, total

    async def run() -> None:
        try:
            job.result = await asyncio.to_thread(read_roster, path, kind, progress=tick)  # type: ignore[arg-type]
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    job.task = asyncio.create_task(run(), name=f"roster-{job.id}")
    return job
