"""Progress on the command line: renders the engine's events (and a batch's jobs) for people.

On a terminal, rich's live progress display: a bar of the run's evaluations with the
current loss, elapsed time and ETA, a line per finished iteration printed above it,
and, for a batch, a second bar of jobs done/failed/total with the current job. When
stderr is not a terminal (a log file, a pipe), the same lines without the live bars.
Quiet shows nothing. The library never prints: this is the CLI's side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from .batch.runner import BatchEnded, BatchStarted, JobEnded, JobProgress, JobStarted
from .run.events import Evaluated, IterationDone, Prepared
from .run.records import TransferResult


VISUALS = {"sheet": "contact sheet", "gif": "progress GIF", "plot": "loss plot", "tiled": "tile preview"}


class ProgressDisplay:
    """A callback for ``StyleTransfer.run`` that shows its progress; use it as a context manager.

    ``console``: where to draw (default: stderr); its ``is_terminal`` chooses the live
    display or plain lines. It is also the callback of ``run_batch``: the batch's events
    (BatchStarted, JobStarted, JobProgress, JobEnded, BatchEnded) drive ``start_batch``,
    ``start_job`` and ``finish_job`` around each job's own events.
    """

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal and not quiet
        self.last_snapshot: Path | None = None
        self.prepared = False  # a run that got this far writes its record however it ends
        self._progress: Progress | None = None
        self._run: TaskID | None = None
        self._jobs: TaskID | None = None
        self._failed = 0
        self._job = ""

    # -- lifetime -------------------------------------------------------------------------

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (its bars disappear; the lines printed above stay)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._run = self._jobs = None

    def _bars(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), console=self.console, transient=True)
            self._progress.start()
        return self._progress

    def _line(self, text: str) -> None:
        if not self.quiet:
            self.console.print(escape(text), soft_wrap=True)

    # -- one run's events -----------------------------------------------------------------

    def __call__(self, event) -> None:
        if isinstance(event, (BatchStarted, JobStarted, JobProgress, JobEnded, BatchEnded)):
            self._batch_event(event)
            return
        if isinstance(event, IterationDone) and event.snapshot:
            self.last_snapshot = event.snapshot
        self.prepared = self.prepared or isinstance(event, Prepared)
        if isinstance(event, Prepared):
            scale = f"scale {event.scale}/{event.scales}: " if event.scales > 1 else ""
            self._line(f"{self._prefix()}{scale}{event.width}x{event.height} px on {event.provider}, "
                       f"ready in {event.seconds:.1f} s")
        elif isinstance(event, Evaluated) and self.live:
            bars = self._bars()
            if self._run is None:
                self._run = bars.add_task("evaluations", total=event.total_evaluations, status="")
            # scipy may run one evaluation past maxfun: the bar stops at its total.
            bars.update(self._run, completed=min(event.evaluation, event.total_evaluations),
                        status=f"loss {event.loss:.3e}", refresh=True)
        elif isinstance(event, IterationDone):
            saved = f", saved {event.snapshot}" if event.snapshot else ""
            self._line(f"{self._prefix()}iteration {event.iteration}: loss {event.loss:.3e} "
                       f"(content {event.content:.3e}, style {event.style:.3e}, tv {event.tv:.3e}), "
                       f"{event.evaluations} evals, {event.seconds:.1f} s{saved}")

    def summary(self, result: TransferResult) -> None:
        """The end of a run: the final loss terms, the time, and every file written."""
        self._end_run()
        if not result.iterations:
            self._line(f"{self._prefix()}done in {result.seconds:.1f} s on {result.provider}")
            return
        last = result.iterations[-1]
        evaluations = sum(it.evaluations for it in result.iterations)
        count = len(result.iterations)
        early = (f" of {result.planned_iterations} (the picture had stopped changing: an iteration lowered the loss "
                 "by less than --tol; --tol 0 runs every one)"
                 if result.status == "finished" and count < result.planned_iterations else "")
        self._line(f"{self._prefix()}done: loss {last.loss:.3e} (content {last.content:.3e}, style {last.style:.3e}, "
                   f"tv {last.tv:.3e}) after {count} iterations{early}, {evaluations} evaluations, "
                   f"{result.seconds:.1f} s on {result.provider}")
        snapshots = [it.snapshot for it in result.iterations if it.snapshot]
        written = [f"image {result.output}"] if result.output else []
        if snapshots:
            written.append(f"{len(snapshots)} snapshot{'s' if len(snapshots) > 1 else ''} "
                           f"({_span(snapshots)})")
        written += [f"{VISUALS[kind]} {path}" for kind, path in result.visuals.items()]
        if result.record:
            written.append(f"record {result.record}")
        if written:
            self._line(f"{self._prefix()}wrote {', '.join(written)}")

    def _end_run(self) -> None:
        if self._progress is not None and self._run is not None:
            self._progress.remove_task(self._run)
            self._run = None

    # -- a batch of runs ------------------------------------------------------------------

    def start_batch(self, total: int, line: str | None = None) -> None:
        """A batch of ``total`` jobs to run starts; ``line`` says so (default: the count)."""
        if self.live:
            self._jobs = self._bars().add_task("jobs", total=total, status="")
        self._line(line or f"{total} job{'s' if total != 1 else ''}")

    def start_job(self, name: str) -> None:
        self._job = name
        self._end_run()
        if self._jobs is not None and self._progress is not None:
            self._progress.update(self._jobs, status=self._job_status(), refresh=True)

    def finish_job(self, name: str, error: str | None = None, detail: str = "") -> None:
        """One job ended: ``error`` is its one-line message when it failed; ``detail`` ends its line."""
        self._end_run()
        self._failed += error is not None
        self._line((f"{name}: failed: {error}" if error else f"{name}: done") + detail)
        self._job = ""
        if self._jobs is not None and self._progress is not None:
            self._progress.advance(self._jobs)
            self._progress.update(self._jobs, status=self._job_status(), refresh=True)

    def _batch_event(self, event) -> None:
        if isinstance(event, BatchStarted):
            skipped = f", {event.skipped} finished before" if event.skipped else ""
            resumed = f", {event.resumed} to resume" if event.resumed else ""
            self.start_batch(event.to_run, f"{event.total} job{'s' if event.total != 1 else ''}{skipped}{resumed}: "
                                           f"{event.to_run} to run")
        elif isinstance(event, JobStarted):
            self.start_job(event.name)
            self._line(f"[{event.number}/{event.to_run}] {'resuming' if event.resume else 'starting'} "
                       f"{event.name} on {event.worker}")
        elif isinstance(event, JobProgress):
            self(event.event)
        elif isinstance(event, JobEnded):
            status = "" if event.status in ("finished", "failed") else f" ({event.status})"
            self.finish_job(event.name, event.error if event.status == "failed" else None,
                            f"{status} in {event.seconds:.1f} s; {event.done} done, {event.failed} failed of "
                            f"{event.total}, eta {event.eta:.0f} s")
        elif isinstance(event, BatchEnded):
            counts = ", ".join(f"{n} {status}" for status, n in event.counts.items() if n)
            self._line(f"batch: {counts} in {event.seconds:.1f} s")

    def _job_status(self) -> str:
        failed = f"{self._failed} failed" if self._failed else ""
        return ", ".join(part for part in (failed, self._job) if part)

    def _prefix(self) -> str:
        return f"{self._job}: " if self._job else ""


def _span(paths: Sequence[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{paths[0]} ... {paths[-1].name}"
