"""The same batch on a Ray cluster: actors that each hold one long-lived engine.

The driver (the ``nst batch`` process) ships each job's input bytes to a worker with
the job; the worker runs it in a scratch folder of its node and sends back every file
the run wrote; the driver writes them beside the job's output, atomically. So neither
inputs nor outputs need a shared file system: each node needs the package (with the
``ray`` extra) and the exported models. A worker that dies mid-job is replaced and the
job tried again, at most ``retries`` more times. The scratch folder is named after the
job's key (config and input checksums) and name: a retry on the same node, or on any node when
``scratch`` is a shared folder, resumes from the checkpoint of the last finished
iteration instead of starting over.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import TransferConfig
from ..errors import ConfigError
from ..io.files import atomic_write_bytes
from ..run.engine import Engine
from ..run.outputs import lock_path
from ..run.records import checkpoint_path, record_path
from .jobs import Job
from .runner import Outcome, Reporter, Work, run_job
from .state import JobStatus

INSTALL_HINT = "--ray needs Ray: pip install -e '.[ray]' (or pip install 'ray[client]==2.60.0')"
ADDRESS_FORMS = "auto, host:6379 or ray://host:10001"
# How long a cluster address may take to accept a connection: Ray itself waits minutes for an
# unreachable one, printing C++ warnings, before it gives up.
REACH_SECONDS = 5.0


def import_ray():
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def join_cluster(address: str | None):
    """The ``ray`` module, joined to the cluster at ``address`` (None: a new local one) unless this
    process already has one; a ConfigError line when the cluster cannot be reached."""
    ray = import_ray()
    if not ray.is_initialized():
        if address not in (None, "auto"):
            check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError ... by cause
            if address == "auto" and isinstance(exc, ConnectionError):
                raise ConfigError("no running Ray cluster found on this machine for --ray-address auto: start "
                                  "one (ray start --head) or give the cluster's address (host:6379 or "
                                  "ray://host:10001)") from None
            reason = " ".join(str(exc).split())
            raise ConfigError(f"cannot join the Ray cluster at {address!r}: {reason}; check the address "
                              f"({ADDRESS_FORMS}), and for a cluster with token authentication (what `ray start` "
                              "sets up) set RAY_AUTH_MODE=token") from None
    return ray


def check_reachable(address: str, seconds: float = REACH_SECONDS) -> None:
    """A ConfigError line unless ``address`` (host:port or ray://host:port) names a port that
    accepts a connection within ``seconds``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # an IPv6 host is written [::1]:6379
    if not host or not port.isdigit():
        raise ConfigError(f"{address!r} is not a Ray cluster address: give {ADDRESS_FORMS}")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as exc:
        reason = "no answer within {:g} s".format(seconds) if isinstance(exc, TimeoutError) else \
            (exc.strerror or str(exc)).lower()
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({reason}): check that it runs and "
                          f"the address ({ADDRESS_FORMS})") from None


