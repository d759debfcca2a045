"""The optimisation: config -> targets -> L-BFGS loop -> snapshots, run record, result.

Progress leaves as typed events through a callback; this module never prints.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np
import onnx
from PIL import Image
from scipy.optimize import fmin_l_bfgs_b

from . import images
from .config import Provider, TransferConfig
from .errors import ConfigError
from .export import INPUT_NAME, model_metadata
from .files import atomic_write_text
from .graph import lossgrad
from .models import find_model
from .runtime import LossGradEvaluator, create_session, cuda_options, versions

ImageSource = Union[str, Path, Image.Image]


@dataclass(frozen=True)
class Prepared:
    """Targets are computed and the loss-gradient session is ready."""
    width: int
    height: int
    provider: str
    seconds: float


@dataclass(frozen=True)
class Evaluated:
    """One loss-and-gradient evaluation finished."""
    evaluation: int
    total_evaluations: int
    loss: float


@dataclass(frozen=True)
class IterationDone:
    """One outer iteration (one fmin_l_bfgs_b call) finished; ``snapshot`` is None when not saved."""
    iteration: int
    loss: float
    content: float
    style: float
    tv: float
    evaluations: int
    seconds: float
    snapshot: Path | None

    def record(self) -> dict:
        return {"iteration": self.iteration, "loss": self.loss, "content": self.content,
                "style": self.style, "tv": self.tv, "evaluations": self.evaluations,
                "seconds": round(self.seconds, 4)}


Event = Union[Prepared, Evaluated, IterationDone]
Callback = Callable[[Event], None]


@dataclass
class TransferResult:
    image: np.ndarray                  # uint8 (H, W, 3) RGB, the final image
    output: Path | None
    record: Path | None
    iterations: list[IterationDone] = field(default_factory=list)
    provider: str = ""
    seconds: float = 0.0


class Problem:
    """One content/style pair bound to a loss-gradient session.

    ``loss_and_grad(x)`` takes x (1, 3, H, W) or flat, in the seed's convention
    (BGR, mean subtracted, 0-255), and returns the total loss and dloss/dx with
    x's shape, as float64 for scipy. One graph run per call.
    """

    def __init__(self, config: TransferConfig, evaluator: LossGradEvaluator, content: np.ndarray,
                 style: np.ndarray, output_size: tuple[int, int], model: Path, graph: Path):
        self.config = config
        self.evaluator = evaluator
        self.content = content
        self.style = style
        self.shape = content.shape
        self.output_size = output_size
        self.model = model
        self.graph = graph
        self.evaluations = 0
        self.runtime: dict = {"provider": self.provider}
        self._recent: list[tuple[np.ndarray, dict[str, float]]] = []

    @property
    def provider(self) -> str:
        return self.evaluator.provider

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        terms, grad = self.evaluator(x)
        self.evaluations += 1
        # L-BFGS returns one of its recent points; remembering them spares re-evaluating it.
        self._recent = [*self._recent[-3:], (np.array(x, copy=True), terms)]
        return terms[lossgrad.LOSS], grad.astype(np.float64).reshape(np.shape(x))

    def terms(self, x: np.ndarray) -> dict[str, float]:
        """The weighted loss terms at x: loss, content, style (summed), tv, and style.<layer>."""
        for seen, terms in reversed(self._recent):
            if np.array_equal(seen, x):
                return _summary(terms)
        terms, _ = self.evaluator(x)
        return _summary(terms)

    def initial_image(self) -> np.ndarray:
        """The seed's start: uniform(0, 255) - 128 noise, from ``config.seed``."""
        return np.random.default_rng(self.config.seed).uniform(0, 255, self.shape) - 128.0

    def to_image(self, x: np.ndarray) -> np.ndarray:
        """x in the seed's convention -> uint8 (H, W, 3) RGB at the output size."""
        rgb = images.deprocess(np.asarray(x, np.float32).reshape(self.shape))
        if (rgb.shape[1], rgb.shape[0]) != self.output_size:
            rgb = np.asarray(Image.fromarray(rgb).resize(self.output_size, Image.Resampling.LANCZOS))
        return rgb


