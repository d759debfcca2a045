"""``OUTDIR/batch.json``: what happened to each job of a batch, rewritten atomically as jobs end.

Per job: its name (output path relative to OUTDIR), inputs, key (checksum of config
and input bytes), status, output, run record, seconds, evaluations, attempts, error.
A re-run reads it to skip finished jobs whose key is unchanged and whose output is
still there.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from ..errors import ConfigError
from ..io.files import atomic_write_text
from .jobs import STATE_NAME, Job


class JobStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


@dataclass
class JobEntry:
    name: str
    content: str
    style: list[str]
    key: str
    status: str = JobStatus.PENDING.value
    output: str | None = None
    record: str | None = None
    seconds: float = 0.0
    evaluations: int = 0
    attempts: int = 0
    error: str | None = None
    worker: str | None = None


class BatchState:
    """The entries of the current jobs, in the order given, and their file."""

    def __init__(self, out_dir: Path, jobs: list[Job]):
        self.path = Path(out_dir) / STATE_NAME
        previous = _read(self.path)
        self.entries: dict[str, JobEntry] = {}
        for job in jobs:
            key = job.key()
            entry = JobEntry(job.name, str(job.content), [str(s) for s in job.styles], key)
            old = previous.get(job.name)
            if old is not None and old.key == key:
                entry = old  # same config and inputs: its history holds
            self.entries[job.name] = entry

    def finished(self, job: Job) -> bool:
        """Whether the job finished with this config and these inputs, and its output is still there."""
        entry = self.entries[job.name]
        return entry.status == JobStatus.FINISHED.value and job.output.is_file()

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in JobStatus}
        for entry in self.entries.values():
            counts[entry.status] += 1
        return counts

    def save(self) -> None:
        document = {"updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "counts": self.counts(),
                    "jobs": [asdict(entry) for entry in self.entries.values()]}
        atomic_write_text(self.path, json.dumps(document, indent=2) + "\n")


def _read(path: Path) -> dict[str, JobEntry]:
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return {item["name"]: JobEntry(**item) for item in document["jobs"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is damaged or not a batch state ({type(exc).__name__}): move it away "
                          "to start the batch afresh") from None
