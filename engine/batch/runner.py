"""Running a batch: the driver (what to skip, resume or run, in which order, batch.json,
progress events) and the local runner (one process, one long-lived engine).

The driver hands the jobs to run to a runner (``LocalRunner`` here, ``RayRunner`` in
``engine.batch.ray``) and hears back through a ``Reporter``; it never prints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Union

from ..errors import ConfigError, EngineError
from ..run.engine import Engine
from ..run.events import Evaluated, IterationDone, Prepared
from ..run.outputs import OutputLock
from ..run.records import checkpoint_path, record_path
from .jobs import STATE_NAME, Job
from .state import BatchState, JobStatus


@dataclass(frozen=True)
class BatchStarted:
    """The batch's jobs: ``skipped`` finished before (same config and inputs), ``to_run`` left."""
    total: int
    skipped: int
    to_run: int
    resumed: int


@dataclass(frozen=True)
class JobStarted:
    name: str
    number: int                # 1-based among the jobs to run
    to_run: int
    resume: bool
    worker: str


@dataclass(frozen=True)
class JobProgress:
    """An event of the job's run (Prepared, Evaluated, IterationDone)."""
    name: str
    event: Union[Prepared, Evaluated, IterationDone]


@dataclass(frozen=True)
class JobEnded:
    """A job ended; ``done``/``failed``/``total`` count the whole batch, ``eta`` (s) the jobs left."""
    name: str
    status: str
    seconds: float
    evaluations: int | None
    error: str | None
    done: int
    failed: int
    total: int
    eta: float


@dataclass(frozen=True)
class BatchEnded:
    counts: dict[str, int]
    seconds: float
    state: Path


BatchEvent = Union[BatchStarted, JobStarted, JobProgress, JobEnded, BatchEnded]


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a job ended."""
    name: str
    status: str
    seconds: float
    evaluations: int | None = None
    error: str | None = None
    worker: str = "local"
    attempts: int = 1


@dataclass(frozen=True)
class Work:
    job: Job
    resume: bool


class Reporter(Protocol):
    def started(self, work: Work, worker: str) -> None: ...
    def progress(self, work: Work, event: Any) -> None: ...
    def ended(self, outcome: Outcome) -> None: ...


class Runner(Protocol):
    def run(self, work: list[Work], reporter: Reporter, cancel) -> None: ...


@dataclass(frozen=True)
class BatchSummary:
    counts: dict[str, int]
    state: Path
    seconds: float

    @property
    def failed(self) -> int:
        return self.counts[JobStatus.FAILED.value]

    @property
    def complete(self) -> bool:
        return self.counts[JobStatus.FINISHED.value] == sum(self.counts.values())


def run_batch(jobs: list[Job], out_dir: str | Path, runner: Runner,
              callback: Callable[[BatchEvent], None] | None = None, cancel=None) -> BatchSummary:
    """Run ``jobs`` with ``runner``, recording each in ``out_dir/batch.json``.

    Jobs that finished before with the same key (config and input bytes) and whose
    output is still there are skipped; interrupted or cancelled ones with a checkpoint
    resume from it; the rest run from the start, grouped by layer choice (first seen
    first) so each group reuses its sessions. A failing job is recorded with its error
    and the batch goes on. ``cancel`` (a ``threading.Event``) stops the running job at its
    next evaluation (recorded ``cancelled``, resumable) and starts no other.
    KeyboardInterrupt marks the running jobs ``interrupted`` and is raised again.
    One batch at a time runs on ``out_dir``: it holds ``batch.json.lock`` (a second one is
    refused with one line; see engine.run.outputs.OutputLock).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"the output folder {out_dir} is a file: give a folder (-o)")
    with OutputLock(out_dir / STATE_NAME):
        return _run_batch(jobs, out_dir, runner, callback or (lambda event: None), cancel)


def _run_batch(jobs: list[Job], out_dir: Path, runner: Runner, emit: Callable[[BatchEvent], None],
               cancel) -> BatchSummary:
    started = time.perf_counter()
    state = BatchState(out_dir, jobs)
    todo = [job for job in jobs if not state.finished(job)]
    groups: dict[tuple, int] = {}
    for job in todo:
        groups.setdefault(job.layer_choice, len(groups))
    todo.sort(key=lambda job: groups[job.layer_choice])  # stable: given order within a group
    work = [Work(job, _resumable(state, job)) for job in todo]
    for item in work:
        if state.entries[item.job.name].status == JobStatus.FINISHED.value:  # its output went missing: again
            state.entries[item.job.name].status = JobStatus.PENDING.value
        if not item.resume:  # starts over: an earlier attempt's checkpoint (maybe of other settings) goes
            checkpoint_path(item.job.output).unlink(missing_ok=True)
    state.save()
    emit(BatchStarted(len(jobs), len(jobs) - len(work), len(work), sum(w.resume for w in work)))
    reporter = _Driver(state, work, emit, started)
    try:
        runner.run(work, reporter, cancel)
    except (KeyboardInterrupt, SystemExit):  # SystemExit: e.g. rich's, on a closed pipe (| head)
        reporter.interrupted()
        raise
    seconds = time.perf_counter() - started
    emit(BatchEnded(state.counts(), seconds, state.path))
    return BatchSummary(state.counts(), state.path, seconds)


