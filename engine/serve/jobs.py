"""The server's jobs: one folder each under the data dir, a queue, and worker threads that run them.

A job's folder (``<data dir>/jobs/<id>/``) holds its inputs as re-encoded PNGs
(``inputs/content.png``, ``inputs/style-1.png`` ...), ``params.json``, ``job.json`` (its
state), ``events.jsonl`` (every event, numbered, for resumable event streams) and the
engine's files in ``output/`` (``result.png``, ``result_at_iteration_<N>.png``, the run
record ``result.json``). Ids and file names are made here; a client's string reaches the
file system only after it matched the id pattern, and every path is checked to resolve
inside the job's folder (no symlink leads out).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..config import Provider, TransferConfig
from ..errors import ConfigError, EngineError
from ..io.files import atomic_write_text
from ..run.checkpoints import last_iteration
from ..run.engine import Engine, scale_plan
from ..run.events import Evaluated, IterationDone, Prepared
from ..run.records import checkpoint_path, snapshot_path

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "finished", "failed", "cancelled", "interrupted")
ACTIVE = (QUEUED, RUNNING)
RESUMABLE = (INTERRUPTED, CANCELLED, FAILED)
ID_PATTERN = re.compile(r"[0-9]{8}t[0-9]{6}-[0-9a-f]{8}")
STOPPED_WHILE_RUNNING = "the server stopped while this job ran: resume it to continue"
INPUT_PATTERN = re.compile(r"content|style-[1-9][0-9]?")
RESULT = "result.png"
SNAPSHOT_PATTERN = re.compile(r"result_at_iteration_([0-9]+)\.png")


class JobError(EngineError):
    """A request about a job that cannot be honoured; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def new_id() -> str:
    """Sortable by creation time, unguessable: 20261202t063000-3f9a12c4."""
    return time.strftime("%Y%m%dt%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


@dataclass
class Job:
    id: str
    folder: Path
    params: dict[str, Any]
    config: dict[str, Any]
    styles: int
    created: float
    status: str = QUEUED
    started: float | None = None
    ended: float | None = None
    iteration: int = 0
    iterations: int = 0
    evaluation: int = 0
    total_evaluations: int = 0
    loss: float | None = None
    error: str | None = None
    snapshots: list[int] = field(default_factory=list)
    # Its events while queued or running (a stream polls them); None when inactive: then only in
    # events.jsonl, so a server's memory does not grow with its history (~200 events per job).
    events: list[dict[str, Any]] | None = field(default=None, repr=False)
    event_count: int = 0
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    interrupt: threading.Event = field(default_factory=threading.Event, repr=False)

    STATE = ("id", "params", "config", "styles", "created", "status", "started", "ended", "iteration",
             "iterations", "evaluation", "total_evaluations", "loss", "error", "snapshots")

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STATE}

    def summary(self, position: int | None) -> dict[str, Any]:
        """What GET /api/jobs/{id} answers: the state plus the queue position and relative URLs."""
        base = f"api/jobs/{self.id}"
        return {**self.state(), "position": position, "resumable": self.status in RESUMABLE,
                "result": f"{base}/result" if self.status == FINISHED else None,
                "snapshot_urls": [f"{base}/snapshots/{n}" for n in self.snapshots],
                "inputs": [f"{base}/inputs/content"] + [f"{base}/inputs/style-{k}" for k in range(1, self.styles + 1)]}


class EngineRunner:
    """One worker's long-lived engine (models, graphs and sessions stay warm between jobs)."""

    def __init__(self, models_dir: Path | None, provider: Provider, threads: int | None):
        self.engine = Engine(models_dir=models_dir, provider=provider, threads=threads)
        self.name = f"pid {os.getpid()}"

    def run(self, config: TransferConfig, content: Path, styles: list[Path], output: Path,
            callback: Callable, cancel: threading.Event, resume: bool) -> str:
        """Run (or continue, with ``resume``) one job; its status: finished or cancelled. Failures raise."""
        return self.engine.run(config, content, styles, output, callback=callback, cancel=cancel,
                               resume=resume).status


class ServerStopping(KeyboardInterrupt):
    """Raised inside a run when the server stops: the engine records the run as interrupted (as
    for Ctrl-C), keeps its checkpoint, and raises it again."""


