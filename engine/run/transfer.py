"""The optimisation: config -> targets -> L-BFGS loop -> snapshots, run record, result.

Progress leaves as typed events through a callback; this module never prints.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image

from ..io import colors, images, visuals
from ..models import vgg
from ..config import Init, PreserveColors, Provider, StyleNormalization, TransferConfig
from ..errors import ConfigError
from ..models.export import INPUT_NAME
from ..io.files import atomic_write_text
from ..graph import lossgrad
from ..runtime.memory import check_memory
from ..models.store import find_model
from .optimize import optimize
from ..runtime.sessions import (LossGradEvaluator, create_session, cuda_options, on_cpu, release_freed_memory,
                                versions)

ImageSource = Union[str, Path, Image.Image]
Styles = Union[ImageSource, Sequence[ImageSource]]


@dataclass(frozen=True)
class Prepared:
    """Targets are computed and the loss-gradient session is ready (once per scale)."""
    width: int
    height: int
    provider: str
    seconds: float
    scale: int = 1
    scales: int = 1


@dataclass(frozen=True)
class Evaluated:
    """One loss-and-gradient evaluation finished."""
    evaluation: int
    total_evaluations: int
    loss: float


@dataclass(frozen=True)
class IterationDone:
    """One iteration finished (one fmin_l_bfgs_b call, or maxfun evaluations in continuous mode).

    Loss terms are the true, weighted ones; ``snapshot`` is None when none was saved.
    """
    iteration: int
    loss: float
    content: float
    style: float
    tv: float
    evaluations: int
    seconds: float
    snapshot: Path | None
    width: int = 0
    height: int = 0

    def record(self) -> dict:
        return {"iteration": self.iteration, "loss": self.loss, "content": self.content,
                "style": self.style, "tv": self.tv, "evaluations": self.evaluations,
                "seconds": round(self.seconds, 4), "size": [self.width, self.height]}


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
    """One content/style pair at one size, bound to a loss-gradient session.

    ``loss_and_grad(x)`` takes x (1, 3, H, W) or flat, in the seed's convention
    (BGR, mean subtracted, 0-255), and returns the total loss and dloss/dx with
    x's shape, as float64 for scipy. One graph run per call.
    """

    def __init__(self, config: TransferConfig, evaluator: LossGradEvaluator, content: np.ndarray,
                 styles: list[np.ndarray], output_size: tuple[int, int], colour_source: Image.Image | None):
        self.config = config
        self.evaluator = evaluator
        self.content = content
        self.styles = styles
        self.shape = content.shape
        self.output_size = output_size
        self.evaluations = 0
        self.runtime: dict = {"provider": self.provider}
        self._colour_source = colour_source
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
        """The start image of ``config.init``: the seed's uniform(0, 255) - 128 noise (from
        ``config.seed``), the content, the (first) style, or an image file."""
        init = self.config.init
        if init == Init.NOISE.value:
            return np.random.default_rng(self.config.seed).uniform(0, 255, self.shape) - 128.0
        if init == Init.CONTENT.value:
            return self.content.astype(np.float64)
        if init == Init.STYLE.value:
            style = self.styles[0].astype(np.float64)
            # With a style_scale the style is fed at its own size; the start needs the working size.
            return style if style.shape == tuple(self.shape) else _resize_x(style, self.shape)
        size = (self.shape[3], self.shape[2])
        return images.preprocess(images.load_image(init), size).astype(np.float64)

    def bounds(self) -> list[tuple[float, float]]:
        """Per-pixel box constraints keeping every channel within 0..255 (BGR, mean subtracted)."""
        pixels = self.shape[2] * self.shape[3]
        return [(-mean, 255.0 - mean) for mean in vgg.MEAN_BGR for _ in range(pixels)]

    def to_rgb(self, x: np.ndarray) -> np.ndarray:
        """x in the seed's convention -> float32 (H, W, 3) RGB 0..255 at the output size."""
        bgr = np.asarray(x, np.float32).reshape(self.shape)[0] + np.asarray(vgg.MEAN_BGR, np.float32)[:, None, None]
        rgb = np.clip(bgr[::-1].transpose(1, 2, 0), 0, 255)
        if (rgb.shape[1], rgb.shape[0]) != self.output_size:
            rgb = np.stack([np.asarray(Image.fromarray(rgb[..., c]).resize(self.output_size, Image.Resampling.LANCZOS))
                            for c in range(3)], axis=-1).clip(0, 255)
        if self._colour_source is not None:
            rgb = colors.recombine_luminance(rgb, self._colour_source)
        return rgb

    def to_image(self, x: np.ndarray) -> np.ndarray:
        """x in the seed's convention -> uint8 (H, W, 3) RGB at the output size."""
        return np.round(self.to_rgb(x)).astype(np.uint8)


