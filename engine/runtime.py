"""ONNX Runtime sessions: provider choice, and the loss-gradient evaluator.

The evaluator binds the targets and weights once and, per evaluation, moves only
the image in and the gradient (plus a few scalars) out, through IO binding.
"""
from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import scipy

from .config import Provider
from .errors import ProviderError
from .export import INPUT_NAME
from .graph.lossgrad import GRAD

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


def cuda_device_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.name == "nt"


@contextmanager
def _quiet_ort() -> Iterator[None]:
    # ORT logs a red error when the CUDA libraries are missing; we report that ourselves.
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def create_session(model: str | Path | bytes, provider: Provider | str = Provider.AUTO,
                   threads: int | None = None, cuda_options: dict | None = None) -> ort.InferenceSession:
    """A session on ``provider``; ``cuda`` raises ProviderError when CUDA cannot start."""
    provider = Provider(provider)
    model = str(model) if isinstance(model, Path) else model
    options = session_options(threads)
    wants_cuda = provider is Provider.CUDA or (provider is Provider.AUTO and cuda_device_present())
    if wants_cuda and CUDA not in ort.get_available_providers():
        if provider is Provider.CUDA:
            raise ProviderError(
                "CUDA was requested but this onnxruntime build has no CUDA provider; install "
                "onnxruntime-gpu (x86-64 Linux/Windows) or use --provider cpu")
    elif wants_cuda:
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* pip wheels, when installed
            except Exception:  # missing libraries show up below as CUDA not starting
                pass
        with _quiet_ort():
            session = ort.InferenceSession(model, options, providers=[(CUDA, cuda_options or {}), CPU])
        if session.get_providers()[0] == CUDA:
            return session
        if provider is Provider.CUDA:
            raise ProviderError(
                "CUDA was requested but could not start (ONNX Runtime needs an NVIDIA GPU with CUDA 13 "
                "and cuDNN 9 libraries); `nst info` shows what is available, or use --provider cpu")
    return ort.InferenceSession(model, options, providers=[CPU])


class LossGradEvaluator:
    """Runs the loss-gradient graph: image in, loss terms and gradient out, one run each."""

    def __init__(self, session: ort.InferenceSession, constants: dict[str, np.ndarray], shape: tuple[int, ...]):
        self.session = session
        self.provider = session.get_providers()[0]
        device = "cuda" if self.provider == CUDA else "cpu"
        self._binding = session.io_binding()
        # Kept alive here: the binding refers to their memory.
        self._constants = {name: ort.OrtValue.ortvalue_from_numpy(np.asarray(value, np.float32, order="C"), device)
                           for name, value in constants.items()}
        for name, value in self._constants.items():
            self._binding.bind_ortvalue_input(name, value)
        self._image_host = np.zeros(shape, np.float32)
        self._image = ort.OrtValue.ortvalue_from_numpy(self._image_host, device)
        self._binding.bind_ortvalue_input(INPUT_NAME, self._image)
        self._grad = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, device)
        self.scalar_names = [o.name for o in session.get_outputs() if o.name != GRAD]
        for name in self.scalar_names:
            self._binding.bind_output(name, "cpu")
        self._binding.bind_ortvalue_output(GRAD, self._grad)
        self._on_cpu = device == "cpu"

    def __call__(self, image: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """``image`` (any float dtype, shape or flat) -> ({output: value}, grad float32 (1,3,H,W))."""
        if self._on_cpu:
            np.copyto(self._image_host, image.reshape(self._image_host.shape), casting="same_kind")
        else:
            self._image.update_inplace(np.asarray(image, np.float32).reshape(self._image_host.shape))
        self.session.run_with_iobinding(self._binding)
        outputs = self._binding.get_outputs()
        scalars = {name: float(outputs[i].numpy()) for i, name in enumerate(self.scalar_names)}
        return scalars, self._grad.numpy()


def probe_provider(provider: Provider | str = Provider.AUTO) -> str:
    """The provider a session really gets for ``provider`` (ProviderError for an unusable 'cuda')."""
    from .graph.builder import GraphBuilder

    b = GraphBuilder()
    b.output("y", b.op("Relu", b.input("x", [1])), [1])
    return create_session(b.model("probe").SerializeToString(), provider).get_providers()[0]


def versions() -> dict[str, str]:
    from . import __version__

    return {"engine": __version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "python": platform.python_version()}
