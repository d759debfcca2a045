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
results as plain dicts (JSON-ready); :func:`markdown` and :func:`write_results`
render them.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import vgg
from .config import OptimizerMode, Pooling, Provider, StyleNormalization, TransferConfig
from .errors import ConfigError, EngineError
from .files import atomic_write_text
from .images import load_image
from .memory import (GIB, estimate_eval_bytes, estimate_optimizer_bytes, eval_memory_breakdown,
                     forward_maps, largest_square, proc_bytes)

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
    from .runtime import versions

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


# ------------------------------------------------------------------ the PyTorch reference


class TorchLoss:
    """The engine's loss in PyTorch eager mode, float32, on the same conv weights.

    Same terms as the loss-gradient graph: ``content_weight * sum((F - T)^2)``; per
    style layer ``weight / len(layers) / (4 (h w)^2) * sum((G - G_t)^2)`` with
    ``G = F F^T`` (F as (C, h w)); the seed's total variation with its slicing; 2x2
    max pooling between blocks. Its targets are computed here, in PyTorch, from the
    same preprocessed images, so a match checks the targets too.
    """

    def __init__(self, config: TransferConfig, weights: dict[str, tuple[np.ndarray, np.ndarray]], threads: int):
        import torch

        if config.pooling is not Pooling.MAX:
            raise ConfigError("the PyTorch reference covers max pooling only: use a max-pooling preset or --no-torch")
        torch.set_num_threads(threads)
        self.torch = torch
        self.config = config
        names = vgg.conv_layer_names(config.convnet)
        self.deepest = max([config.content_layer, *config.style_layers], key=names.index)
        self.layers = []
        for layer in vgg.conv_layers(config.convnet):
            w, b = weights[layer.name]
            self.layers.append((layer, torch.from_numpy(np.array(w, np.float32)),
                                torch.from_numpy(np.array(b, np.float32))))
            if layer.name == self.deepest:
                break
        self.shape: tuple[int, ...] = ()

    def features(self, x):
        """{layer: (1, C, h, w)} at the content and style layers."""
        F = self.torch.nn.functional
        wanted = {self.config.content_layer, *self.config.style_layers}
        out, block = {}, 1
        for layer, w, b in self.layers:
            if layer.block != block:
                x, block = F.max_pool2d(x, 2), layer.block
            x = F.relu(F.conv2d(x, w, b, padding=1))
            if layer.name in wanted:
                out[layer.name] = x
        return out

    @staticmethod
    def gram(f):
        flat = f.reshape(f.shape[1], -1)
        return flat @ flat.T

    def set_targets(self, content: np.ndarray, styles: list[np.ndarray]) -> None:
        """Targets and per-layer weights as ``StyleTransfer.prepare`` derives them."""
        torch, cfg = self.torch, self.config
        self.shape = tuple(content.shape)
        height, width = content.shape[2], content.shape[3]
        blend = np.asarray(cfg.style_blend or [1.0] * len(styles), np.float64)
        blend = blend / blend.sum()
        with torch.no_grad():
            self.content_target = self.features(torch.from_numpy(np.ascontiguousarray(content, np.float32)))[
                cfg.content_layer].clone()
            grams = {layer: 0.0 for layer in cfg.style_layers}
            for weight, style in zip(blend, styles):
                feats = self.features(torch.from_numpy(np.ascontiguousarray(style, np.float32)))
                positions = (width * height) / (style.shape[2] * style.shape[3])
                for layer in cfg.style_layers:
                    grams[layer] = grams[layer] + float(weight * positions) * self.gram(feats[layer]).double()
        self.gram_targets = {layer: g.float() for layer, g in grams.items()}
        self.coefficients = {}
        for layer, weight in zip(cfg.style_layers, cfg.style_weights):
            info = vgg.conv_layer(cfg.convnet, layer)
            positions = (width // info.downsampling) * (height // info.downsampling)
            if cfg.style_normalization is StyleNormalization.GATYS:
                weight *= 1e3 / info.out_channels ** 2
            self.coefficients[layer] = weight / len(cfg.style_layers) / (4.0 * positions ** 2)

    def terms(self, x):
        """The weighted terms at x (a (1,3,H,W) tensor): loss, content, style.<layer>, tv."""
        cfg = self.config
        feats = self.features(x)
        terms = {"content": cfg.content_weight * ((feats[cfg.content_layer] - self.content_target) ** 2).sum()}
        for layer in cfg.style_layers:
            diff = self.gram(feats[layer]) - self.gram_targets[layer]
            terms[f"style.{layer}"] = self.coefficients[layer] * (diff ** 2).sum()
        a = x[:, :, :-1, :-1] - x[:, :, 1:, :-1]
        c = x[:, :, :-1, :-1] - x[:, :, :-1, 1:]
        terms["tv"] = cfg.tv_weight * (a ** 2 + c ** 2).sum()
        total = terms["content"]
        for name, value in terms.items():
            if name != "content":
                total = total + value
        terms["loss"] = total
        return terms

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """As ``Problem.loss_and_grad``: x float64 in, (loss, float64 gradient of x's shape) out."""
        xt = self.torch.from_numpy(np.asarray(x, np.float32).reshape(self.shape)).requires_grad_(True)
        loss = self.terms(xt)["loss"]
        loss.backward()
        return float(loss.detach()), xt.grad.numpy().astype(np.float64).reshape(np.shape(x))

    def evaluate_terms(self, x: np.ndarray) -> dict[str, float]:
        with self.torch.no_grad():
            t = self.terms(self.torch.from_numpy(np.asarray(x, np.float32).reshape(self.shape)))
        return {k: float(v) for k, v in t.items()}


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def check_torch(problem, reference: TorchLoss, x: np.ndarray) -> dict[str, Any]:
    """Relative differences of the loss, each term and the gradient (L2) between engine and PyTorch."""
    engine_terms = problem.terms(x)
    loss, grad = problem.loss_and_grad(x)
    torch_loss, torch_grad = reference.loss_and_grad(x)
    torch_terms = reference.evaluate_terms(x)
    names = ["content", "tv", *(f"style.{l}" for l in problem.config.style_layers)]
    return {
        "engine_loss": loss, "torch_loss": torch_loss,
        "loss_rel_err": _relative(torch_loss, loss),
        "terms_rel_err": {n: _relative(torch_terms[n], engine_terms[n]) for n in names},
        "grad_rel_err": float(np.linalg.norm(torch_grad - grad) / max(np.linalg.norm(grad), 1e-30)),
    }


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
    from .optimize import optimize

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
    from . import transfer
    from .graph import lossgrad

    baseline = current_rss_bytes()
    sessions, graphs = _Clock(), _Clock()
    transfer.create_session = sessions.wrap(transfer.create_session)
    lossgrad.graph_paths = graphs.wrap(lossgrad.graph_paths)
    config = TransferConfig(**spec["config"])
    tick = time.perf_counter()
    st = transfer.StyleTransfer(config, models_dir=spec["models_dir"], provider=spec["provider"],
                                threads=spec["threads"])
    problem = st.prepare(spec["content"], spec["style"])
    prepared = time.perf_counter()
    x = problem.initial_image()
    problem.loss_and_grad(x)
    first = time.perf_counter()
    for _ in range(spec["evals"] - 1):
        problem.loss_and_grad(x)
    return {"baseline_rss": baseline, "peak_rss": peak_rss_bytes(), "prepare_s": prepared - tick,
            "graphs_s": graphs.seconds, "sessions_s": sessions.seconds, "first_eval_s": first - prepared,
            "time_to_first_eval_s": first - tick, "provider": problem.provider,
            "size": [problem.shape[3], problem.shape[2]]}


def _child_lbfgs(spec: dict) -> dict:
    """:func:`outside_ort_share` in a fresh process (its BLAS threads as the environment sets them)."""
    from .transfer import StyleTransfer

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

    from .weights import load_weights

    baseline = current_rss_bytes()
    config = TransferConfig(**spec["config"])
    arrays = np.load(spec["arrays"])
    reference = TorchLoss(config, load_weights(spec["model"], config.convnet).layers, spec["threads"])
    reference.set_targets(arrays["content"], [arrays["style"]])
    for _ in range(spec["evals"]):
        reference.loss_and_grad(arrays["x"])
    return {"baseline_rss": baseline, "peak_rss": peak_rss_bytes()}


def run_child(spec: dict, env: dict[str, str] | None = None) -> dict:
    """Run one child measurement (``python -m engine.bench --child``), with ``env`` added to
    the environment; its dict back."""
    with tempfile.TemporaryDirectory(prefix="nst-bench-") as folder:
        spec_path, out = Path(folder) / "spec.json", Path(folder) / "out.json"
        spec = {**spec, "out": str(out)}
        if "arrays_data" in spec:
            np.savez(Path(folder) / "arrays.npz", **spec.pop("arrays_data"))
            spec["arrays"] = str(Path(folder) / "arrays.npz")
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        done = subprocess.run([sys.executable, "-m", "engine.bench", "--child", str(spec_path)],
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
    from .graph.lossgrad import GRAPH_VERSION
    from .models import find_model
    from .presets import preset_config
    from .transfer import StyleTransfer
    from .weights import load_weights

    from .runtime import probe_provider

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
    result["memory"] = _memory(config, sizes)
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
        **{key: child[key] for key in ("prepare_s", "sessions_s", "graphs_s", "first_eval_s")},
        "rss": {"onnx_peak": child["peak_rss"], "onnx_baseline": child["baseline_rss"]},
        "estimate_eval_bytes": estimate_eval_bytes(cfg, width, height),
        "estimate_breakdown": eval_memory_breakdown(cfg, width, height),
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


def _memory(config: TransferConfig, sizes: list[dict]) -> dict[str, Any]:
    """Largest square working size that fits in the machine's memory (less the baseline RSS):
    by a line through the measured peak RSS (the engine as it runs now) and by the tensor
    estimate, each for one evaluation and for a run (plus L-BFGS-B's state)."""
    total = total_memory_bytes()
    baseline = max(e["rss"]["onnx_baseline"] for e in sizes)
    budget = total - baseline
    multiple = config.size_multiple()

    def fits(bytes_for: Callable[[int, int], float]) -> int:
        return largest_square(bytes_for, budget, multiple)

    largest = {"estimate_eval": fits(lambda w, h: estimate_eval_bytes(config, w, h)),
               "estimate_run": fits(lambda w, h: estimate_eval_bytes(config, w, h) + estimate_optimizer_bytes(w, h))}
    out: dict[str, Any] = {"total_bytes": total, "baseline_rss_bytes": baseline, "multiple": multiple,
                           "largest_square": largest}
    fit = linear_fit([e["pixels"] for e in sizes], [e["rss"]["onnx_peak"] - e["rss"]["onnx_baseline"] for e in sizes])
    if fit is not None and fit[1] > 0:
        intercept, slope = fit
        out["measured_fit"] = {"intercept_bytes": intercept, "bytes_per_pixel": slope}
        largest["measured_eval"] = fits(lambda w, h: intercept + slope * w * h)
        largest["measured_run"] = fits(lambda w, h: intercept + slope * w * h + estimate_optimizer_bytes(w, h))
    return out


# ------------------------------------------------------------------ rendering




def _used_share(contention: dict | None) -> float | None:
    """Other processes' CPU share in what a result uses: over its kept calls, else its section's."""
    if not contention:
        return None
    share = contention.get("used_calls_other_cpu_share")
    return share if share is not None else contention.get("other_cpu_share")


def _share(contention: dict | None) -> str:
    share = _used_share(contention)
    return "–" if share is None else f"{100 * share:.0f}%"


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / MIB:,.0f}"


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: machine line, timing and memory tables, then the one-off measurements."""
    m, s, sg = result["machine"], result["settings"], result["sgemm"]
    v = m["versions"]
    torch_used = result["torch"]["used"]
    lines = [
        f"# Benchmark {result['date']}: one loss+gradient evaluation",
        "",
        f"- machine: {m['cores']} cores of an {m['cpu']}, {m['memory_gib']} GiB; {s['threads']} threads",
        f"- provider: {result['provider']}; onnxruntime {v.get('onnxruntime')}, numpy {v.get('numpy')}, "
        f"scipy {v.get('scipy')}" + (f", torch {v['torch']}" if "torch" in v else "") + f", python {v.get('python')}",
        f"- model: {s['convnet']} `{s['preset']}` layers (content {s['content_layer']}, style "
        f"{', '.join(s['style_layers'])}), {s['pooling']} pooling; images {s['content']}, {s['style']}",
        f"- {s['warmup']} warm-up, then median of {s['repeats']} evaluations"
        + (", interleaved with PyTorch eager autograd in the same process" if torch_used else "")
        + f"; load average before/after: {result['load_average']['before'][0]:.2f}/{result['load_average']['after'][0]:.2f}",
        f"- sgemm peak: {sg['gflops']:.0f} GFLOP/s (numpy float32 {sg['n']}x{sg['n']} matmul, best of "
        f"{sg['repeats']}, {sg['threads']} threads, {sg['blas'].get('name')} {sg['blas'].get('version')}; measured "
        f"with {', '.join(sg['unset_for_measurement'])} unset; in the environment: "
        + ", ".join(f"{k}={val if val is not None else 'unset'}" for k, val in sg["environment"].items()) + ")",
        "",
        "## Time per evaluation",
        "",
    ]
    header = ["size", "pixels", "engine ms", "engine GFLOP/s", "of sgemm peak"]
    if torch_used:
        header += ["PyTorch ms", "PyTorch GFLOP/s", "engine / PyTorch"]
    header += ["conv GFLOP", "ms per MP", "ready s", "first eval done s", "others' CPU"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in result["sizes"]:
        row = [f"{e['width']}x{e['height']}", f"{e['pixels']:,}", f"{1e3 * e['onnx']['median_s']:.1f}",
               f"{e['onnx']['gflops']:.0f}", f"{100 * e['onnx']['share_of_sgemm_peak']:.0f}%"]
        if torch_used:
            row += [f"{1e3 * e['torch']['median_s']:.1f}", f"{e['torch']['gflops']:.0f}", f"{e['onnx_over_torch']:.2f}"]
        row += [f"{e['conv_gflop']:.1f}", f"{e['onnx']['ms_per_megapixel']:.0f}", f"{e['prepare_s']:.2f}",
                f"{e['time_to_first_eval_s']:.2f}", _share(e.get("contention"))]
        lines.append("| " + " | ".join(row) + " |")
    sc = result["scaling"]
    shares = [share for share in map(_used_share, [*(e.get("contention") for e in result["sizes"]),
                                                     sg.get("contention"), result.get("lbfgs", {}).get("contention")])
              if share is not None]
    if shares and max(shares) > CONTENTION_WARNING:
        lines += ["", f"**Warning:** other processes used up to {100 * max(shares):.0f}% of the machine's CPU time "
                  "during these measurements; the times are inflated by that much or more. Rerun on a quiet machine."]
    set_aside = sum(len(e[k]["times_s"]) - e[k]["calls_used"] for e in result["sizes"] for k in ("onnx", "torch")
                    if k in e and "calls_used" in e[k])
    if set_aside:
        lines += ["", f"{set_aside} timed calls during which other processes took over {100 * CALL_CONTENTION:.0f}% "
                  "of the CPU time were set aside and made again (all kept in the JSON)."]
    spread = "; ".join(
        f"{e['width']}x{e['height']} engine {1e3 * e['onnx']['min_s']:.0f}-{1e3 * e['onnx']['max_s']:.0f} ms"
        + (f", PyTorch {1e3 * e['torch']['min_s']:.0f}-{1e3 * e['torch']['max_s']:.0f} ms" if "torch" in e else "")
        for e in result["sizes"])
    lines += ["", f"Spread of the calls used (min-max): {spread}. On a shared virtual machine absolute times move "
              "between runs" + ("; the ratio of the interleaved timings moves much less." if torch_used else ".")]
    lines += ["", "GFLOP/s counts the 3x3 convs only: forward and input gradient (no weight gradients). "
              "'ready': a fresh process's StyleTransfer.prepare (graphs, sessions started, targets computed: the "
              "time to the first evaluation); 'first eval done': that plus the first evaluation."]
    notes = []
    if sc.get("onnx_exponent") is not None:
        notes.append(f"Scaling: time grows as pixels^{sc['onnx_exponent']:.2f} (engine)"
                     + (f", pixels^{sc['torch_exponent']:.2f} (PyTorch)" if sc.get("torch_exponent") is not None else "")
                     + " (log-log fit over the sizes above).")
    if torch_used:
        worst = max(max(e["torch_check"]["loss_rel_err"], e["torch_check"]["grad_rel_err"]) for e in result["sizes"])
        notes.append(f"PyTorch's loss and gradient match the engine's at every size (largest relative "
                     f"difference {worst:.1e}).")
    if notes:
        lines += ["", *notes]
    lines += ["", "## Memory", "", "| size | engine peak RSS MiB | engine above baseline MiB | estimate MiB | "
              "estimate / measured" + (" | PyTorch peak RSS MiB | PyTorch above baseline MiB |" if torch_used else " |"),
              "|---|---|---|---|---|" + ("---|---|" if torch_used else "")]
    for e in result["sizes"]:
        r = e["rss"]
        above = r["onnx_peak"] - r["onnx_baseline"]
        row = [f"{e['width']}x{e['height']}", _mib(r["onnx_peak"]), _mib(above), _mib(e["estimate_eval_bytes"]),
               f"{e['estimate_eval_bytes'] / above:.2f}" if above > 0 else "–"]
        if torch_used:
            row += [_mib(r.get("torch_peak")), _mib(r["torch_peak"] - r["torch_baseline"]) if "torch_peak" in r else "–"]
        lines.append("| " + " | ".join(row) + " |")
    mem = result["memory"]
    big = mem["largest_square"]
    lines += ["", f"Peak RSS: each size in a fresh process ({s['rss_evaluations']} evaluations; VmHWM); the baseline "
              "is its RSS after imports. The estimate counts the tensors alive at an evaluation's peak, as an "
              "allocator freeing each after its last use would hold them, plus host copies and weights.", ""]
    room = f"{mem['total_bytes'] / GIB:.1f} GiB less the {_mib(mem['baseline_rss_bytes'])} MiB baseline"
    if "measured_run" in big:
        lines.append(f"Largest square working size that fits in {room} (extrapolated, not run): "
                     f"**{big['measured_run']} px** for a run (a line through the measured peak RSS, "
                     f"{mem['measured_fit']['bytes_per_pixel']:.0f} bytes per pixel, plus L-BFGS-B's state), "
                     f"{big['measured_eval']} px for one evaluation; by the tensor estimate "
                     f"{big['estimate_run']} px for a run, {big['estimate_eval']} px for one evaluation.")
    else:
        lines.append(f"Largest square working size that fits in {room} by the tensor estimate (extrapolated, not "
                     f"run): {big['estimate_run']} px for a run (with L-BFGS-B's state), {big['estimate_eval']} px "
                     "for one evaluation.")
    if "lbfgs" in result:
        lb = result["lbfgs"]
        lines += ["", "## Time outside ONNX Runtime", "",
                  f"An L-BFGS-B run (the engine's driver, scipy's BLAS on one thread) of {lb['evaluations']} "
                  f"evaluations at {lb['size'][0]}x{lb['size'][1]}: {lb['wall_s']:.2f} s wall, {100 * lb['outside_ort_share']:.1f}% "
                  f"outside ONNX Runtime's run ({lb['outside_ort_ms_per_eval']:.1f} ms per evaluation: "
                  f"optimiser {lb['optimizer_s']:.3f} s, Problem's conversions {lb['problem_conversions_s']:.3f} s, "
                  f"evaluator copies {lb['evaluator_copies_s']:.3f} s); ONNX Runtime's run took "
                  f"{1e3 * lb['ort_run_median_s']:.0f} ms (median) there."]
        other = lb.get("blas_threads_as_set")
        if other:
            lines.append(f"The same with scipy's BLAS threads as set (all cores unless limited): "
                         f"{100 * other['outside_ort_share']:.1f}% outside ({other['outside_ort_ms_per_eval']:.1f} ms "
                         f"per evaluation), ONNX Runtime's run {1e3 * other['ort_run_median_s']:.0f} ms (median). "
                         "Each in a fresh process, after 2 warm-up evaluations.")
    if "gpu_estimate" in result:
        g = result["gpu_estimate"]
        first = g["sizes"][0]
        lines += ["", f"## GPU: estimate, not measured ({g['gpu']})", "",
                  f"No CUDA session here. Conv FLOPs at {100 * first['efficiency'][0]:.0f}-"
                  f"{100 * first['efficiency'][1]:.0f}% of the {g['gpu']}'s dense TF32 peak "
                  f"({first['tf32_dense_tflops']} TFLOP/s) would take: "
                  + "; ".join(f"{e['width']}x{e['height']} {e['ms'][0]:.2f}-{e['ms'][1]:.2f} ms" for e in g["sizes"])
                  + " per evaluation (memory-bound ops and launch overhead not included)."]
    return "\n".join(lines) + "\n"


def result_stem(result: dict[str, Any]) -> str:
    kind = "cuda" if result.get("provider") == "CUDAExecutionProvider" else "cpu"
    return f"{result['date']}-{kind}"


def write_results(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<out_dir>/<date>-<cpu|cuda>.json`` and ``.md`` atomically; their paths."""
    out_dir = Path(out_dir)
    stem = result_stem(result)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(result, indent=2, default=_json_default) + "\n")
    atomic_write_text(md_path, markdown(result))
    return json_path, md_path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child(sys.argv[2])
