"""ONNX Runtime sessions: provider choice, and the loss-gradient evaluator.

The evaluator binds the targets and weights once and, per evaluation, moves only
the image in and the gradient (plus a few scalars) out, through IO binding.
"""
from __future__ import annotations

import ctypes
import io
import os
import platform
import sys
import threading
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph, InvalidProtobuf, NoSuchFile
import scipy

from ..config import Provider
from ..errors import ModelFileError, ProviderError
from ..models.export import INPUT_NAME
from ..graph.lossgrad import CONTENT_TARGET, GRAD

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# ONNX Runtime's log: errors only. Its warnings (unused initializers, nodes placed on the CPU,
# device discovery) are about the engine's own graphs or the machine, nothing a user acts on,
# and would land in the middle of the progress display.
_ERRORS_ONLY = 3
ort.set_default_logger_severity(_ERRORS_ONLY)
_CUDA_START = threading.Lock()


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = _ERRORS_ONLY
    if threads:
        options.intra_op_num_threads = threads
    return options


def cuda_device_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.name == "nt"


def on_cpu(provider: Provider | str) -> bool:
    """Whether a session for ``provider`` will run on the CPU: "cpu", or "auto" where there is
    no NVIDIA device or this onnxruntime has no CUDA provider."""
    provider = Provider(provider)
    if provider is Provider.AUTO:
        return not (cuda_device_present() and CUDA in ort.get_available_providers())
    return provider is Provider.CPU


@contextmanager
def _quiet_ort() -> Iterator[None]:
    # ORT logs a red error when the CUDA libraries are missing; we report that ourselves.
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(_ERRORS_ONLY)


def create_session(model: str | Path | bytes, provider: Provider | str = Provider.AUTO,
                   threads: int | None = None, cuda_options: dict | None = None,
                   arena: bool = True) -> ort.InferenceSession:
    """A session on ``provider``; ``cuda`` raises ProviderError when CUDA cannot start.

    ``arena=False``: the CPU allocator gives each run's activations back instead of
    keeping them for the session's next run (for sessions that stay open but run seldom).
    """
    provider = Provider(provider)
    model = str(model) if isinstance(model, Path) else model
    options = session_options(threads)
    options.enable_cpu_mem_arena = arena
    wants_cuda = provider is Provider.CUDA or (provider is Provider.AUTO and cuda_device_present())
    if wants_cuda and CUDA not in ort.get_available_providers():
        if provider is Provider.CUDA:
            raise ProviderError(
                "CUDA was requested but this onnxruntime build has no CUDA provider; install "
                "onnxruntime-gpu (x86-64 Linux/Windows) or use --provider cpu")
    elif wants_cuda:
        # One at a time: the stdout redirection and the logger severity are process-wide, and
        # sessions may be opened from two threads (the loss session beside the targets').
        with _CUDA_START:
            if hasattr(ort, "preload_dlls"):
                try:
                    # CUDA/cuDNN from the nvidia-* pip wheels, when installed. It print()s each library
                    # it misses to stdout, where only results belong; CUDA not starting is reported below.
                    with redirect_stdout(io.StringIO()):
                        ort.preload_dlls()
                except Exception:  # missing libraries show up below as CUDA not starting
                    pass
            with _quiet_ort():
                session = _open(model, options, [(CUDA, cuda_options or {}), CPU])
        if session.get_providers()[0] == CUDA:
            return session
        if provider is Provider.CUDA:
            raise ProviderError(
                "CUDA was requested but could not start (ONNX Runtime needs an NVIDIA GPU with CUDA 13 "
                "and cuDNN 9 libraries); `nst info` shows what is available, or use --provider cpu")
    # With a memory pattern the CPU arena is asked, from the second run on, for one block as
    # large as all the activations beside the first run's chunks: ~50% more peak memory at
    # 512 px for no measurable speed (benchmarks/results).
    options.enable_mem_pattern = False
    return _open(model, options, [CPU])