def _summary(terms: dict[str, float]) -> dict[str, float]:
    style = {k: v for k, v in terms.items() if k.startswith("style.")}
    return {"loss": terms[lossgrad.LOSS], "content": terms[lossgrad.CONTENT],
            "style": float(sum(style.values())), "tv": terms[lossgrad.TV], **style}


def snapshot_path(output: Path, iteration: int) -> Path:
    """The seed's ``<output>_at_iteration_<N>.png``, next to the output."""
    return output.with_name(f"{output.stem}_at_iteration_{iteration}.png")


def record_path(output: Path) -> Path:
    return output.with_suffix(".json")


class StyleTransfer:
    """Gatys et al. style transfer with the settings of ``config``.

    ``models_dir``: where exported models are looked for first; ``provider``:
    "auto" (CUDA when it starts, else CPU), "cuda" or "cpu"; ``threads``: ONNX
    Runtime intra-op threads (None: all cores). On CUDA, ``tf32`` lets convolutions
    and matmuls use TF32 tensor cores, and ``cuda_graph`` replays each evaluation
    as one captured CUDA graph (the image size is fixed during a run).
    """

    def __init__(self, config: TransferConfig | None = None, models_dir: str | Path | None = None,
                 provider: Provider | str = Provider.AUTO, threads: int | None = None,
                 tf32: bool = True, cuda_graph: bool = True):
        self.config = config or TransferConfig()
        self.models_dir = models_dir
        self.provider = Provider(provider)
        self.threads = threads
        self.tf32 = tf32
        self.cuda_graph = cuda_graph

    def prepare(self, content: ImageSource, style: ImageSource) -> Problem:
        """Load and resize the images, compute the targets, open the loss-gradient session."""
        cfg = self.config
        content_image, style_image = _load(content), _load(style)
        output_size = images.working_size(content_image.size, cfg.size)
        width, height = images.working_size(content_image.size, cfg.size, cfg.size_multiple())
        if min(width, height) < cfg.min_image_size():
            raise ConfigError(
                f"the image is {width}x{height} px, too small for layer depth of "
                f"{cfg.content_layer}/{', '.join(cfg.style_layers)}: use --size {cfg.min_image_size()} "
                "or more, or shallower layers")
        model = find_model(cfg.convnet, self.models_dir)
        graph = lossgrad.loss_graph_path(model, cfg.content_layer, cfg.style_layers, cfg.pooling.value)
        content_x = images.preprocess(content_image, (width, height))
        style_x = images.preprocess(style_image, (width, height))   # the seed resizes the style to the content
        features = create_session(model, self.provider, self.threads, cuda_options(self.tf32))
        content_features = features.run([cfg.content_layer], {INPUT_NAME: content_x})[0]
        style_features = dict(zip(cfg.style_layers, features.run(list(cfg.style_layers), {INPUT_NAME: style_x})))
        del features
        constants = {
            lossgrad.CONTENT_TARGET: content_features,
            lossgrad.CONTENT_WEIGHT: np.array(cfg.content_weight, np.float32),
            lossgrad.TV_WEIGHT: np.array(cfg.tv_weight, np.float32),
        }
        for layer, weight in zip(cfg.style_layers, cfg.style_weights):
            f = style_features[layer][0]
            flat = f.reshape(f.shape[0], -1)
            constants[lossgrad.gram_target(layer)] = flat @ flat.T
            # The seed's 1/(4 (h w)^2) per layer and its 1/len(style_layers), folded into one scalar.
            constants[lossgrad.style_weight(layer)] = np.array(
                weight / len(cfg.style_layers) / (4.0 * flat.shape[1] ** 2), np.float32)
        session = create_session(graph, self.provider, self.threads, cuda_options(self.tf32, self.cuda_graph))
        evaluator = LossGradEvaluator(session, constants, content_x.shape)
        problem = Problem(cfg, evaluator, content_x, style_x, output_size, model, graph)
        problem.runtime = {"provider": problem.provider, "threads": self.threads}
        if problem.provider == "CUDAExecutionProvider":
            problem.runtime.update(tf32=self.tf32, cuda_graph=self.cuda_graph)
        return problem

    def run(self, content: ImageSource, style: ImageSource, output: str | Path | None = None,
            callback: Callback | None = None) -> TransferResult:
        """Optimise the image as the seed's ``style_transfer`` does.

        ``iterations`` calls of ``fmin_l_bfgs_b`` with ``maxfun`` evaluations each,
        from the seed's noise. With ``output``: snapshots ``<stem>_at_iteration_<N>.png``
        every ``save_every`` iterations, the final image, and a run record
        ``<stem>.json``. On KeyboardInterrupt the record is written marked
        "interrupted" (finished snapshots stay) and the interrupt is raised again.
        """
        cfg = self.config
        emit = callback or (lambda event: None)
        output = Path(output) if output is not None else None
        if output is not None:
            images.check_writable(output)
        started = time.perf_counter()
        problem = self.prepare(content, style)
        emit(Prepared(problem.shape[3], problem.shape[2], problem.provider, time.perf_counter() - started))
        total = cfg.iterations * cfg.maxfun
        result = TransferResult(image=np.zeros((0, 0, 3), np.uint8), output=output,
                                record=record_path(output) if output else None, provider=problem.provider)

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            loss, grad = problem.loss_and_grad(x)
            emit(Evaluated(problem.evaluations, total, loss))
            return loss, grad.ravel()

        x = problem.initial_image().ravel()
        status = "finished"
        try:
            for i in range(1, cfg.iterations + 1):
                tick = time.perf_counter()
                before = problem.evaluations
                x, _, _ = fmin_l_bfgs_b(objective, x, maxfun=cfg.maxfun)
                terms = problem.terms(x)
                snapshot = None
                if output is not None and cfg.save_every and i % cfg.save_every == 0:
                    snapshot = snapshot_path(output, i)
                    images.save_image(problem.to_image(x), snapshot)
                done = IterationDone(i, terms["loss"], terms["content"], terms["style"], terms["tv"],
                                     problem.evaluations - before, time.perf_counter() - tick, snapshot)
                result.iterations.append(done)
                emit(done)
            result.image = problem.to_image(x)
            if output is not None:
                images.save_image(result.image, output)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            result.seconds = time.perf_counter() - started
            if output is not None:
                _write_record(result, problem, content, style, status)
        return result


def _load(source: ImageSource) -> Image.Image:
    return source.convert("RGB") if isinstance(source, Image.Image) else images.load_image(source)


def _write_record(result: TransferResult, problem: Problem, content: ImageSource, style: ImageSource,
                  status: str) -> None:
    meta = model_metadata(onnx.load(problem.model, load_external_data=False))
    record = {
        "status": status,
        "content": str(content) if not isinstance(content, Image.Image) else "<image>",
        "style": str(style) if not isinstance(style, Image.Image) else "<image>",
        "output": str(result.output) if status == "finished" else None,
        "config": problem.config.to_dict(),
        "model": {"path": str(problem.model), "architecture": meta.get("architecture"),
                  "weights_sha256": meta.get("weights_sha256"), "weights_source": meta.get("weights_source")},
        "loss_graph": str(problem.graph),
        "provider": problem.provider,
        "runtime": problem.runtime,
        "working_size": [problem.shape[3], problem.shape[2]],
        "output_size": list(problem.output_size),
        "versions": versions(),
        "seconds": round(result.seconds, 3),
        "evaluations": problem.evaluations,
        "iterations": [it.record() for it in result.iterations],
    }
    atomic_write_text(result.record, json.dumps(record, indent=2) + "\n")