class JobBoard:
    """Every job of a data dir, the queue, and ``workers`` threads running queued jobs in order."""

    def __init__(self, data_dir: Path, runner_factory: Callable[[], EngineRunner], workers: int = 1,
                 max_queued: int = 100):
        root = Path(data_dir) / "jobs"
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".probe-{secrets.token_hex(4)}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot keep jobs in {root}: {exc.strerror or exc}; choose another --data-dir") from None
        self.root = root.resolve()
        self._runner_factory = runner_factory
        self.workers, self.max_queued = workers, max_queued
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._load()

    # -- paths -----------------------------------------------------------------------------

    def folder(self, job_id: str) -> Path:
        if not ID_PATTERN.fullmatch(job_id):
            raise JobError(f"no job {job_id!r}: job ids look like 20261202t063000-3f9a12c4", 404)
        return self.root / job_id

    def file(self, job_id: str, *parts: str) -> Path:
        """A file of a job, only if it exists and its real path lies inside the job's folder."""
        folder = self.folder(job_id)
        path = folder.joinpath(*parts)
        real = path.resolve()
        if not real.is_relative_to(folder) or not real.is_file():
            raise JobError(f"job {job_id} has no {'/'.join(parts)}", 404)
        return real

    # -- loading ---------------------------------------------------------------------------

    def _load(self) -> None:
        for folder in sorted(self.root.iterdir()):
            if folder.is_symlink() or not folder.is_dir() or not ID_PATTERN.fullmatch(folder.name):
                continue
            try:
                state = json.loads((folder / "job.json").read_text())
                job = Job(folder=folder, **{k: state[k] for k in Job.STATE})
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a folder that was never a complete job (crash while creating it)
            events = _read_events(folder / "events.jsonl", repair=True)
            job.event_count = len(events)
            self._jobs[job.id] = job
            if job.status == RUNNING:
                job.error = STOPPED_WHILE_RUNNING
                self._finish(job, INTERRUPTED)
            elif job.status == QUEUED:
                job.events = events
                self._queue.append(job.id)

    # -- the API's verbs -------------------------------------------------------------------

    def submit(self, params: dict[str, Any], config: TransferConfig, content: Image.Image,
               styles: list[Image.Image]) -> tuple[Job, int]:
        with self._lock:
            if len(self._queue) >= self.max_queued:
                raise JobError(f"the queue is full: {len(self._queue)} jobs wait, the server's limit (--max-queued); "
                               "try again when some have run", 429)
        iterations = sum(scale_plan(config, content.size)[1])  # a ConfigError before anything is written
        job_id = new_id()
        folder = self.root / job_id
        staging = self.root / f".{job_id}.new"
        inputs = staging / "inputs"
        inputs.mkdir(parents=True)
        for name, image in [("content", content)] + [(f"style-{k}", s) for k, s in enumerate(styles, 1)]:
            image.save(inputs / f"{name}.png", format="PNG")
        job = Job(id=job_id, folder=folder, params=params, config=config.to_dict(), styles=len(styles),
                  created=time.time(), iterations=iterations, total_evaluations=iterations * config.maxfun,
                  events=[])
        atomic_write_text(staging / "params.json", json.dumps(params, indent=2) + "\n")
        atomic_write_text(staging / "job.json", json.dumps(job.state(), indent=2) + "\n")
        staging.rename(folder)  # the job appears whole or not at all
        with self._lock:
            self._jobs[job_id] = job
            self._queue.append(job_id)
            position = self._queue.index(job_id)
            self._emit(job, "queued", {"position": position})
            self._lock.notify_all()
        return job, position

    def get(self, job_id: str) -> Job:
        self.folder(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobError(f"no job {job_id!r}", 404)
        return job

    def position(self, job_id: str) -> int | None:
        with self._lock:
            return self._queue.index(job_id) if job_id in self._queue else None

    def summary(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        with self._lock:
            return job.summary(self.position(job_id))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)
            return [j.summary(self.position(j.id)) for j in jobs]

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for job in self._jobs.values():
                counts[job.status] = counts.get(job.status, 0) + 1
            return counts

    def events_after(self, job_id: str, last: int) -> tuple[list[dict[str, Any]], bool]:
        """The job's events numbered above ``last``, and whether the job is still queued or running."""
        job = self.get(job_id)
        with self._lock:
            events = job.events if job.events is not None else _read_events(job.folder / "events.jsonl")
            return [e for e in events if e["id"] > last], job.status in ACTIVE

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        with self._lock:
            if job.status == QUEUED:
                self._queue.remove(job_id)
                self._finish(job, CANCELLED)
            elif job.status == RUNNING:
                job.cancel.set()  # the worker stops at the next evaluation and marks it cancelled
            else:
                raise JobError(f"job {job_id} is {job.status}, not queued or running: nothing to cancel", 409)
            return job.summary(self.position(job_id))

    def resume(self, job_id: str) -> dict[str, Any]:
        """Queue an interrupted, cancelled or failed job again: it continues from its last finished
        iteration (the engine's checkpoint), or starts from the beginning when it has none."""
        job = self.get(job_id)
        with self._lock:
            if job.status not in RESUMABLE:
                raise JobError(f"job {job_id} is {job.status}: only interrupted, cancelled or failed jobs "
                               "can be resumed", 409)
            job.status, job.error, job.ended = QUEUED, None, None
            job.cancel, job.interrupt = threading.Event(), threading.Event()
            job.events = _read_events(job.folder / "events.jsonl")
            self._queue.append(job_id)
            self._save(job)
            self._emit(job, "queued", {"position": self._queue.index(job_id), "resumed": True})
            self._lock.notify_all()
            return job.summary(self.position(job_id))

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        with self._lock:
            if job.status in ACTIVE:
                raise JobError(f"job {job_id} is {job.status}: cancel it before deleting it", 409)
            del self._jobs[job_id]
        # Moved aside first, so a half-removed folder is never loaded as a job.
        trash = self.root / f".{job_id}.deleted"
        job.folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    # -- workers ---------------------------------------------------------------------------

    def start(self) -> None:
        for k in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"nst-worker-{k}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers: running jobs stop after their current evaluation and show as interrupted."""
        with self._lock:
            self._stopping = True
            for job in self._jobs.values():
                if job.status == RUNNING:
                    job.interrupt.set()
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _work(self) -> None:
        runner = self._runner_factory()
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._jobs[self._queue.pop(0)]
                checkpoint = checkpoint_path(job.folder / "output" / RESULT)
                resume = checkpoint.is_file()
                job.status, job.started = RUNNING, time.time()
                job.evaluation = 0
                job.snapshots = _snapshots(job.folder / "output") if resume else []
                job.iteration = last_iteration(checkpoint) if resume else 0  # snapshots: maybe none saved
                self._save(job)
                self._emit(job, "started", {"resumed_from": job.iteration if resume else None, "worker": runner.name})
                for other in self._queue:
                    self._emit(self._jobs[other], "queued", {"position": self._queue.index(other)})
            self._run(runner, job, resume)

    def _run(self, runner: EngineRunner, job: Job, resume: bool) -> None:
        output = job.folder / "output"
        if not resume:  # a job without a checkpoint starts from the beginning
            shutil.rmtree(output, ignore_errors=True)
        output.mkdir(exist_ok=True)
        inputs = job.folder / "inputs"
        styles = [inputs / f"style-{k}.png" for k in range(1, job.styles + 1)]
        def on_event(event) -> None:
            if job.interrupt.is_set():
                raise ServerStopping
            self._on_event(job, event)

        try:
            ended = runner.run(TransferConfig(**job.config), inputs / "content.png", styles, output / RESULT,
                               on_event, job.cancel, resume)
        except ServerStopping:
            ended, job.error = INTERRUPTED, STOPPED_WHILE_RUNNING
        except EngineError as exc:
            job.error = str(exc)
            ended = FAILED
        except Exception as exc:  # a bug must not kill the worker; the job says what happened
            job.error = f"internal error: {type(exc).__name__}: {exc}"
            ended = FAILED
        with self._lock:
            self._finish(job, ended)

    def _on_event(self, job: Job, event) -> None:
        with self._lock:
            if isinstance(event, Prepared):
                self._emit(job, "prepared", {"width": event.width, "height": event.height,
                                             "provider": event.provider, "seconds": event.seconds,
                                             "scale": event.scale, "scales": event.scales})
            elif isinstance(event, Evaluated):
                job.evaluation, job.loss = event.evaluation, event.loss
                self._emit(job, "evaluated", {"evaluation": event.evaluation,
                                              "total_evaluations": event.total_evaluations, "loss": event.loss})
            elif isinstance(event, IterationDone):
                job.iteration, job.loss = event.iteration, event.loss
                data = {**event.record(), "iterations": job.iterations, "snapshot": None}
                if event.snapshot is not None:
                    # A resumed run may redo an iteration whose snapshot was written just before a crash.
                    job.snapshots = sorted({*job.snapshots, event.iteration})
                    data["snapshot"] = f"api/jobs/{job.id}/snapshots/{event.iteration}"
                self._save(job)
                self._emit(job, "iteration", data)

    def _finish(self, job: Job, status: str) -> None:
        job.status, job.ended = status, time.time()
        self._save(job)
        data = {"error": job.error} if job.error else {}
        if status == FINISHED:
            data["result"] = f"api/jobs/{job.id}/result"
        self._emit(job, status, data)
        job.events = None  # inactive: its events stay in events.jsonl only

    def _emit(self, job: Job, kind: str, data: dict[str, Any]) -> None:
        job.event_count += 1
        event = {"id": job.event_count, "event": kind,
                 "data": {"job": job.id, "status": job.status, "time": time.time(), **data}}
        if job.events is not None:
            job.events.append(event)
        with open(job.folder / "events.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(event) + "\n")

    def _save(self, job: Job) -> None:
        atomic_write_text(job.folder / "job.json", json.dumps(job.state(), indent=2) + "\n")


def _snapshots(output: Path) -> list[int]:
    found = (SNAPSHOT_PATTERN.fullmatch(p.name) for p in output.iterdir()) if output.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)


def _read_events(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The events of ``events.jsonl``. A line cut short by a crash ends them (nothing after it was
    written then); ``repair`` rewrites the file without it, so events appended later can be read."""
    events = []
    if not path.is_file():
        return events
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            break
    if repair and len(events) < len(lines):
        atomic_write_text(path, "".join(json.dumps(event) + "\n" for event in events))
    return events


def snapshot_file(iteration: int) -> str:
    return snapshot_path(Path(RESULT), iteration).name