def _open(model: str | bytes, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except (InvalidProtobuf, InvalidGraph, NoSuchFile) as exc:
        where = model if isinstance(model, str) else "a model"
        reason = str(exc).strip().splitlines()[0].rsplit("failed:", 1)[-1].strip()  # ORT repeats the path
        raise ModelFileError(f"ONNX Runtime cannot load {where} ({reason}): delete the file and run again "
                             "(cached graphs are rebuilt; `nst export` writes the model again)") from None


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc; elsewhere nothing to do).

    Opening a session parses the model and folds constants, and closing the targets'
    session frees its activations: ~170 MB at 512 px that malloc keeps but a run's
    activations do not reuse (they come from ONNX Runtime's arena)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing held that way
            pass


def cuda_options(tf32: bool = True, cuda_graph: bool = False) -> dict[str, str]:
    """CUDA provider options: TF32 convolutions/matmuls, and CUDA graph capture of the run."""
    return {"use_tf32": str(int(tf32)), "enable_cuda_graph": str(int(cuda_graph)),
            "cudnn_conv_algo_search": "EXHAUSTIVE"}


class LossGradEvaluator:
    """Runs the loss-gradient graph: image in, loss terms and gradient out, one run each.

    Every input and output is bound once to a fixed buffer on the session's device,
    so an evaluation moves only the image in and the gradient and scalar terms out,
    and a CUDA session can replay a captured CUDA graph.
    """

    def __init__(self, session: ort.InferenceSession, constants: dict[str, np.ndarray], shape: tuple[int, ...]):
        self.session = session
        self.provider = session.get_providers()[0]
        self.shape = tuple(shape)
        device = "cuda" if self.provider == CUDA else "cpu"
        self._binding = session.io_binding()
        self._image_host = np.zeros(shape, np.float32)
        inputs = {name: np.asarray(value, np.float32, order="C") for name, value in constants.items()}
        inputs[INPUT_NAME] = self._image_host
        # Held here for their lifetime: the binding points into their memory.
        self._inputs = {name: ort.OrtValue.ortvalue_from_numpy(value, device) for name, value in inputs.items()}
        for name, value in self._inputs.items():
            self._binding.bind_ortvalue_input(name, value)
        # The image-sized gradient, the content layer's features (the content target's shape), scalars.
        shapes = {o.name: list(shape) if o.name == GRAD else list(inputs[CONTENT_TARGET].shape)
                  for o in session.get_outputs() if len(o.shape) == 4}
        self._outputs = {o.name: ort.OrtValue.ortvalue_from_shape_and_type(shapes.get(o.name, []), np.float32, device)
                         for o in session.get_outputs()}
        for name, value in self._outputs.items():
            self._binding.bind_ortvalue_output(name, value)
        self._scalars = [name for name in self._outputs if name not in shapes]
        self._on_cpu = device == "cpu"

    def __call__(self, image: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """``image`` (any float dtype, (1,3,H,W) or flat) -> ({output: value}, grad float32 (1,3,H,W))."""
        if self._on_cpu:  # the bound OrtValue shares this array's memory
            np.copyto(self._image_host, np.reshape(image, self.shape), casting="same_kind")
        else:
            self._inputs[INPUT_NAME].update_inplace(np.asarray(image, np.float32).reshape(self.shape))
        self.session.run_with_iobinding(self._binding)
        scalars = {name: float(self._outputs[name].numpy()) for name in self._scalars}
        return scalars, self._outputs[GRAD].numpy()

    def input(self, name: str) -> np.ndarray:
        """A copy of the constant bound to input ``name``."""
        return np.array(self._inputs[name].numpy())

    def set_input(self, name: str, value: np.ndarray) -> None:
        """Replace the constant bound to input ``name`` (same shape; written in place, so a
        captured CUDA graph sees it)."""
        self._inputs[name].update_inplace(np.asarray(value, np.float32, order="C"))

    def output(self, name: str) -> np.ndarray:
        """A copy of output ``name`` of the last evaluation."""
        return np.array(self._outputs[name].numpy())


def probe_provider(provider: Provider | str = Provider.AUTO) -> str:
    """The provider a session really gets for ``provider`` (ProviderError for an unusable 'cuda')."""
    from ..graph.builder import GraphBuilder

    b = GraphBuilder()
    b.output("y", b.op("Relu", b.input("x", [1])), [1])
    return create_session(b.model("probe").SerializeToString(), provider).get_providers()[0]


def versions() -> dict[str, str]:
    from .. import __version__

    return {"engine": __version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "python": platform.python_version()}