def _summary(terms: dict[str, float]) -> dict[str, float]:
    style = {k: v for k, v in terms.items() if k.startswith("style.")}
    return {"loss": terms[lossgrad.LOSS], "content": terms[lossgrad.CONTENT],
            "style": float(sum(style.values())), "tv": terms[lossgrad.TV], **style}


def snapshot_path(output: Path, iteration: int) -> Path:
    """The seed's ``<output>_at_iteration_<N>.png``, next to the output."""
    return output.with_name(f"{output.stem}_at_iteration_{iteration}.png")


def record_path(output: Path) -> Path:
    return output.with_suffix(".json")


def _as_list(styles: Styles) -> list[ImageSource]:
    return list(styles) if isinstance(styles, (list, tuple)) else [styles]


def _load(source: ImageSource) -> Image.Image:
    return source.convert("RGB") if isinstance(source, Image.Image) else images.load_image(source)


def _name(source: ImageSource) -> str:
    return "<image>" if isinstance(source, Image.Image) else str(source)


def _run(session, outputs: list[str], x: np.ndarray, scales: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``outputs`` of a targets graph for image ``x``, fed the pool scales it takes (those before its deepest layer)."""
    names = {i.name for i in session.get_inputs()}
    return session.run(outputs, {INPUT_NAME: x, **{k: v for k, v in scales.items() if k in names}})


def _resize_x(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize an image in the seed's convention (1,3,h,w) to ``shape``, channel by channel."""
    size = (shape[3], shape[2])
    planes = [np.asarray(Image.fromarray(np.asarray(plane, np.float32)).resize(size, Image.Resampling.BICUBIC))
              for plane in x.reshape(3, x.shape[2], x.shape[3])]
    return np.stack(planes)[None].astype(np.float64)


class StyleTransfer:
    """Gatys et al. style transfer with the settings of ``config``.

    ``models_dir``: where exported models are looked for first; ``provider``:
    "auto" (CUDA when it starts, else CPU), "cuda" or "cpu"; ``threads``: ONNX
    Runtime intra-op threads (None: all cores). On CUDA, ``tf32`` lets convolutions
    and matmuls use TF32 tensor cores, and ``cuda_graph`` replays each evaluation
    as one captured CUDA graph (the image size is fixed during a run). ``winograd``: the
    loss graph's block 3-5 convolutions as Winograd F(2, 3) (fewer multiplications; CPU
    provider only); None: on when the session will run on the CPU.
    """

    def __init__(self, config: TransferConfig | None = None, models_dir: str | Path | None = None,
                 provider: Provider | str = Provider.AUTO, threads: int | None = None,
                 tf32: bool = True, cuda_graph: bool = True, winograd: bool | None = None):
        self.config = config or TransferConfig()
        self.models_dir = models_dir
        self.provider = Provider(provider)
        self.threads = threads
        self.tf32 = tf32
        self.cuda_graph = cuda_graph
        if winograd and self.provider is Provider.CUDA:
            raise ConfigError("Winograd convolutions are for the CPU provider (on CUDA, cuDNN picks its own "
                              "algorithms): drop --winograd or use --provider cpu")
        self.winograd = on_cpu(self.provider) if winograd is None else winograd
        self._sessions: dict = {}

    # -- building blocks ---------------------------------------------------------------

    def _graphs(self) -> lossgrad.Graphs:
        """The model and its graphs, found (or built) once."""
        if "graphs" not in self._sessions:
            cfg = self.config
            model = find_model(cfg.convnet, self.models_dir)
            self._sessions["model"] = model
            self._sessions["graphs"] = lossgrad.graph_paths(
                model, lossgrad.LayerChoice(cfg.content_layer, cfg.style_layers, cfg.pooling.value, self.winograd))
        return self._sessions["graphs"]

    def _session(self, kind: str):
        """A session of the feature model or of a graph, opened once and shared by every size of a run."""
        if kind not in self._sessions:
            graphs = self._graphs()
            source = {"features": self._sessions["model"], "content": graphs.content, "style": graphs.style,
                      "loss": graphs.loss}[kind]
            options = cuda_options(self.tf32, cuda_graph=self.cuda_graph and kind == "loss")
            self._sessions[kind] = create_session(source, self.provider, self.threads, options)
        return self._sessions[kind]

    def _pool_scales(self, content_x: np.ndarray) -> dict[str, np.ndarray]:
        """With average pooling, each pool's output times mean(maxpool(a)) / mean(a) on the
        content image, so activations keep the magnitudes the layer weights were chosen for."""
        graphs = self._graphs()
        if not graphs.pools:
            return {}
        # Each pool's input is the last conv of its block.
        pool_input = {lossgrad.pool_scale(f"block{l.block}_pool"): l.name for l in vgg.conv_layers(self.config.convnet)}
        acts = self._session("features").run([pool_input[name] for name in graphs.pools], {INPUT_NAME: content_x})
        scales = {}
        for name, a in zip(graphs.pools, acts):
            c, h, w = a.shape[1:]
            maxed = a[0].reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))
            scales[name] = np.array(maxed.mean() / max(float(a.mean()), 1e-12), np.float32)
        return scales

    def sizes_for(self, content_size: tuple[int, int], size: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
        """The output size and the working size (pool-friendly) of a content image at ``size``
        px on its longest edge (None: its own size); ConfigError when too small for the layers."""
        cfg = self.config
        output_size = images.working_size(content_size, size)
        if min(output_size) < cfg.min_image_size():
            raise ConfigError(
                f"the image would be {output_size[0]}x{output_size[1]} px, too small for the deepest chosen layer "
                f"(needs {cfg.min_image_size()} px per side): use a larger --size (or --min-size), "
                "or shallower layers")
        return output_size, images.working_size(content_size, max(output_size), cfg.size_multiple())

    def prepare(self, content: ImageSource, style: Styles, size: int | None = None) -> Problem:
        """Load and resize the images, compute the targets, bind the loss-gradient session.

        ``style``: one image or several (blended by ``config.style_blend``); ``size``
        overrides ``config.size`` (the longest edge; None keeps the content's size).
        """
        cfg = self.config
        sources = _as_list(style)
        self._check_styles(sources)
        content_image, style_images = _load(content), [_load(s) for s in sources]
        output_size, (width, height) = self.sizes_for(content_image.size, size if size is not None else cfg.size)
        colour_source = None
        if cfg.preserve_colors is PreserveColors.HISTOGRAM:
            style_images = [colors.match_histogram(s, content_image) for s in style_images]
        elif cfg.preserve_colors is PreserveColors.LUMINANCE:
            colour_source = content_image
            content_image = colors.luminance_only(content_image)
            style_images = [colors.match_luminance(colors.luminance_only(s), content_image) for s in style_images]

        content_x = images.preprocess(content_image, (width, height))
        styles_x = [images.preprocess(s, self._style_size(s.size, (width, height))) for s in style_images]
        self._graphs()  # found (or built) here, not by both threads at once
        with ThreadPoolExecutor(max_workers=1) as pool:
            # ONNX Runtime lets go of the GIL while it opens a session: the loss session starts
            # while the targets are computed (0.1-0.4 s sooner ready at 512 px on 2 cores).
            loss_session = pool.submit(self._session, "loss")
            content_features, grams, scales = self._targets(content_x, styles_x)
            session = loss_session.result()

        constants = {
            lossgrad.CONTENT_TARGET: content_features,
            lossgrad.CONTENT_WEIGHT: np.array(cfg.content_weight, np.float32),
            lossgrad.TV_WEIGHT: np.array(cfg.tv_weight, np.float32),
            **scales,
        }
        for layer, weight in zip(cfg.style_layers, cfg.style_weights):
            info = vgg.conv_layer(cfg.convnet, layer)
            positions = (width // info.downsampling) * (height // info.downsampling)
            if cfg.style_normalization is StyleNormalization.GATYS:
                weight *= 1e3 / info.out_channels ** 2
            constants[lossgrad.gram_target(layer)] = grams[layer].astype(np.float32)
            # The seed's 1/(4 (h w)^2) per layer and its 1/len(style_layers), folded into one scalar.
            constants[lossgrad.style_weight(layer)] = np.array(
                weight / len(cfg.style_layers) / (4.0 * positions ** 2), np.float32)
        evaluator = LossGradEvaluator(session, constants, content_x.shape)
        release_freed_memory()
        problem = Problem(cfg, evaluator, content_x, styles_x, output_size, colour_source)
        problem.runtime = {"provider": problem.provider, "threads": self.threads, "winograd": self.winograd}
        if problem.provider == "CUDAExecutionProvider":
            problem.runtime.update(tf32=self.tf32, cuda_graph=self.cuda_graph)
        if scales:
            problem.runtime["pool_scales"] = {k: float(v) for k, v in scales.items()}
        return problem

    def _targets(self, content_x: np.ndarray, styles_x: list[np.ndarray]):
        """The content layer's features, the blended Gram targets, the pool scales. Each image
        runs only the graph of what it is needed for (content: forward to the content layer;
        style: to the deepest style layer, and the Grams). The sessions that compute them are
        closed after: their weights and activation memory would otherwise sit beside the loss
        session's for the whole run."""
        cfg = self.config
        height, width = content_x.shape[2:]
        try:
            scales = self._pool_scales(content_x)
            content_features = _run(self._session("content"), [lossgrad.features_output(cfg.content_layer)],
                                    content_x, scales)[0]
            self._sessions.pop("content")
            blend = np.asarray(cfg.style_blend or [1.0] * len(styles_x), np.float64)
            blend = blend / blend.sum()
            grams = {layer: 0.0 for layer in cfg.style_layers}
            for weight, x in zip(blend, styles_x):
                outputs = _run(self._session("style"), [lossgrad.gram_output(l) for l in cfg.style_layers], x, scales)
                # Gram sums grow with the positions summed over: rescale a style of another size to the output's.
                positions = (width * height) / (x.shape[2] * x.shape[3])
                for layer, g in zip(cfg.style_layers, outputs):
                    grams[layer] = grams[layer] + weight * positions * g.astype(np.float64)
        finally:
            for kind in ("features", "content", "style"):
                self._sessions.pop(kind, None)
        return content_features, grams, scales

    def _style_size(self, style_size: tuple[int, int], working: tuple[int, int]) -> tuple[int, int]:
        if self.config.style_scale is None:
            return working  # the seed resizes the style to the content's size
        edge = max(16, round(self.config.style_scale * max(working)))
        return images.working_size(style_size, edge, self.config.size_multiple())

    def _check_styles(self, sources: list[ImageSource]) -> None:
        blend = self.config.style_blend
        if not sources:
            raise ConfigError("no style image given")
        if blend is not None and len(blend) != len(sources):
            raise ConfigError(f"{len(blend)} style blend weights for {len(sources)} style images: "
                              "give one weight per style image")

    def scale_sizes(self, content_size: tuple[int, int]) -> list[int]:
        """The longest edge at each scale, coarse to fine."""
        cfg = self.config
        final = cfg.size or max(content_size)
        smallest = cfg.min_size or math.ceil(final / 2 ** (cfg.scales - 1))
        count = cfg.scales if cfg.scales > 1 or cfg.min_size is None else 1 + math.ceil(math.log2(final / smallest))
        if count == 1 or smallest >= final:
            return [final]
        sizes = [round(smallest * (final / smallest) ** (k / (count - 1))) for k in range(count)]
        if min(sizes[0] * min(content_size) // max(content_size), sizes[0]) < cfg.min_image_size():
            raise ConfigError(
                f"the first of {count} scales is {sizes[0]} px on its longest edge, too small for the deepest "
                f"chosen layer (needs {cfg.min_image_size()} px per side): use fewer --scales or a larger --min-size")
        return sizes

    # -- the run ---------------------------------------------------------------------------

    def run(self, content: ImageSource, style: Styles, output: str | Path | None = None,
            callback: Callback | None = None) -> TransferResult:
        """Optimise the image as the seed's ``style_transfer`` does, then beyond.

        For each scale (one by default): ``iterations`` iterations of ``maxfun``
        evaluations (``optimizer_mode`` seed: one fmin_l_bfgs_b call each; continuous:
        one run). With ``output``: snapshots ``<stem>_at_iteration_<N>.png`` every
        ``save_every`` iterations, the final image, a run record ``<stem>.json``, and
        the sheet, GIF and loss curve when asked for. On KeyboardInterrupt the record
        is written marked "interrupted" (finished snapshots stay) and the interrupt
        is raised again.
        """
        cfg = self.config
        emit = callback or (lambda event: None)
        output = Path(output) if output is not None else None
        sources = _as_list(style)
        self._check_styles(sources)
        if output is not None:
            images.check_writable(output)
            if cfg.bit_depth == 16 and output.suffix.lower() not in (".png", ".tif", ".tiff"):
                raise ConfigError(f"{output}: 16-bit output needs a .png or .tif file")
        if cfg.plot:
            visuals.check_plotting()  # before hours of work, not after
        content_size = _load(content).size
        sizes = self.scale_sizes(content_size)
        per_scale = cfg.scale_iterations or (cfg.iterations,) * len(sizes)
        if len(per_scale) != len(sizes):
            raise ConfigError(f"{len(per_scale)} scale iteration counts for {len(sizes)} scales "
                              f"({', '.join(map(str, sizes))} px): give one per scale")
        if self.provider is not Provider.CUDA:  # host memory; a GPU's is not known before its session
            check_memory(cfg, *self.sizes_for(content_size, sizes[-1])[1], winograd=self.winograd)
        started = time.perf_counter()
        total = sum(per_scale) * cfg.maxfun
        result = TransferResult(image=np.zeros((0, 0, 3), np.uint8), output=output,
                                record=record_path(output) if output else None)
        problems: list[Problem] = []
        evaluations = [0]

        def on_evaluation(loss: float) -> None:
            evaluations[0] += 1
            emit(Evaluated(evaluations[0], total, loss))

        status = "finished"
        try:
            x = None
            for index, (edge, iterations) in enumerate(zip(sizes, per_scale), start=1):
                tick = time.perf_counter()
                problem = self.prepare(content, sources, edge if len(sizes) > 1 else cfg.size)
                problems.append(problem)
                result.provider = problem.provider
                emit(Prepared(problem.shape[3], problem.shape[2], problem.provider,
                              time.perf_counter() - tick, index, len(sizes)))
                x = problem.initial_image() if x is None else _resize_x(x.reshape(problems[-2].shape), problem.shape)
                offset = len(result.iterations)

                def on_iteration(i: int, xk: np.ndarray, used: int, seconds: float, problem=problem) -> None:
                    n = offset + i
                    terms = problem.terms(xk)
                    snapshot = None
                    if output is not None and cfg.save_every and n % cfg.save_every == 0:
                        snapshot = snapshot_path(output, n)
                        images.save_image(problem.to_image(xk), snapshot)
                    done = IterationDone(n, terms["loss"], terms["content"], terms["style"], terms["tv"],
                                         used, seconds, snapshot, problem.shape[3], problem.shape[2])
                    result.iterations.append(done)
                    emit(done)

                x = optimize(problem, x, iterations, cfg.maxfun, cfg.optimizer_mode, on_iteration, cfg.tol,
                             problem.bounds() if cfg.clip_pixels else None, on_evaluation)
            last = problems[-1]
            result.image = last.to_image(x)
            if output is not None:
                if cfg.bit_depth == 16:
                    visuals.save_image16(last.to_rgb(x), output)
                else:
                    images.save_image(result.image, output)
                self._visual_records(output, result)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            result.seconds = time.perf_counter() - started
            if output is not None and problems:
                self._write_record(result, problems, content, sources, sizes, status)
        return result

    def _visual_records(self, output: Path, result: TransferResult) -> None:
        cfg = self.config
        shots = [it.snapshot for it in result.iterations if it.snapshot]
        labels = [f"iteration {it.iteration}" for it in result.iterations if it.snapshot]
        if cfg.sheet and shots:
            visuals.contact_sheet(shots, output.with_name(f"{output.stem}_sheet.png"), labels=labels)
        if cfg.gif and shots:
            visuals.progress_gif(shots, output.with_name(f"{output.stem}.gif"))
        if cfg.plot:
            visuals.loss_curve([it.record() for it in result.iterations], output.with_name(f"{output.stem}_loss.png"))

    def _write_record(self, result: TransferResult, problems: list[Problem], content: ImageSource,
                      styles: list[ImageSource], sizes: list[int], status: str) -> None:
        model = self._sessions["model"]
        meta = self._sessions["graphs"].model_metadata
        last = problems[-1]
        record = {
            "status": status,
            "content": _name(content),
            "style": [_name(s) for s in styles] if len(styles) > 1 else _name(styles[0]),
            "output": str(result.output) if status == "finished" else None,
            "config": self.config.to_dict(),
            "model": {"path": str(model), "architecture": meta.get("architecture"),
                      "weights_sha256": meta.get("weights_sha256"), "weights_source": meta.get("weights_source")},
            "graphs": {kind: str(getattr(self._sessions["graphs"], kind)) for kind in ("content", "style", "loss")},
            "provider": last.provider,
            "runtime": last.runtime,
            "scales": [[p.shape[3], p.shape[2]] for p in problems],
            "working_size": [last.shape[3], last.shape[2]],
            "output_size": list(last.output_size),
            "versions": versions(),
            "seconds": round(result.seconds, 3),
            "evaluations": sum(p.evaluations for p in problems),
            "iterations": [it.record() for it in result.iterations],
        }
        atomic_write_text(result.record, json.dumps(record, indent=2) + "\n")
