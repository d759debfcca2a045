"""The benchmark of one loss-and-gradient evaluation (``nst bench``, scripts/bench.py).

What it measures, per working size (the bundled example pair at ``--sizes`` px on
the longest edge, the preset's layers):

- the median wall time of ``Problem.loss_and_grad`` (warm-up first), and the conv
  GFLOP/s that implies (:func:`conv_flops`: forward and input-gradient convs);
- when PyTorch is importable, the same loss in PyTorch eager autograd on the same
  weights, checked equal to the engine's first, timed interleaved with it;
- time to first evaluation and peak RSS, each in a fresh child process;

and once: the machine's float32 matrix-multiply rate (numpy sgemm, same threads,
in a child process without OpenBLAS tuning variables), the share of wall time an
L-BFGS run spends outside ONNX Runtime, how time grows with pixel count, the
largest size that fits in memory, and, without a GPU, a FLOP-based GPU estimate.

A library module: it never prints. Progress leaves as :class:`BenchStep` events,
results as plain dicts (JSON-ready); :mod:`benchmarks.report` renders them.
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from engine.config import OptimizerMode, Provider, TransferConfig
from engine.errors import ConfigError, EngineError
from engine.io.images import load_image
from engine.runtime.memory import (GIB, estimate_eval_bytes, estimate_optimizer_bytes, eval_memory_breakdown,
                                   forward_maps, largest_square, proc_bytes)

from .torch_reference import TorchLoss, check_torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONTENT = ROOT / "examples" / "content.jpg"
EXAMPLE_STYLE = ROOT / "examples" / "style.jpg"
DEFAULT_PRESET = "starry_tubingen"
DEFAULT_SIZES = (128, 256, 512)
MIB = 1024 ** 2

# Dense (no structured sparsity) TF32 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets.
GPU_TF32_TFLOPS: dict[str, float] = {
    "H200": 494.7,
    "H100-SXM": 494.7,
    "A100": 156.0,
    "L4": 60.0,
    "RTX-4090": 82.6,
}
# Assumed share of that peak VGG's 3x3 convs reach (cuDNN, TF32): the estimate is a range.
GPU_EFFICIENCY = (0.4, 0.5)
BLAS_TUNING_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# Other processes' share of the machine's CPU time: above CALL_CONTENTION during a timed call,
# the call is set aside and another made (below it is jiffy-level noise on a 70 ms call); above
# CONTENTION_WARNING in what the results use, they carry a warning.
CALL_CONTENTION = 0.10
CONTENTION_WARNING = 0.05


@dataclass(frozen=True)
class BenchStep:
    """A progress event: what the benchmark is doing now."""
    message: str


Progress = Callable[[BenchStep], None]


# ------------------------------------------------------------------ pure parts


@dataclass(frozen=True)
class ConvFlops:
    """FLOPs (multiply and add each counted) of one loss-and-gradient evaluation.

    forward:  every 3x3 conv up to the deepest chosen layer, 2*h*w*Cin*Cout*9;
    backward: the input gradient of each of those convs (a 3x3 conv from Cout back
              to Cin channels, the same count), the first layer's (to the image's
              3 channels) included, as the image is the variable; no weight gradients;
    gram:     per style layer, the Gram matrix and its gradient, 2*C*C*h*w each
              (reported apart; the GFLOP/s figures use forward + backward only).
    """
    forward: int
    backward: int
    gram: int
    per_layer: dict[str, int] = field(default_factory=dict)  # forward FLOPs of each conv

    @property
    def total(self) -> int:
        return self.forward + self.backward


def conv_flops(config: TransferConfig, width: int, height: int) -> ConvFlops:
    """Conv FLOPs of one evaluation at a (width, height) working size, from the layer table."""
    maps = forward_maps(config, width, height)
    per_layer = {m.name: 2 * m.height * m.width * m.in_channels * m.channels * 9 for m in maps if m.kind == "conv"}
    by_name = {m.name: m for m in maps}
    gram = sum(2 * 2 * by_name[l].channels ** 2 * by_name[l].height * by_name[l].width for l in config.style_layers)
    forward = sum(per_layer.values())
    return ConvFlops(forward=forward, backward=forward, gram=gram, per_layer=per_layer)


def loglog_exponent(pixels: list[float], seconds: list[float]) -> float | None:
    """The slope of log(seconds) over log(pixels) (1.0: time linear in pixels); None for < 2 sizes."""
    if len(pixels) < 2 or len(set(pixels)) < 2:
        return None
    slope, _ = np.polyfit(np.log(np.asarray(pixels, float)), np.log(np.asarray(seconds, float)), 1)
    return float(slope)


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """(intercept, slope) of the least-squares line; None for < 2 distinct xs."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def gpu_estimate(flops: int, gpu: str) -> dict[str, Any]:
    """A FLOP-based estimate (not a measurement) of one evaluation on ``gpu``: the conv
    FLOPs at ``GPU_EFFICIENCY`` of its dense TF32 peak. Memory-bound ops (ReLU masks,
    pooling, TV) and launch overheads are left out, so the real time is likely higher."""
    peak = GPU_TF32_TFLOPS[gpu_name(gpu)] * 1e12
    low, high = GPU_EFFICIENCY
    return {"gpu": gpu_name(gpu), "tf32_dense_tflops": peak / 1e12, "efficiency": [low, high],
            "ms": [1e3 * flops / (peak * high), 1e3 * flops / (peak * low)], "kind": "estimate"}