def _resumable(state: BatchState, job: Job) -> bool:
    resumable = (JobStatus.INTERRUPTED.value, JobStatus.CANCELLED.value, JobStatus.RUNNING.value)
    return state.entries[job.name].status in resumable and checkpoint_path(job.output).is_file()


class _Driver:
    """The runner's reports -> batch.json and events."""

    def __init__(self, state: BatchState, work: list[Work], emit, started: float):
        self.state, self.emit, self.started_at = state, emit, started
        self.jobs = {item.job.name: item.job for item in work}
        self.numbers: dict[str, int] = {}   # a retried job keeps its number
        self.ended_count = 0
        self.running: set[str] = set()

    def started(self, work: Work, worker: str) -> None:
        name = work.job.name
        self.numbers.setdefault(name, len(self.numbers) + 1)
        entry = self.state.entries[name]
        entry.status, entry.worker, entry.error = JobStatus.RUNNING.value, worker, None
        entry.output = entry.record = None  # until this attempt has written them
        entry.attempts += 1
        self.running.add(name)
        self.state.save()
        self.emit(JobStarted(name, self.numbers[name], len(self.jobs), work.resume, worker))

    def progress(self, work: Work, event: Any) -> None:
        self.emit(JobProgress(work.job.name, event))

    def ended(self, outcome: Outcome) -> None:
        entry = self.state.entries[outcome.name]
        entry.status, entry.seconds, entry.evaluations = outcome.status, round(outcome.seconds, 3), outcome.evaluations
        entry.error, entry.worker = outcome.error, outcome.worker
        entry.attempts = max(entry.attempts, outcome.attempts)
        output = self.jobs[outcome.name].output
        entry.output = str(output) if outcome.status == JobStatus.FINISHED.value and output.is_file() else None
        entry.record = str(record_path(output)) if record_path(output).is_file() else None
        self.running.discard(outcome.name)
        self.state.save()
        self.ended_count += 1
        counts = self.state.counts()
        left = counts[JobStatus.PENDING.value] + counts[JobStatus.RUNNING.value]
        # The batch's pace so far: right for one worker or many.
        eta = (time.perf_counter() - self.started_at) / self.ended_count * left
        self.emit(JobEnded(outcome.name, outcome.status, outcome.seconds, outcome.evaluations, outcome.error,
                           counts[JobStatus.FINISHED.value], counts[JobStatus.FAILED.value],
                           len(self.state.entries), eta))

    def interrupted(self) -> None:
        for name in self.running:
            entry, record = self.state.entries[name], record_path(self.jobs[name].output)
            entry.status = JobStatus.INTERRUPTED.value
            entry.record = str(record) if record.is_file() else None  # the interrupted run's, once it started
        self.state.save()


class LocalRunner:
    """Every job in this process, on one ``Engine`` (sessions reused across jobs)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def run(self, work: list[Work], reporter: Reporter, cancel) -> None:
        for item in work:
            if cancel is not None and cancel.is_set():
                return
            reporter.started(item, "local")
            reporter.ended(run_job(self.engine, item, lambda event, item=item: reporter.progress(item, event), cancel))


def run_job(engine: Engine, work: Work, callback, cancel, output: Path | None = None,
            inputs: tuple[Path, list[Path]] | None = None) -> Outcome:
    """One attempt at a job on ``engine``. ``output`` and ``inputs`` (content, styles) stand in
    for the job's own paths on a worker without them. Errors become a ``failed`` outcome;
    KeyboardInterrupt goes through."""
    job = work.job
    content, styles = inputs or (job.content, list(job.styles))
    started = time.perf_counter()
    try:
        result = engine.run(job.config, content, styles, output or job.output, callback, cancel, work.resume)
    except EngineError as exc:
        return Outcome(job.name, JobStatus.FAILED.value, time.perf_counter() - started, error=str(exc))
    except Exception as exc:  # a bug or a resource failure in one job must not end the batch
        return Outcome(job.name, JobStatus.FAILED.value, time.perf_counter() - started,
                       error=f"{type(exc).__name__}: {exc}")
    return Outcome(job.name, result.status, result.seconds, sum(it.evaluations for it in result.iterations))