class RayRunner:
    """Runs a batch's jobs on Ray actors, each holding one ``Engine`` built from ``engine_options``.

    ``address``: None starts a local cluster, "auto" joins the one this machine belongs
    to, else a cluster address ("ray://host:10001" or "host:6379"); a Ray already
    initialised in this process is used as it is. ``cpus_per_job`` / ``gpus_per_job``:
    the resources each actor reserves (a GPU job needs a node with a free GPU and
    onnxruntime-gpu there). ``workers``: how many actors (default: as many as the
    cluster's resources hold, at most one per job). ``retries``: how many more times a
    job whose worker died is tried. ``scratch``: the workers' scratch folder (default:
    the node's temp folder).
    """

    def __init__(self, address: str | None = None, cpus_per_job: float = 1.0, gpus_per_job: float = 0.0,
                 workers: int | None = None, retries: int = 2, scratch: str | None = None,
                 engine_options: dict[str, Any] | None = None):
        if cpus_per_job <= 0 or gpus_per_job < 0:
            raise ConfigError("--cpus-per-job must be > 0 and --gpus-per-job >= 0")
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        if retries < 0:
            raise ConfigError(f"retries must be >= 0, got {retries}")
        self.ray = import_ray()
        self.address, self.cpus, self.gpus = address, cpus_per_job, gpus_per_job
        self.workers, self.retries, self.scratch = workers, retries, scratch
        self.engine_options = engine_options or {}
        self.actors: list = []   # the live actors, for a caller that wants their processes
        self.pids: dict = {}     # actor -> its process id

    def connect(self) -> int:
        """Join (or start) the cluster; how many workers its resources hold (a ConfigError when none:
        also when --workers is given, as an actor that fits nowhere would wait forever)."""
        join_cluster(self.address)
        return self._fitting()

    def run(self, work: list[Work], reporter: Reporter, cancel) -> None:
        ray = self.ray
        if not work:
            return
        fits = self.connect()
        worker_class = ray.remote(_Worker).options(num_cpus=self.cpus, num_gpus=self.gpus)
        count = min(len(work), self.workers or fits)
        inputs: dict[Path, Any] = {}
        for item in work:
            for path in _input_files(item):
                if path not in inputs:
                    inputs[path] = ray.put(path.read_bytes())
        queue = list(work)
        attempts: dict[str, int] = {}
        running: dict = {}   # future -> (actor, work)

        def start(actor) -> None:
            item = queue.pop(0)
            attempts[item.job.name] = attempts.get(item.job.name, 0) + 1
            refs = [inputs[path] for path in _input_files(item)]
            running[actor.run.remote(item, self.scratch, _slot(item.job), *refs)] = (actor, item)
            reporter.started(item, self._worker_name(actor))

        def new_actor():
            actor = worker_class.remote(self.engine_options)
            self.pids[actor] = ray.get(actor.pid.remote())
            self.actors.append(actor)
            return actor

        try:
            for actor in [new_actor() for _ in range(count)]:
                if queue:
                    start(actor)
            while running:
                if cancel is not None and cancel.is_set():
                    self._cancel(running, reporter)
                    return
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                for future in ready:
                    actor, item = running.pop(future)
                    try:
                        outcome, files, scratch = ray.get(future)
                    except ray.exceptions.RayActorError as exc:
                        self.actors.remove(actor)
                        actor = new_actor()
                        if attempts[item.job.name] <= self.retries:
                            queue.insert(0, item)
                        else:
                            reporter.ended(Outcome(item.job.name, JobStatus.FAILED.value, 0.0, error=(
                                f"its worker died {attempts[item.job.name]} times ({type(exc).__name__})"),
                                worker=self._worker_name(actor), attempts=attempts[item.job.name]))
                    else:
                        _write_back(item, files, scratch)
                        reporter.ended(replace(outcome, worker=self._worker_name(actor),
                                               attempts=attempts[item.job.name]))
                    if queue:
                        start(actor)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors.clear()

    def _fitting(self) -> int:
        resources = self.ray.cluster_resources()
        fits = int(resources.get("CPU", 1) // self.cpus)
        if self.gpus:
            fits = min(fits, int(resources.get("GPU", 0) // self.gpus))
        if fits < 1:
            raise ConfigError(f"the cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs: "
                              f"too few for one job of {self.cpus:g} CPUs and {self.gpus:g} GPUs; "
                              "lower --cpus-per-job / --gpus-per-job")
        return fits

    def _worker_name(self, actor) -> str:
        return f"ray pid {self.pids.get(actor, '?')}"

    def _cancel(self, running: dict, reporter: Reporter) -> None:
        # An actor cannot be reached mid-call: it is stopped, its job recorded cancelled
        # (its checkpoint stays in the worker's scratch folder for a re-run to resume).
        for future, (actor, item) in list(running.items()):
            self.ray.kill(actor)
            reporter.ended(Outcome(item.job.name, JobStatus.CANCELLED.value, 0.0, worker=self._worker_name(actor)))
        running.clear()


def _input_files(item: Work) -> list[Path]:
    """The job's input files, in the order they are shipped: content, styles, init, content masks,
    style masks (``engine.run.outputs.run_inputs``' order)."""
    return list(item.job.inputs().values())


def _slot(job: Job) -> str:
    """The name of a job's scratch folder, from its key and its output path (computed by the driver,
    which has the input files): a retry finds its checkpoint there, and two jobs alike but for
    their output never share one."""
    return hashlib.sha256(f"{job.key()} {job.output.resolve()}".encode()).hexdigest()[:32]


def _shipped_config(cfg: TransferConfig, paths: list[Path]) -> TransferConfig:
    """``cfg`` reading its init and mask images from ``paths`` (the worker's copies, in
    ``_input_files``' order after the content and styles)."""
    rest = [str(p) for p in paths]
    changes: dict[str, Any] = {}
    if cfg.init_file is not None:
        changes["init"] = rest.pop(0)
    for field in ("content_masks", "style_masks"):
        count = len(getattr(cfg, field) or ())
        if count:
            changes[field], rest = tuple(rest[:count]), rest[count:]
    return cfg.replace(**changes) if changes else cfg


class _Worker:
    """A Ray actor: one engine, reused for every job it is given."""

    def __init__(self, engine_options: dict[str, Any]):
        self.engine = Engine(**engine_options)

    def pid(self) -> int:
        return os.getpid()

    def run(self, item: Work, scratch: str | None, slot: str, *inputs: bytes) -> tuple[Outcome, dict[str, bytes],
                                                                                      dict]:
        """Run ``item`` in ``<scratch>/nst-batch/<slot>`` from the shipped ``inputs`` alone (the
        job's own paths are the driver's); return the outcome, the files written (name -> bytes)
        and the scratch paths that stand for the job's own ones."""
        job = item.job
        folder = Path(scratch or tempfile.gettempdir()) / "nst-batch" / slot
        paths = []
        for index, (original, data) in enumerate(zip(_input_files(item), inputs)):
            path = folder / "in" / f"{index}{original.suffix}"
            if not path.exists():
                atomic_write_bytes(path, data)
            paths.append(path)
        out = folder / "out"
        output = out / job.output.name
        config = _shipped_config(job.config, paths[1 + len(job.styles):])
        # The folder is this job's alone (its key and output): a checkpoint there is this job's, resume it.
        # And the driver (one per output folder: batch.json.lock) runs the job once at a time, so a lock
        # there is a dead worker's, maybe of another node sharing the scratch folder: take it over.
        resume = checkpoint_path(output).is_file()
        lock_path(output).unlink(missing_ok=True)
        outcome = run_job(self.engine, Work(replace(job, config=config), resume), None, None, output,
                          (paths[0], paths[1:1 + len(job.styles)]))
        kept = (checkpoint_path(output), lock_path(output))  # the worker's own, for a retry here
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir())
                 if p.is_file() and not p.name.startswith(".") and p not in kept} if out.is_dir() else {}
        if outcome.status == JobStatus.FINISHED.value:
            shutil.rmtree(folder, ignore_errors=True)
        originals = {str(p): str(o) for p, o in zip(paths, _input_files(item))}
        return outcome, files, {"out": str(out), "inputs": originals, "record": record_path(output).name}


def _write_back(item: Work, files: dict[str, bytes], scratch: dict) -> None:
    """Write a worker's files beside the job's output, its run record's paths made the driver's;
    the record last, so it never names a file not yet written."""
    folder = item.job.output.parent
    record = files.pop(scratch["record"], None)
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    if record is not None:
        document = repath_record(json.loads(record), scratch["out"], str(folder), scratch["inputs"])
        atomic_write_bytes(folder / scratch["record"], (json.dumps(document, indent=2) + "\n").encode())


def repath_record(value: Any, scratch_out: str, folder: str, inputs: dict[str, str]) -> Any:
    """A run record written in a worker's scratch folder, its paths made the driver's: the scratch
    output folder's files become ``folder``'s, and the scratch inputs their originals (``inputs``)."""
    if isinstance(value, dict):
        return {key: repath_record(item, scratch_out, folder, inputs) for key, item in value.items()}
    if isinstance(value, list):
        return [repath_record(item, scratch_out, folder, inputs) for item in value]
    if isinstance(value, str):
        if value in inputs:
            return inputs[value]
        if value.startswith(scratch_out + os.sep):
            return folder + value[len(scratch_out):]
    return value