def gpu_name(name: str) -> str:
    """The key of ``GPU_TF32_TFLOPS`` for ``name`` (case and separators ignored)."""
    def norm(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum())
    for key in GPU_TF32_TFLOPS:
        if norm(key) == norm(name):
            return key
    raise ConfigError(f"unknown GPU '{name}' for the estimate: choose one of {', '.join(GPU_TF32_TFLOPS)}")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------ machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def total_memory_bytes() -> int:
    return proc_bytes("meminfo", "MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def current_rss_bytes() -> int:
    return proc_bytes("self/status", "VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    # VmHWM is the high-water mark of this process's own address space. ru_maxrss can carry
    # the parent's after a vfork+exec (the kernel folds the old mm's mark into it at exec).
    return proc_bytes("self/status", "VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_info(threads: int) -> dict[str, Any]:
    from engine.runtime.sessions import versions

    info = {
        "cpu": cpu_model(),
        "cores": cpu_count(),
        "threads": threads,
        "memory_gib": round(total_memory_bytes() / GIB, 1),
        "platform": platform.platform(),
        "versions": versions(),
        "blas_tuning_environment": {name: os.environ.get(name) for name in BLAS_TUNING_VARIABLES},
    }
    if torch_available():
        import torch
        info["versions"]["torch"] = torch.__version__
    return info


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


class CpuMonitor:
    """How much of the machine's CPU time other processes (and the hypervisor's steal) took
    while a block ran: a benchmark on a shared machine says how much to trust itself.

    From /proc/stat's aggregate counters less this process's own CPU time (children included).
    """

    def __enter__(self) -> "CpuMonitor":
        self._start = self._read()
        self.result: dict[str, float | None] = {"other_cpu_share": None, "steal_share": None,
                                                "other_cpu_s": None, "capacity_s": None}
        return self

    def __exit__(self, *exc) -> None:
        end = self._read()
        if self._start is None or end is None:
            return
        busy, steal, total, own = (b - a for a, b in zip(self._start, end))
        if total > 0:
            other = max(0.0, busy - own)
            self.result = {"other_cpu_share": other / total, "steal_share": steal / total,
                           "other_cpu_s": other, "capacity_s": total}

    @staticmethod
    def _read() -> tuple[float, float, float, float] | None:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        user, nice, system, idle, iowait, irq, softirq, steal = values + [0] * (8 - len(values))
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return ((user + nice + system + irq + softirq) / hz, steal / hz, sum(values) / hz, own)


def wait_for_quiet(max_wait: float, threshold: float = 0.05, window: float = 1.0) -> dict[str, float | None]:
    """Wait (at most ``max_wait`` seconds) until other processes use less than ``threshold``
    of the CPU time over a ``window``; the last window's shares and the seconds waited."""
    started = time.perf_counter()
    while True:
        with CpuMonitor() as monitor:
            time.sleep(window)
        share = monitor.result["other_cpu_share"]
        waited = time.perf_counter() - started
        if share is None or share < threshold or waited >= max_wait:
            return {**monitor.result, "waited_s": waited}


# ------------------------------------------------------------------ sgemm peak

_SGEMM_CODE = r"""
import json, sys, time
import numpy as np
n, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
a @ b
times = []
for _ in range(repeats):
    t = time.perf_counter(); a @ b; times.append(time.perf_counter() - t)
blas = {}
try:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
except Exception:
    pass
print(json.dumps({"times": times, "blas": {k: blas.get(k) for k in ("name", "version", "openblas configuration")}}))
"""


def sgemm_peak(threads: int, n: int = 4096, repeats: int = 5) -> dict[str, Any]:
    """The best float32 n x n matmul rate (GFLOP/s) numpy reaches with ``threads`` threads.

    Measured in a child process with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (they
    can slow OpenBLAS down; ONNX Runtime does not use OpenBLAS) and its thread count set.
    """
    env = {k: v for k, v in os.environ.items() if k not in BLAS_TUNING_VARIABLES}
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    done = subprocess.run([sys.executable, "-c", _SGEMM_CODE, str(n), str(repeats)], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EngineError(f"the sgemm measurement failed: {done.stderr.strip()[-500:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    best = min(out["times"])
    return {"n": n, "repeats": repeats, "threads": threads, "best_s": best,
            "gflops": 2 * n ** 3 / best / 1e9, "blas": out["blas"],
            "unset_for_measurement": list(BLAS_TUNING_VARIABLES),
            "environment": {name: os.environ.get(name) for name in BLAS_TUNING_VARIABLES}}


# ------------------------------------------------------------------ timing helpers


@dataclass
class Timings:
    """One function's timed calls: wall seconds, and per call other processes' CPU seconds
    and the machine's CPU capacity (seconds x CPUs) over it (None where /proc/stat is absent)."""
    seconds: list[float] = field(default_factory=list)
    other_s: list[float | None] = field(default_factory=list)
    capacity_s: list[float | None] = field(default_factory=list)

    @property
    def other_cpu(self) -> list[float | None]:
        """Other processes' share of the CPU time during each call."""
        return [None if o is None or not c else o / c for o, c in zip(self.other_s, self.capacity_s)]

    def _keep(self, threshold: float) -> list[bool]:
        return [share is None or share < threshold for share in self.other_cpu]

    def clean(self, threshold: float) -> list[float]:
        return [t for t, k in zip(self.seconds, self._keep(threshold)) if k]

    def used(self, threshold: float, minimum: int) -> tuple[list[float], float | None]:
        """The calls to summarise and other processes' share of the CPU time over them: the
        calls below ``threshold`` when there are at least ``minimum``, else all of them."""
        keep = self._keep(threshold)
        if sum(keep) < minimum:
            keep = [True] * len(keep)
        other = [o for o, k in zip(self.other_s, keep) if k and o is not None]
        capacity = [c for c, k in zip(self.capacity_s, keep) if k and c is not None]
        share = sum(other) / sum(capacity) if capacity and sum(capacity) > 0 else None
        return [t for t, k in zip(self.seconds, keep) if k], share


def interleaved_times(functions: dict[str, Callable[[], Any]], warmup: int, repeats: int,
                      threshold: float = 0.10, max_rounds: int | None = None,
                      pause: float = 0.05) -> dict[str, Timings]:
    """Time each function, alternately (A B, then B A, ...) after ``warmup`` calls each,
    until each has ``repeats`` calls during which other processes took less than
    ``threshold`` of the CPU time, or after ``max_rounds`` rounds (3 x repeats).

    A short pause before each call lets the other library's spinning worker threads settle.
    """
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    timings = {name: Timings() for name in names}
    for r in range(max_rounds or 3 * repeats):
        if r >= repeats and all(len(t.clean(threshold)) >= repeats for t in timings.values()):
            break
        for name in (names if r % 2 == 0 else names[::-1]):
            time.sleep(pause)
            with CpuMonitor() as monitor:
                tick = time.perf_counter()
                functions[name]()
                seconds = time.perf_counter() - tick
            timings[name].seconds.append(seconds)
            timings[name].other_s.append(monitor.result["other_cpu_s"])
            timings[name].capacity_s.append(monitor.result["capacity_s"])
    return timings


class _Clock:
    def __init__(self) -> None:
        self.times: list[float] = []

    @property
    def seconds(self) -> float:
        return sum(self.times)

    def wrap(self, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            tick = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.times.append(time.perf_counter() - tick)
        return timed


class _TimedEvaluator:
    """Stands in for a Problem's evaluator, timing its calls; everything else is the evaluator's."""

    def __init__(self, inner, clock: _Clock):
        self._inner = inner
        self._call = clock.wrap(inner.__call__)

    def __call__(self, image):
        return self._call(image)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@contextmanager
def _timing_problem(problem) -> Iterator[dict[str, _Clock]]:
    """Time, inside ``problem``: ORT's ``run_with_iobinding``, the evaluator call and ``loss_and_grad``."""
    clocks = {"ort": _Clock(), "evaluator": _Clock(), "problem": _Clock()}
    evaluator = problem.evaluator
    session = evaluator.session
    session.run_with_iobinding = clocks["ort"].wrap(session.run_with_iobinding)
    problem.evaluator = _TimedEvaluator(evaluator, clocks["evaluator"])
    problem.loss_and_grad = clocks["problem"].wrap(problem.loss_and_grad)
    try:
        yield clocks
    finally:
        del problem.loss_and_grad
        problem.evaluator = evaluator
        del session.run_with_iobinding


def outside_ort_share(problem, evaluations: int, blas_threads: int | None = 1) -> dict[str, Any]:
    """Run the engine's own L-BFGS-B driver for ``evaluations`` evaluations from the
    problem's start image, and split its wall time: inside ONNX Runtime's run, the
    evaluator's copies, Problem's conversions, and the optimiser (scipy and Python).
    ``blas_threads`` as :func:`optimize.optimize` takes it."""
    from engine.run.optimize import optimize

    cfg = problem.config
    x0 = problem.initial_image()
    bounds = problem.bounds() if cfg.clip_pixels else None
    before = problem.evaluations
    with _timing_problem(problem) as clocks:
        tick = time.perf_counter()
        optimize(problem, x0, 1, evaluations, OptimizerMode.SEED, lambda *a: None, None, bounds,
                 blas_threads=blas_threads)
        total = time.perf_counter() - tick
    ort_s, evaluator_s, problem_s = (clocks[k].seconds for k in ("ort", "evaluator", "problem"))
    count = problem.evaluations - before
    return {
        "size": [problem.shape[3], problem.shape[2]], "evaluations": count, "wall_s": total,
        "ort_run_s": ort_s, "evaluator_copies_s": evaluator_s - ort_s, "problem_conversions_s": problem_s - evaluator_s,
        "optimizer_s": total - problem_s, "outside_ort_share": 1.0 - ort_s / total,
        "outside_ort_ms_per_eval": 1e3 * (total - ort_s) / max(count, 1),
        "ort_run_median_s": median(clocks["ort"].times) if clocks["ort"].times else None,
        "ort_run_times_s": clocks["ort"].times,
    }


# ------------------------------------------------------------------ child processes (fresh RSS)


def _child(spec_path: str) -> None:
    """Entry of a child process: one measurement in a fresh address space, result as JSON to spec['out']."""
    spec = json.loads(Path(spec_path).read_text())
    kinds = {"onnx": _child_onnx, "torch": _child_torch, "lbfgs": _child_lbfgs}
    result = kinds[spec["kind"]](spec)
    Path(spec["out"]).write_text(json.dumps(result))


def _child_onnx(spec: dict) -> dict:
    """Time to first evaluation (fresh sessions) and the peak RSS of ``evals`` evaluations."""
    from engine.run import engine as run_engine, transfer
    from engine.graph import lossgrad

    baseline = current_rss_bytes()
    sessions, graphs = _Clock(), _Clock()
    run_engine.create_session = sessions.wrap(run_engine.create_session)
    lossgrad.graph_paths = graphs.wrap(lossgrad.graph_paths)
    config = TransferConfig(**spec["config"])
    tick = time.perf_counter()
    st = transfer.StyleTransfer(config, models_dir=spec["models_dir"], provider=spec["provider"],
                                threads=spec["threads"])
    problem = st.prepare(spec["content"], spec["style"])
    prepared = time.perf_counter()
    from_command = time.time() - spec["spawned"]  # the process's start and imports included
    x = problem.initial_image()
    problem.loss_and_grad(x)
    first = time.perf_counter()
    for _ in range(spec["evals"] - 1):
        problem.loss_and_grad(x)
    return {"baseline_rss": baseline, "peak_rss": peak_rss_bytes(), "prepare_s": prepared - tick,
            "graphs_s": graphs.seconds, "sessions_s": sessions.seconds, "first_eval_s": first - prepared,
            "time_to_first_eval_s": first - tick, "command_to_ready_s": from_command, "provider": problem.provider,
            "size": [problem.shape[3], problem.shape[2]]}


def _child_lbfgs(spec: dict) -> dict:
    """:func:`outside_ort_share` in a fresh process (its BLAS threads as the environment sets them)."""
    from engine.run.transfer import StyleTransfer

    config = TransferConfig(**spec["config"])
    st = StyleTransfer(config, models_dir=spec["models_dir"], provider=spec["provider"], threads=spec["threads"])
    problem = st.prepare(spec["content"], spec["style"])
    x = problem.initial_image()
    for _ in range(2):  # the first runs after binding allocate; an optimisation runs long past them
        problem.loss_and_grad(x)
    with CpuMonitor() as monitor:
        result = outside_ort_share(problem, spec["evals"], spec["blas_threads"])
    return {**result, "contention": monitor.result}


def _child_torch(spec: dict) -> dict:
    """Peak RSS of PyTorch's loss for ``evals`` evaluations (weights and targets included)."""
    import torch  # noqa: F401  (counted in the baseline, as onnxruntime is in the ONNX child's)

    from engine.models.weights import load_weights

    baseline = current_rss_bytes()
    config = TransferConfig(**spec["config"])
    arrays = np.load(spec["arrays"])
    reference = TorchLoss(config, load_weights(spec["model"], config.convnet).layers, spec["threads"])
    reference.set_targets(arrays["content"], [arrays["style"]])
    for _ in range(spec["evals"]):
        reference.loss_and_grad(arrays["x"])
    return {"baseline_rss": baseline, "peak_rss": peak_rss_bytes()}


def run_child(spec: dict, env: dict[str, str] | None = None) -> dict:
    """Run one child measurement (``python -m benchmarks.harness --child``), with ``env`` added to
    the environment; its dict back."""
    with tempfile.TemporaryDirectory(prefix="nst-bench-") as folder:
        spec_path, out = Path(folder) / "spec.json", Path(folder) / "out.json"
        spec = {**spec, "out": str(out), "spawned": time.time()}
        if "arrays_data" in spec:
            np.savez(Path(folder) / "arrays.npz", **spec.pop("arrays_data"))
            spec["arrays"] = str(Path(folder) / "arrays.npz")
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        done = subprocess.run([sys.executable, "-m", "benchmarks.harness", "--child", str(spec_path)],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.is_file():
            last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
            raise EngineError(f"a benchmark child process ({spec['kind']}) failed: {last}")
        return json.loads(out.read_text())


# ------------------------------------------------------------------ the benchmark


@dataclass(frozen=True)
class BenchOptions:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    repeats: int = 7
    warmup: int = 2
    provider: Provider = Provider.AUTO
    threads: int | None = None          # None: every core this process may use
    lbfgs_evals: int = 20
    lbfgs_size: int = 256
    gpu: str = "H200"
    torch: bool = True                  # compare with PyTorch when it is importable
    preset: str = DEFAULT_PRESET
    content: Path = EXAMPLE_CONTENT
    style: Path = EXAMPLE_STYLE
    models_dir: Path | None = None
    rss_evals: int = 3                  # evaluations in each fresh-process RSS measurement
    quiet_wait: float = 120.0           # seconds to wait, before each timing, for other processes to go idle
    sgemm_n: int = 4096

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ConfigError("no sizes given: e.g. --sizes 128,256,512")
        if self.repeats < 1 or self.warmup < 0 or self.lbfgs_evals < 0 or self.rss_evals < 1 or self.quiet_wait < 0:
            raise ConfigError("repeats and rss evaluations must be at least 1, warm-up and L-BFGS evaluations at least 0")
        gpu_name(self.gpu)
        for path in (self.content, self.style):
            if not Path(path).is_file():
                raise ConfigError(f"benchmark image {path} not found: pass --content/--style")


def least_disturbed(measure: Callable[[], tuple[Any, float | None]], quiet_wait: float, threshold: float,
                    tries: int = 3) -> tuple[Any, float | None]:
    """Run ``measure`` (returning (result, other processes' CPU share during it)) after
    waiting for quiet, again while the share is at or over ``threshold``, at most ``tries``
    times; the least disturbed (result, share)."""
    best: tuple[Any, float | None] | None = None
    for _ in range(tries):
        wait_for_quiet(quiet_wait)
        result, share = measure()
        if best is None or (share is not None and (best[1] is None or share < best[1])):
            best = (result, share)
        if share is None or share < threshold:
            break
    assert best is not None
    return best


def _monitored(function: Callable[[], dict]) -> Callable[[], tuple[dict, float | None]]:
    """``function`` as a measurement for :func:`least_disturbed`, its result carrying the contention."""
    def measure() -> tuple[dict, float | None]:
        with CpuMonitor() as monitor:
            result = function()
        result.setdefault("contention", monitor.result)
        return result, result["contention"]["other_cpu_share"]
    return measure


def run_benchmark(options: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark; the results as a JSON-ready dict (see :func:`markdown` for the keys read)."""
    from engine.graph.lossgrad import GRAPH_VERSION
    from engine.models.store import find_model
    from engine.presets import preset_config
    from engine.run.transfer import StyleTransfer
    from engine.models.weights import load_weights

    from engine.runtime.sessions import probe_provider

    emit = progress or (lambda step: None)
    probe_provider(options.provider)  # a provider that cannot start: one clear error before any measuring
    threads = options.threads or cpu_count()
    load_before = os.getloadavg()
    started = time.perf_counter()
    config = preset_config(options.preset)
    model = find_model(config.convnet, options.models_dir)
    use_torch = options.torch and torch_available()
    result: dict[str, Any] = {
        "date": _dt.date.today().isoformat(),
        "machine": machine_info(threads),
        "settings": {"preset": options.preset, "convnet": config.convnet, "content_layer": config.content_layer,
                     "style_layers": list(config.style_layers), "pooling": config.pooling.value,
                     "content": _display_path(options.content), "style": _display_path(options.style),
                     "sizes": list(options.sizes), "repeats": options.repeats, "warmup": options.warmup,
                     "requested_provider": options.provider.value, "threads": threads,
                     "rss_evaluations": options.rss_evals, "graph_version": GRAPH_VERSION},
        "torch": {"available": torch_available(), "used": use_torch},
    }

    st = StyleTransfer(config, models_dir=options.models_dir, provider=options.provider, threads=threads)
    content_size = load_image(options.content).size
    for size in options.sizes:  # a size too small for the layers: one clear error before any measuring
        st.sizes_for(content_size, size)

    emit(BenchStep(f"sgemm peak: numpy float32 {options.sgemm_n}x{options.sgemm_n} matmul, {threads} threads "
                   f"(child process, {' and '.join(BLAS_TUNING_VARIABLES)} unset)"))
    result["sgemm"], _ = least_disturbed(_monitored(lambda: sgemm_peak(threads, options.sgemm_n)),
                                         options.quiet_wait, CONTENTION_WARNING)

    reference = TorchLoss(config, load_weights(model, config.convnet).layers, threads) if use_torch else None
    base_spec = {"config": config.to_dict(), "models_dir": str(options.models_dir) if options.models_dir else None,
                 "provider": options.provider.value, "threads": threads, "evals": options.rss_evals,
                 "content": str(options.content), "style": str(options.style), "model": str(model)}
    sizes = [_measure_size(options, config.replace(size=size), st, reference, base_spec, result["sgemm"], emit)
             for size in options.sizes]
    result["sizes"] = sizes
    result["provider"] = sizes[-1]["provider"]

    if options.lbfgs_evals:
        spec = {**base_spec, "kind": "lbfgs", "evals": options.lbfgs_evals,
                "config": config.replace(size=options.lbfgs_size).to_dict()}
        # The engine's driver (scipy's BLAS on one thread), then the same with its threads as set.
        for variant, blas_threads in {"engine": 1, "blas_threads_as_set": None}.items():
            emit(BenchStep(f"L-BFGS-B: {options.lbfgs_evals} evaluations at {options.lbfgs_size} px in a fresh "
                           f"process (scipy's BLAS threads: {blas_threads or 'as set'}), "
                           "timing inside and outside ONNX Runtime"))
            run, _ = least_disturbed(_monitored(lambda: run_child({**spec, "blas_threads": blas_threads})),
                                     options.quiet_wait, CONTENTION_WARNING)
            run["blas_threads"] = blas_threads
            if variant == "engine":
                result["lbfgs"] = run
            else:
                result["lbfgs"][variant] = run

    result["scaling"] = _scaling(sizes, reference is not None)
    result["memory"] = _memory(config, sizes, sizes[-1]["winograd"])
    if result["provider"] != "CUDAExecutionProvider":
        result["gpu_estimate"] = {"gpu": gpu_name(options.gpu), "kind": "estimate",
                                  "note": "FLOP-based estimate from the dense TF32 peak, not a measurement",
                                  "sizes": [{"size": e["size"], "width": e["width"], "height": e["height"],
                                             **gpu_estimate(round(e["conv_gflop"] * 1e9), options.gpu)}
                                            for e in sizes]}
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    result["seconds"] = time.perf_counter() - started
    return result


def _measure_size(options: BenchOptions, cfg: TransferConfig, st, reference: TorchLoss | None, base_spec: dict,
                  sgemm: dict, emit: Progress) -> dict[str, Any]:
    """One size: time to first evaluation and peak RSS (fresh processes), the PyTorch check,
    and the interleaved timings."""
    size = cfg.size
    emit(BenchStep(f"{size} px: time to first evaluation and peak RSS in a fresh process"))
    child, _ = least_disturbed(_monitored(lambda: run_child({**base_spec, "kind": "onnx", "config": cfg.to_dict()})),
                               options.quiet_wait, CALL_CONTENTION)
    emit(BenchStep(f"{size} px: preparing"))
    problem = st.prepare(options.content, options.style, size)
    width, height = problem.shape[3], problem.shape[2]
    x = problem.initial_image()
    flops = conv_flops(cfg, width, height)
    entry: dict[str, Any] = {
        "size": size, "width": width, "height": height, "pixels": width * height, "provider": problem.provider,
        "conv_gflop": flops.total / 1e9, "conv_forward_gflop": flops.forward / 1e9, "gram_gflop": flops.gram / 1e9,
        "time_to_first_eval_s": child["time_to_first_eval_s"], "first_eval_contention": child["contention"],
        **{key: child[key] for key in ("prepare_s", "command_to_ready_s", "sessions_s", "graphs_s", "first_eval_s")},
        "rss": {"onnx_peak": child["peak_rss"], "onnx_baseline": child["baseline_rss"]},
        "winograd": problem.runtime["winograd"],
        "estimate_eval_bytes": estimate_eval_bytes(cfg, width, height, problem.runtime["winograd"]),
        "estimate_breakdown": eval_memory_breakdown(cfg, width, height, problem.runtime["winograd"]),
    }
    functions = {"onnx": lambda: problem.loss_and_grad(x)}
    if reference is not None:
        reference.set_targets(problem.content, problem.styles)
        check = check_torch(problem, reference, x)
        entry["torch_check"] = check
        emit(BenchStep(f"{size} px: engine loss {check['engine_loss']:.6e}, PyTorch {check['torch_loss']:.6e} "
                       f"(relative difference {check['loss_rel_err']:.1e}, gradient {check['grad_rel_err']:.1e})"))
        if not check["loss_rel_err"] < 1e-3:
            raise EngineError(f"at {size} px the PyTorch loss differs from the engine's by "
                              f"{check['loss_rel_err']:.2e} (relative): not timing two different losses")
        functions["torch"] = lambda: reference.loss_and_grad(x)
    emit(BenchStep(f"{size} px ({width}x{height}): timing {options.warmup} warm-up + {options.repeats} "
                   f"evaluations{' each, interleaved with PyTorch' if reference is not None else ''}"))
    quiet = wait_for_quiet(options.quiet_wait)
    with CpuMonitor() as monitor:
        timings = interleaved_times(functions, options.warmup, options.repeats, CALL_CONTENTION)
    shares: list[float] = []
    for name, t in timings.items():
        used, share = t.used(CALL_CONTENTION, max(1, options.repeats // 2))
        shares += [share] if share is not None else []
        m = median(used)
        entry[name] = {"median_s": m, "min_s": min(used), "max_s": max(used), "times_s": t.seconds,
                       "other_cpu_per_call": t.other_cpu, "calls_used": len(used),
                       "gflops": flops.total / m / 1e9, "ms_per_megapixel": 1e3 * m / (width * height / 1e6),
                       "share_of_sgemm_peak": flops.total / m / 1e9 / sgemm["gflops"]}
    entry["contention"] = {**monitor.result, "waited_s": quiet["waited_s"],
                           "used_calls_other_cpu_share": max(shares, default=None)}
    if reference is not None:
        entry["onnx_over_torch"] = entry["onnx"]["median_s"] / entry["torch"]["median_s"]
        emit(BenchStep(f"{size} px: PyTorch peak RSS in a fresh process"))
        child = run_child({**base_spec, "kind": "torch", "config": cfg.to_dict(),
                           "arrays_data": {"content": problem.content, "style": problem.styles[0], "x": x}})
        entry["rss"].update(torch_peak=child["peak_rss"], torch_baseline=child["baseline_rss"])
    return entry


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _scaling(sizes: list[dict], with_torch: bool) -> dict[str, Any]:
    pixels = [e["pixels"] for e in sizes]
    out = {"onnx_exponent": loglog_exponent(pixels, [e["onnx"]["median_s"] for e in sizes]),
           "ms_per_megapixel": {str(e["size"]): e["onnx"]["ms_per_megapixel"] for e in sizes}}
    if with_torch:
        out["torch_exponent"] = loglog_exponent(pixels, [e["torch"]["median_s"] for e in sizes])
    return out


def _memory(config: TransferConfig, sizes: list[dict], winograd: bool) -> dict[str, Any]:
    """Largest square working size that fits in the machine's memory (less the baseline RSS):
    by a line through the measured peak RSS (the engine as it runs now) and by the tensor
    estimate (of the graph the engine ran, Winograd or direct), each for one evaluation and for
    a run (plus L-BFGS-B's state)."""
    total = total_memory_bytes()
    baseline = max(e["rss"]["onnx_baseline"] for e in sizes)
    budget = total - baseline
    multiple = config.size_multiple()

    def fits(bytes_for: Callable[[int, int], float]) -> int:
        return largest_square(bytes_for, budget, multiple)

    largest = {"estimate_eval": fits(lambda w, h: estimate_eval_bytes(config, w, h, winograd)),
               "estimate_run": fits(lambda w, h: estimate_eval_bytes(config, w, h, winograd)
                                    + estimate_optimizer_bytes(w, h))}
    out: dict[str, Any] = {"total_bytes": total, "baseline_rss_bytes": baseline, "multiple": multiple,
                           "largest_square": largest}
    fit = linear_fit([e["pixels"] for e in sizes], [e["rss"]["onnx_peak"] - e["rss"]["onnx_baseline"] for e in sizes])
    if fit is not None and fit[1] > 0:
        intercept, slope = fit
        out["measured_fit"] = {"intercept_bytes": intercept, "bytes_per_pixel": slope}
        largest["measured_eval"] = fits(lambda w, h: intercept + slope * w * h)
        largest["measured_run"] = fits(lambda w, h: intercept + slope * w * h + estimate_optimizer_bytes(w, h))
    return out


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child(sys.argv[2])
