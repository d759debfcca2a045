"""``nst serve --ray ADDRESS``: the server's jobs run on Ray actors, with per-iteration progress.

Each server worker holds one actor, and the actor one long-lived engine. The server sends
a job's inputs (and, to resume, the files of its output folder) with the job; the actor
runs it in a scratch folder of its node on a thread of its own and queues what happens:
every event, and every file the run wrote or removed. The server long-polls that queue,
writes the files into the job's folder (the run record's paths made the server's) before
it passes on the event that names them, so the page's snapshot URLs work the moment they
arrive. The server's folder always holds the checkpoint of the last finished iteration:
a worker that dies is replaced and the job continues from there (at most ``retries`` more
times), and a server that stops leaves a job that ``resume`` continues. Nodes need the
package with the ``ray`` extra and the exported models at the same ``--models-dir``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..batch.ray_runner import import_ray, join_cluster, repath_record
from ..config import TransferConfig
from ..errors import ConfigError, EngineError, RunError
from ..io.files import atomic_write_bytes
from ..run.engine import Engine
from ..run.events import IterationDone
from ..run.outputs import lock_path
from ..run.records import checkpoint_path, record_path

POLL_SECONDS = 0.5
LOCAL = "local"


def connect(address: str, threads: int | None, workers: int | None) -> int:
    """Join (or, for ``local``, start) the Ray cluster; how many jobs may run at once on it:
    ``workers``, else as many as its CPUs hold at ``threads`` (default 1) CPUs per job."""
    ray = join_cluster(None if address == LOCAL else address)
    cpus = ray.cluster_resources().get("CPU", 0)
    per_job = threads or 1
    fits = int(cpus // per_job)
    if fits < 1:
        raise ConfigError(f"the Ray cluster has {cpus:g} CPUs, too few for one job of --threads {per_job}; "
                          "lower --threads")
    return workers or fits


class RayEngineRunner:
    """A server worker's job runner on one Ray actor (replaced when it dies); the same ``run`` as
    ``EngineRunner``'s. The actor reserves ``threads`` CPUs (default 1) and its engine uses as many."""

    def __init__(self, models_dir: Path | None, provider: str, threads: int | None, retries: int = 2):
        self.ray = import_ray()
        self.options = {"models_dir": models_dir, "provider": provider, "threads": threads or 1}
        self.retries = retries
        self._actor_class = self.ray.remote(_Worker).options(num_cpus=threads or 1, max_concurrency=4)
        self.actor = self._actor_class.remote(self.options)
        self.pid = self.ray.get(self.actor.pid.remote())

    @property
    def name(self) -> str:
        return f"ray pid {self.pid}"

    def run(self, config: TransferConfig, content: Path, styles: list[Path], output: Path,
            callback: Callable, cancel: threading.Event, resume: bool) -> str:
        died = 0
        while True:
            try:
                return self._attempt(config, content, styles, output, callback, cancel, resume)
            except self.ray.exceptions.RayActorError as exc:
                died += 1
                self.actor = self._actor_class.remote(self.options)
                self.pid = self.ray.get(self.actor.pid.remote())
                if died > self.retries:
                    raise RunError(f"its Ray worker died {died} times ({type(exc).__name__}); "
                                   "resume the job to try again") from None
                resume = checkpoint_path(output).is_file()  # continue from the last iteration shipped back

    def _attempt(self, config: TransferConfig, content: Path, styles: list[Path], output: Path,
                 callback: Callable, cancel: threading.Event, resume: bool) -> str:
        ray = self.ray
        inputs = {path.name: path.read_bytes() for path in [content, *styles]}
        outputs = {p.name: p.read_bytes() for p in sorted(output.parent.iterdir())
                   if p.is_file() and _shipped(p.name, output)} if resume else {}
        scratch = ray.get(self.actor.start.remote(config.to_dict(), inputs, outputs, output.name, resume))
        inputs_map = {there: str(content.parent / name) for there, name in scratch["inputs"].items()}
        asked_to_cancel = False
        try:
            while True:
                if cancel.is_set() and not asked_to_cancel:
                    self.actor.cancel.remote()
                    asked_to_cancel = True
                for kind, *item in ray.get(self.actor.poll.remote(POLL_SECONDS)):
                    if kind == "file":
                        self._write(output, scratch["out"], inputs_map, *item)
                    elif kind == "event":
                        event = item[0]
                        if isinstance(event, IterationDone) and event.snapshot is not None:
                            event = replace(event, snapshot=output.parent / Path(event.snapshot).name)
                        callback(event)
                    elif kind == "ended":
                        return item[0]
                    else:
                        raise RunError(item[0])
        except ray.exceptions.RayActorError:
            raise
        except BaseException:
            # The server stops, or the callback failed: the run there stops at its next evaluation.
            self.actor.cancel.remote()
            raise

    @staticmethod
    def _write(output: Path, scratch_out: str, inputs_map: dict[str, str], name: str, data: bytes | None) -> None:
        if not _shipped(name, output):
            return  # only the run's own plain file names are ever written here
        path = output.parent / name
        if data is None:
            path.unlink(missing_ok=True)
        elif name == record_path(output).name:
            document = repath_record(json.loads(data), scratch_out, str(output.parent), inputs_map)
            atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())
        else:
            atomic_write_bytes(path, data)


def _shipped(name: str, output: Path) -> bool:
    """Whether a file of an output folder travels between the server and a worker: the run's own
    files (not the lock, not a half-written temporary, no path)."""
    return (not name.startswith(".") and "/" not in name and os.sep not in name
            and name != lock_path(output).name)


class _Worker:
    """A Ray actor: one engine; runs one job at a time on a thread, queuing its events and files."""

    def __init__(self, engine_options: dict[str, Any]):
        self.engine = Engine(**engine_options)
        self.pending: list[tuple] = []
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.folder: Path | None = None
        self.output: Path | None = None
        self.sent: dict[str, tuple[int, int]] = {}

    def pid(self) -> int:
        return os.getpid()

    def start(self, config: dict, inputs: dict[str, bytes], outputs: dict[str, bytes], name: str,
              resume: bool) -> dict:
        """Start a job in a new scratch folder; its paths there (for the server's run record)."""
        self.folder = Path(tempfile.mkdtemp(prefix="nst-serve-"))
        paths = {}
        for file_name, data in inputs.items():
            paths[file_name] = self.folder / "inputs" / file_name
            atomic_write_bytes(paths[file_name], data)
        out = self.folder / "output"
        out.mkdir()
        for file_name, data in outputs.items():
            atomic_write_bytes(out / file_name, data)
        self.pending, self.stop, self.output = [], threading.Event(), out / name
        self.sent = {p.name: _stamp(p) for p in out.iterdir()}
        content, *styles = paths.values()
        threading.Thread(target=self._run, args=(TransferConfig(**config), content, styles, resume),
                         daemon=True).start()
        return {"out": str(out), "inputs": {str(path): file_name for file_name, path in paths.items()}}

    def _run(self, config: TransferConfig, content: Path, styles: list[Path], resume: bool) -> None:
        try:
            status = self.engine.run(config, content, styles, self.output, callback=self._on_event, cancel=self.stop,
                                     resume=resume).status
            end = ("ended", status)
        except EngineError as exc:
            end = ("failed", str(exc))
        except Exception as exc:  # a bug must not leave the server waiting: it is the job's error
            end = ("failed", f"internal error: {type(exc).__name__}: {exc}")
        self._ship()
        self._push(end)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _on_event(self, event) -> None:
        if isinstance(event, IterationDone):
            self._ship()
        self._push(("event", event))

    def _ship(self) -> None:
        """Queue every file of the output folder that is new or changed since it was last queued,
        the run record last (it names the others), and every file that went away."""
        record = record_path(self.output).name
        files = {p.name: p for p in self.output.parent.iterdir() if p.is_file() and _shipped(p.name, self.output)}
        changed = sorted((n for n, p in files.items() if self.sent.get(n) != _stamp(p)), key=lambda n: n == record)
        for name in changed:
            self.sent[name] = _stamp(files[name])
            self._push(("file", name, files[name].read_bytes()))
        for name in [n for n in self.sent if n not in files]:
            del self.sent[name]
            self._push(("file", name, None))

    def _push(self, item: tuple) -> None:
        with self.changed:
            self.pending.append(item)
            self.changed.notify_all()

    def poll(self, timeout: float) -> list[tuple]:
        """What happened since the last poll (waits up to ``timeout`` s for something)."""
        with self.changed:
            self.changed.wait_for(lambda: self.pending, timeout)
            taken, self.pending = self.pending, []
            return taken

    def cancel(self) -> None:
        self.stop.set()


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size
