"""The long-lived engine: what is expensive to open, kept for many runs.

An ``Engine`` owns the models it found, their loss-gradient and targets graphs and
the ONNX Runtime sessions open on them, one per (model, layer choice, pooling) and
kind, on the engine's provider. A run (``Engine.run``) owns only its images, targets,
buffers, output files and events: the second run with the same layers opens no
session and builds no graph.
"""
from __future__ import annotations

import importlib
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

from ..config import (AUTO_COARSE_ITERATIONS, AUTO_SCALES_FROM, Init, PreserveColors, Provider, StyleNormalization,
                      TransferConfig, parse_choice)
from ..errors import ConfigError, EngineError, NonFiniteError, RunError
from ..graph import lossgrad
from ..io import colors, images, visuals
from ..models import vgg
from ..models.export import INPUT_NAME
from ..models.store import find_model
from ..runtime.memory import check_memory
from ..runtime.sessions import (CUDA, LossGradEvaluator, create_session, cuda_options, on_cpu, release_freed_memory,
                                versions)
from . import checkpoints, regions
from .checkpoints import Checkpoint
from .events import Callback, Evaluated, IterationDone, Prepared
from .optimize import Cancelled, loss_scale, optimize
from .outputs import OutputLock, check_not_inputs, run_files, run_inputs
from .problem import Problem, resize_x
from .records import (RunStatus, TransferResult, checkpoint_path, read_record, record_path, snapshot_path,
                      visual_paths, write_record)

ImageSource = Union[str, Path, Image.Image]
Styles = Union[ImageSource, Sequence[ImageSource]]


def _run_targets(session, outputs: list[str], x: np.ndarray, scales: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``outputs`` of a targets graph for image ``x``, fed the pool scales it takes (those before its deepest layer)."""
    names = {i.name for i in session.get_inputs()}
    return session.run(outputs, {INPUT_NAME: x, **{k: v for k, v in scales.items() if k in names}})


# How many layer choices' graphs and sessions an engine keeps open (see Engine's docstring).
KEEP_CHOICES = 2


class Engine:
    """Models, graphs and ONNX Runtime sessions, shared by every run given to it.

    ``models_dir``: where exported models are looked for first; ``provider``:
    "auto" (CUDA when it starts, else CPU), "cuda" or "cpu"; ``threads``: ONNX
    Runtime intra-op threads (None: all cores). On CUDA, ``tf32`` lets convolutions
    and matmuls use TF32 tensor cores, and ``cuda_graph`` replays each evaluation
    as one captured CUDA graph. ``winograd``: the loss graph's block 3-5 convolutions as
    Winograd F(m, 3) (``graph.lossgrad.WINOGRAD_TILES``; fewer multiplications; CPU provider
    only); None: on when the sessions will run on the CPU.

    Threads: ``run`` and ``prepare`` may be called from several threads at once. The
    caches are guarded by locks (each graph is built, each session opened, once; two
    different ones may be opened at the same time); an
    ONNX Runtime session may run from several threads, and each run binds its own
    buffers (its own IO binding), so runs do not see each other's images. A captured
    CUDA graph holds its run's buffer addresses: with ``cuda_graph`` on CUDA, each
    run's loss session is its own (opened per run, not shared). A ``Problem`` belongs
    to one thread at a time.

    Memory: the graphs and sessions of the last ``KEEP_CHOICES`` layer choices (model, layers,
    pooling, regions, tileable) stay open; an older choice's are let go (a loss session holds its
    weights and an arena of a run's activations, ~300 MiB at 256 px), so a long-lived engine fed
    many choices (a server's jobs) does not grow without bound. A run that still uses them keeps
    them until it ends.
    """

    def __init__(self, models_dir: str | Path | None = None, provider: Provider | str = Provider.AUTO,
                 threads: int | None = None, tf32: bool = True, cuda_graph: bool = True,
                 winograd: bool | None = None):
        self.provider = parse_choice(Provider, "provider", provider)
        if winograd and self.provider is Provider.CUDA:
            raise ConfigError("Winograd convolutions are for the CPU provider (on CUDA, cuDNN picks its own "
                              "algorithms): drop --winograd or use --provider cpu")
        self.winograd = on_cpu(self.provider) if winograd is None else bool(winograd)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a whole number >= 1 (or None for all cores), got {threads!r}")
        self.models_dir = models_dir
        self.threads = threads
        self.tf32 = tf32
        self.cuda_graph = cuda_graph
        self._lock = threading.Lock()            # guards the caches below and _making
        self._making: dict[tuple, threading.Lock] = {}   # one lock per thing being found, built or opened
        self._models: dict[str, Path] = {}
        self._graphs: dict[tuple, lossgrad.Graphs] = {}
        self._sessions: dict[tuple, object] = {}
        self._recent: dict[tuple, None] = {}  # the graphs' keys, least recently used first

    # -- what lives long ------------------------------------------------------------------

    def _once(self, cache: dict, key, make, keep=lambda value: True):
        """``cache[key]``, made by ``make()`` once: other keys are made meanwhile, the same key waits."""
        with self._lock:
            if key in cache:
                return cache[key]
            making = self._making.setdefault((id(cache), key), threading.Lock())
        with making:
            with self._lock:
                if key in cache:
                    return cache[key]
            value = make()
            if keep(value):
                with self._lock:
                    cache[key] = value
            return value

    def model(self, convnet: str) -> Path:
        """The exported feature graph of ``convnet``, found once."""
        return self._once(self._models, convnet, lambda: find_model(convnet, self.models_dir))

    def graphs(self, config: TransferConfig) -> lossgrad.Graphs:
        """The targets and loss graphs of the config's model and layer choice, found (or built) once."""
        # Winograd's tiles assume zero padding: a tileable (torus) graph keeps direct circular convs.
        choice = lossgrad.LayerChoice(config.content_layer, config.style_layers, config.pooling.value,
                                      len(config.content_masks or ()), config.tileable,
                                      self.winograd and not config.tileable)
        model = self.model(config.convnet)
        key = (model, choice)
        graphs = self._once(self._graphs, key, lambda: lossgrad.graph_paths(model, choice))
        if not all(path.is_file() for path in (graphs.content, graphs.style, graphs.loss)):
            # Another process trimmed the graph cache since: find (or build) them again.
            with self._lock:
                self._graphs.pop(key, None)
            graphs = self._once(self._graphs, key, lambda: lossgrad.graph_paths(model, choice))
        self._used(key)
        return graphs

    def _used(self, key: tuple) -> None:
        """Mark the graphs of ``key`` as just used; let go of the least recently used beyond KEEP_CHOICES."""
        with self._lock:
            self._recent.pop(key, None)
            self._recent[key] = None
            stale = list(self._recent)[:-KEEP_CHOICES]
            for old in stale:
                del self._recent[old]
                graphs = self._graphs.pop(old, None)
                paths = {graphs.content, graphs.style, graphs.loss} if graphs else set()
                for session_key in [k for k in self._sessions if k[1] in paths]:
                    del self._sessions[session_key]
        if stale:
            release_freed_memory()

    def _session(self, kind: str, config: TransferConfig):
        """A session on the model ("features") or one of its graphs, opened once per engine (a
        loss session that captures a CUDA graph: once per run, see the class docstring)."""
        graphs = self.graphs(config)
        source = {"features": self.model(config.convnet), "content": graphs.content, "style": graphs.style,
                  "loss": graphs.loss}[kind]
        capture = self.cuda_graph and kind == "loss"
        # The targets' sessions run once per image: no arena keeps their activations for the engine's life.
        return self._once(self._sessions, (kind, source),
                          lambda: create_session(source, self.provider, self.threads, cuda_options(self.tf32, capture),
                                                 arena=kind == "loss"),
                          keep=lambda session: not (capture and session.get_providers()[0] == CUDA))

    # -- one problem ------------------------------------------------------------------------

    def prepare(self, config: TransferConfig, content: ImageSource, style: Styles, size: int | None = None) -> Problem:
        """Load and resize the images, compute the targets, bind a loss-gradient evaluator
        (with ``init="content"`` the content target comes from the first evaluation: see Problem).

        ``style``: one image or several (blended by ``config.style_blend``); ``size``
        overrides ``config.size`` (the longest edge; None keeps the content's size).
        Images may be paths or PIL images (a run passes the images it loaded once).
        """
        cfg = config
        sources = _as_list(style)
        check_styles(cfg, sources)
        content_image, style_images = load(content, cfg, cfg.size), [load(s, cfg, _style_fit(cfg)) for s in sources]
        output_size, (width, height) = sizes_for(cfg, content_image.size, size if size is not None else cfg.size)
        colour_source = None
        if cfg.preserve_colors is PreserveColors.HISTOGRAM:
            style_images = [colors.match_histogram(s, content_image) for s in style_images]
        elif cfg.preserve_colors is PreserveColors.LUMINANCE:
            colour_source = content_image
            content_image = colors.luminance_only(content_image)
            style_images = [colors.match_luminance(colors.luminance_only(s), content_image) for s in style_images]

        content_x = images.preprocess(content_image, (width, height))
        styles_x = [images.preprocess(s, style_working_size(cfg, s.size, (width, height))) for s in style_images]
        masks = regions.load_masks(cfg, (width, height), [(x.shape[3], x.shape[2]) for x in styles_x]) \
            if cfg.content_masks else None
        self.graphs(cfg)  # found (or built) here, not by both threads at once
        # From the content, the first evaluation gives the content target (see Problem).
        from_content = cfg.init == Init.CONTENT.value
        with ThreadPoolExecutor(max_workers=2) as pool:
            # ONNX Runtime lets go of the GIL while it opens a session and while it runs: the loss
            # session opens (0.1-0.4 s sooner ready at 512 px on 2 cores), and the optimiser's
            # scipy.optimize is imported (see optimize.fmin_l_bfgs_b), while the targets are computed.
            loss_session = pool.submit(self._session, "loss", cfg)
            pool.submit(importlib.import_module, "scipy.optimize")
            scales = self._pool_scales(cfg, content_x)
            content_target = lambda: self._content_target(cfg, content_x, scales)
            content_features = None if from_content else content_target()
            grams = self._style_targets(cfg, content_x, styles_x, scales, masks)
            session = loss_session.result()

        at = vgg.conv_layer(cfg.convnet, cfg.content_layer)
        constants = {
            lossgrad.CONTENT_TARGET: content_features if content_features is not None else
            np.zeros((1, at.out_channels, height // at.downsampling, width // at.downsampling), np.float32),
            lossgrad.CONTENT_WEIGHT: np.array(cfg.content_weight, np.float32),
            lossgrad.TV_WEIGHT: np.array(cfg.tv_weight, np.float32),
            **scales,
        }
        if masks:
            constants.update(grams.mask_inputs())
        for layer, weight in zip(cfg.style_layers, cfg.style_weights):
            info = vgg.conv_layer(cfg.convnet, layer)
            positions = (width // info.downsampling) * (height // info.downsampling)
            if cfg.style_normalization is StyleNormalization.GATYS:
                weight *= 1e3 / info.out_channels ** 2
            if masks:  # guided Grams: a target and a weight per region
                constants.update(grams.layer_inputs(layer, info.downsampling, weight / len(cfg.style_layers)))
                continue
            constants[lossgrad.gram_target(layer)] = grams[layer].astype(np.float32)
            # The seed's 1/(4 (h w)^2) per layer and its 1/len(style_layers), folded into one scalar.
            constants[lossgrad.style_weight(layer)] = np.array(
                weight / len(cfg.style_layers) / (4.0 * positions ** 2), np.float32)
        evaluator = LossGradEvaluator(session, constants, content_x.shape)
        release_freed_memory()
        problem = Problem(cfg, evaluator, content_x, styles_x, output_size, colour_source,
                          content_target if content_features is None else None)
        problem.runtime = {"provider": problem.provider, "threads": self.threads, "winograd": self.winograd}
        if problem.provider == CUDA:
            problem.runtime.update(tf32=self.tf32, cuda_graph=self.cuda_graph)
        if scales:
            problem.runtime["pool_scales"] = {k: float(v) for k, v in scales.items()}
        return problem

    def _content_target(self, cfg: TransferConfig, content_x: np.ndarray, scales: dict[str, np.ndarray]) -> np.ndarray:
        """The content layer's features of the content image (its graph runs forward to that layer only)."""
        return _run_targets(self._session("content", cfg), [lossgrad.features_output(cfg.content_layer)],
                            content_x, scales)[0]

    def _style_targets(self, cfg: TransferConfig, content_x: np.ndarray, styles_x: list[np.ndarray],
                       scales: dict[str, np.ndarray], masks: regions.Masks | None = None):
        """The blended Gram targets (with ``masks``: each region's RegionTargets); each style's
        graph runs forward to the deepest style layer only."""
        height, width = content_x.shape[2:]
        if masks:
            style = self._session("style", cfg)

            def masked_grams(x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
                outputs = _run_targets(style, [lossgrad.gram_output(l) for l in cfg.style_layers], x,
                                       {**scales, lossgrad.STYLE_MASK: mask})
                return dict(zip(cfg.style_layers, outputs))
            downsampling = {l: vgg.conv_layer(cfg.convnet, l).downsampling for l in cfg.style_layers}
            return regions.region_targets(masks, styles_x, masked_grams, downsampling)
        blend = np.asarray(cfg.style_blend or [1.0] * len(styles_x), np.float64)
        blend = blend / blend.sum()
        grams = {layer: 0.0 for layer in cfg.style_layers}
        for weight, x in zip(blend, styles_x):
            outputs = _run_targets(self._session("style", cfg), [lossgrad.gram_output(l) for l in cfg.style_layers],
                                   x, scales)
            # Gram sums grow with the positions summed over: rescale a style of another size to the output's.
            positions = (width * height) / (x.shape[2] * x.shape[3])
            for layer, g in zip(cfg.style_layers, outputs):
                grams[layer] = grams[layer] + weight * positions * g.astype(np.float64)
        return grams

    def _pool_scales(self, cfg: TransferConfig, content_x: np.ndarray) -> dict[str, np.ndarray]:
        """With average pooling, each pool's output times mean(maxpool(a)) / mean(a) on the
        content image, so activations keep the magnitudes the layer weights were chosen for."""
        graphs = self.graphs(cfg)
        if not graphs.pools:
            return {}
        # Each pool's input is the last conv of its block.
        pool_input = {lossgrad.pool_scale(f"block{l.block}_pool"): l.name for l in vgg.conv_layers(cfg.convnet)}
        acts = self._session("features", cfg).run([pool_input[name] for name in graphs.pools],
                                                  {INPUT_NAME: content_x})
        scales = {}
        for name, a in zip(graphs.pools, acts):
            c, h, w = a.shape[1:]
            maxed = a[0].reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))
            scales[name] = np.array(maxed.mean() / max(float(a.mean()), 1e-12), np.float32)
        return scales

    # -- one run ----------------------------------------------------------------------------

    def run(self, config: TransferConfig, content: ImageSource, style: Styles, output: str | Path | None = None,
            callback: Callback | None = None, cancel=None, resume: bool = False) -> TransferResult:
        """Optimise the image as the seed's ``style_transfer`` does, then beyond.

        For each scale (one by default): ``iterations`` iterations of ``maxfun``
        evaluations (``optimizer_mode`` seed: one fmin_l_bfgs_b call each; continuous:
        one run). With ``output``: snapshots ``<stem>_at_iteration_<N>.png`` every
        ``save_every`` iterations, after every iteration a checkpoint
        ``<stem>_checkpoint.npz`` (removed once finished), the final image, a run record
        ``<stem>.json``, and the sheet, GIF and loss curve when asked for.

        ``cancel``: anything with ``is_set()`` (a ``threading.Event``), set from another
        thread or by the callback: the run stops before its next evaluation and returns
        a result with ``status == "cancelled"`` (image: the last finished iteration's;
        no output written; snapshots and checkpoint kept). ``resume``: continue the run
        whose checkpoint is beside ``output`` (same config, same input files) from its
        last finished iteration, to the same iteration count as a run never stopped.
        The record is written once the run started (its first ``Prepared`` event).
        Errors raise an EngineError (record ``failed`` with the message; a non-finite
        loss keeps the last finite image as the output); KeyboardInterrupt (Ctrl-C,
        SIGTERM through engine.run.signals) is recorded ``interrupted`` and raised again.
        Everything the caller can get wrong is refused before any work.
        """
        cfg = config
        output = images.output_path(output) if output is not None else None
        sources = _as_list(style)
        check_styles(cfg, sources)
        if resume and output is None:
            raise ConfigError("resuming needs the output of the run to continue: give its output path")
        if output is not None:
            images.check_writable(output)
            if cfg.bit_depth == 16 and output.suffix.lower() not in (".png", ".tif", ".tiff"):
                raise ConfigError(f"{output}: 16-bit output needs a .png or .tif file")
        if cfg.plot:
            visuals.check_plotting()  # before hours of work, not after
        # Loaded once per run, at no less than the largest scale's size.
        content_image = load(content, cfg, cfg.size)
        style_images = [load(s, cfg, _style_fit(cfg)) for s in sources]
        if cfg.init_file is not None:  # an init image is read at the start: refused now if bad
            images.load_image(cfg.init_file, cfg.size, cfg.max_megapixels)
        sizes, per_scale = scale_plan(cfg, content_image.size)
        if self.provider is not Provider.CUDA:  # host memory; a GPU's is not known before its session
            working = sizes_for(cfg, content_image.size, sizes[-1])[1]
            check_memory(cfg, *working, winograd=self.winograd and not cfg.tileable,
                         style_sizes=tuple(style_working_size(cfg, s.size, working) for s in style_images))
        for edge in sizes if cfg.content_masks else ():  # a thin region could vanish at a coarse scale
            regions.load_masks(cfg, sizes_for(cfg, content_image.size, edge if len(sizes) > 1 else cfg.size)[1])
        if output is not None:
            files = run_files(output, cfg, sum(per_scale))
            check_not_inputs(files, run_inputs(cfg, content, sources))
            _check_same_stem(output)
        graphs = self.graphs(cfg)
        plan = _Plan(cfg, content_image, style_images, sizes, per_scale, output)
        with OutputLock(output) if output is not None else nullcontext() as lock:
            state = None
            fingerprint = None
            if output is not None:
                lock.remove_stale_temp_files({path.name for path in files.values()})
                weights = graphs.model_metadata.get("weights_sha256")
                fingerprint = checkpoints.fingerprint(cfg, content, sources, weights)
                if resume:
                    finished = read_record(record_path(output)).get("status") == RunStatus.FINISHED.value
                    if not checkpoint_path(output).exists() and finished:
                        raise RunError(f"nothing to resume: the run on {output} finished (its record is "
                                       f"{record_path(output)}); run without --resume to make it again")
                    state = checkpoints.load(checkpoint_path(output), fingerprint)
                    if not 0 <= state.scale < len(sizes):
                        raise RunError(f"cannot resume: the checkpoint {checkpoint_path(output)} is damaged; "
                                       "run again without --resume to start over")
            return _Run(self, plan, callback, cancel, state, fingerprint, content, sources).execute()


@dataclass(frozen=True)
class _Plan:
    """What one run will do: its config, images (loaded once), scales and output."""
    cfg: TransferConfig
    content_image: Image.Image
    style_images: list[Image.Image]
    sizes: list[int]
    per_scale: tuple[int, ...]
    output: Path | None


class _Run:
    """One run's state: its problems, iterations, files, checkpoint and record."""

    def __init__(self, engine: Engine, plan: _Plan, callback, cancel, state: Checkpoint | None,
                 fingerprint: dict | None, content: ImageSource, sources: list[ImageSource]):
        self.engine, self.plan, self.cfg, self.output = engine, plan, plan.cfg, plan.output
        self.emit = callback or (lambda event: None)
        self.cancel = cancel
        self.state, self.fingerprint = state, fingerprint
        self.content, self.sources = content, sources
        self.problems: list[Problem] = []
        self.reached: list[list[int]] = []   # working size of each scale the run reached
        self.evaluations = state.evaluations if state else 0
        self.total = sum(plan.per_scale) * self.cfg.maxfun
        self.files: list[Path] = [Path(f) for f in state.files] if state else []
        self.basis: float | None = None       # the loss scale of the current optimize call
        self.last: tuple[Problem, np.ndarray] | None = None  # the last finished iteration's image
        self.checkpoint = checkpoint_path(self.output) if self.output else None
        self.result = TransferResult(image=np.zeros((0, 0, 3), np.uint8), output=None,
                                     record=record_path(self.output) if self.output else None,
                                     iterations=list(state.iterations) if state else [],
                                     planned_iterations=sum(plan.per_scale))

    def cancelled(self) -> bool:
        return self.cancel is not None and bool(self.cancel.is_set())

    def execute(self) -> TransferResult:
        status, error, failing = RunStatus.FAILED, None, True
        self.started = time.perf_counter() - (self.state.seconds if self.state else 0.0)
        try:
            self._optimise_all()
            status, failing = RunStatus.FINISHED, False
        except Cancelled:
            status, failing = RunStatus.CANCELLED, False
            if self.last is not None:
                self.result.image = self.last[0].to_image(self.last[1])
        except (KeyboardInterrupt, SystemExit):  # SystemExit: e.g. rich's, on a closed pipe (| head)
            status = RunStatus.INTERRUPTED
            raise
        except NonFiniteError as exc:
            error = str(exc)
            error = self._keep_last_finite(exc)
            raise NonFiniteError(error) from None
        except EngineError as exc:
            error = str(exc)
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.result.seconds = time.perf_counter() - self.started
            self.result.status = status.value
            if self.output is not None and self.problems:  # it started: a record says how it ended
                self._end(status, error, failing)
            else:  # ended before it started: nothing written, an earlier run's files as they were
                self.result.record = None
        return self.result

    def _optimise_all(self) -> None:
        cfg, plan, state = self.cfg, self.plan, self.state
        x = None
        for index, (edge, iterations) in enumerate(zip(plan.sizes, plan.per_scale)):
            if state is not None and index < state.scale:
                self.reached.append(list(sizes_for(cfg, plan.content_image.size, edge)[1]))
                continue
            if self.cancelled():
                raise Cancelled
            tick = time.perf_counter()
            problem = self.engine.prepare(cfg, plan.content_image, plan.style_images,
                                          edge if len(plan.sizes) > 1 else cfg.size)
            self.problems.append(problem)
            self.reached.append([problem.shape[3], problem.shape[2]])
            self.result.provider = problem.provider
            self.emit(Prepared(problem.shape[3], problem.shape[2], problem.provider, time.perf_counter() - tick,
                               index + 1, len(plan.sizes)))
            if len(self.problems) == 1:
                self._begin()
            done, self.basis = 0, None
            if state is not None and index == state.scale:
                if state.x.shape != tuple(problem.shape):
                    raise RunError(f"cannot resume: the checkpoint {self.checkpoint} holds a "
                                   f"{state.x.shape[3]}x{state.x.shape[2]} image, this scale is "
                                   f"{problem.shape[3]}x{problem.shape[2]}; run again without --resume")
                x, done = state.x, iterations if state.complete else state.done
                self.basis = state.loss_scale if done else None
                self.last = (problem, x)
            elif x is None:
                x = problem.initial_image()
            else:
                x = resize_x(np.reshape(x, self.problems[-2].shape), problem.shape)
            if done < iterations:
                x = self._optimise(problem, x, index, done, iterations)
            self._save_checkpoint(problem, x, index, iterations, complete=True)
        self._write_output(self.problems[-1], x)
        if self.output is not None:
            self._visual_records()

    def _begin(self) -> None:
        """The run has started: from now on the output's record and checkpoint are this run's. A run
        that starts over removes an earlier run's checkpoint (maybe of other settings); the record
        says running until the run ends, so a killed run's record never stands for an earlier one."""
        if self.output is None:
            return
        if self.state is None:
            self.checkpoint.unlink(missing_ok=True)
        write_record(self.result.record, self._record(RunStatus.RUNNING, None))

    def _write_output(self, problem: Problem, x: np.ndarray) -> None:
        """The result's image from x, and the output file when there is one."""
        self.result.image = problem.to_image(x)
        if self.output is None:
            return
        if self.cfg.bit_depth == 16:
            visuals.save_image16(problem.to_rgb(x), self.output)
        else:
            images.save_image(self.result.image, self.output)
        self.files.append(self.output)
        self.result.output = self.output

    def _optimise(self, problem: Problem, x: np.ndarray, index: int, done: int, iterations: int) -> np.ndarray:
        cfg, output = self.cfg, self.output
        offset = len(self.result.iterations)

        def on_evaluation(loss: float) -> None:
            self.evaluations += 1
            if self.basis is None:
                self.basis = loss_scale(loss)
            self.emit(Evaluated(self.evaluations, self.total, loss))

        def on_iteration(i: int, xk: np.ndarray, used: int, seconds: float) -> None:
            n = offset + i
            terms = problem.terms(xk)
            snapshot = None
            if output is not None and cfg.save_every and n % cfg.save_every == 0:
                snapshot = snapshot_path(output, n)
                images.save_image(problem.to_image(xk), snapshot)
                self.files.append(snapshot)
            it = IterationDone(n, terms["loss"], terms["content"], terms["style"], terms["tv"],
                               used, seconds, snapshot, problem.shape[3], problem.shape[2])
            self.result.iterations.append(it)
            self.last = (problem, np.array(xk, copy=True))
            self._save_checkpoint(problem, xk, index, done + i, complete=False)
            self.emit(it)

        return optimize(problem, x, iterations - done, cfg.maxfun, cfg.optimizer_mode, on_iteration, cfg.tol,
                        problem.bounds() if cfg.clip_pixels else None, on_evaluation,
                        scale=self.basis, cancelled=self.cancelled)

    def _save_checkpoint(self, problem: Problem, x: np.ndarray, index: int, done: int, complete: bool) -> None:
        if self.checkpoint is None:
            return
        checkpoints.save(self.checkpoint, Checkpoint(
            np.asarray(x, np.float64).reshape(problem.shape), index, done, complete,
            self.basis if self.basis is not None else 1.0, self.evaluations, list(self.result.iterations),
            [str(f) for f in self.files], time.perf_counter() - self.started), self.fingerprint)

    def _keep_last_finite(self, exc: NonFiniteError) -> str:
        """The error line of a non-finite evaluation; the last finite image becomes the output."""
        message = (f"evaluation {self.evaluations + 1} of the run gave a non-finite {getattr(exc, 'what', 'loss')} "
                   "(NaN or infinity), the run stopped")
        problem = self.problems[-1] if self.problems else None
        if problem is None or problem.last_finite is None:
            return message + ": try smaller weights, --clip-pixels or another --init"
        self._write_output(problem, problem.last_finite)
        return message + (f"; the last finite image is {self.output}" if self.output else "")

    def _visual_records(self) -> None:
        cfg, output, its = self.cfg, self.output, self.result.iterations
        shots = [it.snapshot for it in its if it.snapshot]
        labels = [f"iteration {it.iteration}" for it in its if it.snapshot]
        paths = visual_paths(output)
        writers = {}
        if cfg.sheet and shots:
            writers["sheet"] = lambda path: visuals.contact_sheet(shots, path, labels=labels)
        if cfg.gif and shots:
            writers["gif"] = lambda path: visuals.progress_gif(shots, path)
        if cfg.plot:
            writers["plot"] = lambda path: visuals.loss_curve([it.record() for it in its], path)
        if cfg.tile_preview:
            writers["tiled"] = lambda path: visuals.tile_mosaic(self.result.image, path)
        for kind, write in writers.items():
            write(paths[kind])
            self.files.append(paths[kind])
            self.result.visuals[kind] = paths[kind]

    def _end(self, status: RunStatus, error: str | None, failing: bool) -> None:
        """Remove a finished run's checkpoint, then write the record (a failing run's record
        write that fails leaves no record rather than hiding the run's own error)."""
        if status is RunStatus.FINISHED:
            self.checkpoint.unlink(missing_ok=True)
        elif self.checkpoint.exists():
            self.result.checkpoint = self.checkpoint
        try:
            write_record(self.result.record, self._record(status, error))
        except RunError:
            self.result.record.unlink(missing_ok=True)  # an older run's record must not stand for this one
            self.result.record = None
            if not failing:
                raise

    def _record(self, status: RunStatus, error: str | None) -> dict:
        engine, cfg = self.engine, self.cfg
        graphs = engine.graphs(cfg)
        meta = graphs.model_metadata
        last = self.problems[-1] if self.problems else None
        return {
            "status": status.value,
            "error": error,
            "content": _name(self.content),
            "style": [_name(s) for s in self.sources] if len(self.sources) > 1 else _name(self.sources[0]),
            "target": str(self.output),
            "output": str(self.result.output) if self.result.output else None,
            "checkpoint": str(self.result.checkpoint) if self.result.checkpoint else None,
            "files": [str(f) for f in self.files],
            "resumed_after_iteration": self.state.iterations[-1].iteration if self.state and self.state.iterations
            else None,
            "config": cfg.to_dict(),
            "model": {"path": str(engine.model(cfg.convnet)), "architecture": meta.get("architecture"),
                      "weights_sha256": meta.get("weights_sha256"), "weights_source": meta.get("weights_source")},
            "graphs": {kind: str(getattr(graphs, kind)) for kind in ("content", "style", "loss")},
            "provider": last.provider if last else None,
            "runtime": last.runtime if last else None,
            "scales": self.reached,
            "working_size": [last.shape[3], last.shape[2]] if last else None,
            "output_size": list(last.output_size) if last else None,
            "versions": versions(),
            "seconds": round(self.result.seconds, 3),
            "evaluations": self.evaluations,
            "planned_iterations": self.result.planned_iterations,
            "iterations": [it.record() for it in self.result.iterations],
        }


# -- sizes, images, files ---------------------------------------------------------------------

def sizes_for(cfg: TransferConfig, content_size: tuple[int, int],
              size: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """The output size and the working size (pool-friendly) of a content image at ``size``
    px on its longest edge (None: its own size); ConfigError when too small for the layers."""
    output_size = images.working_size(content_size, size)
    if min(output_size) < cfg.min_image_size():
        raise ConfigError(
            f"the image would be {output_size[0]}x{output_size[1]} px, too small for the deepest chosen layer "
            f"(needs {cfg.min_image_size()} px per side): use a larger --size (or --min-size), "
            "or shallower layers")
    working = images.working_size(content_size, max(output_size), cfg.size_multiple())
    # A tile resized after the run would no longer wrap exactly: it keeps the working size.
    return (working if cfg.tileable else output_size), working


def scale_plan(cfg: TransferConfig, content_size: tuple[int, int]) -> tuple[list[int], tuple[int, ...]]:
    """The longest edge at each scale, coarse to fine, and the iterations at each."""
    final = cfg.size or max(content_size)
    scales = cfg.scales
    if scales is None:
        automatic = (final >= AUTO_SCALES_FROM and cfg.min_size is None and cfg.scale_iterations is None
                     and cfg.content_masks is None and not _too_small(cfg, content_size, math.ceil(final / 2)))
        if automatic:
            return _scale_sizes(cfg, content_size, final, 2), (AUTO_COARSE_ITERATIONS, cfg.iterations)
        scales = 1
    sizes = _scale_sizes(cfg, content_size, final, scales)
    per_scale = cfg.scale_iterations or (cfg.iterations,) * len(sizes)
    if len(per_scale) != len(sizes):
        raise ConfigError(f"{len(per_scale)} scale iteration counts for {len(sizes)} scales "
                          f"({', '.join(map(str, sizes))} px): give one per scale")
    return sizes, per_scale


def _scale_sizes(cfg: TransferConfig, content_size: tuple[int, int], final: int, scales: int) -> list[int]:
    smallest = cfg.min_size or math.ceil(final / 2 ** (scales - 1))
    count = scales if scales > 1 or cfg.min_size is None else 1 + math.ceil(math.log2(final / smallest))
    if count == 1 or smallest >= final:
        return [final]
    sizes = [round(smallest * (final / smallest) ** (k / (count - 1))) for k in range(count)]
    if _too_small(cfg, content_size, sizes[0]):
        raise ConfigError(
            f"the first of {count} scales is {sizes[0]} px on its longest edge, too small for the deepest "
            f"chosen layer (needs {cfg.min_image_size()} px per side): "
            + ("use a larger --min-size" if cfg.min_size else "use fewer --scales or a larger --min-size"))
    return sizes


def _too_small(cfg: TransferConfig, content_size: tuple[int, int], edge: int) -> bool:
    """Whether the content at ``edge`` px on its longest edge is too small for the deepest chosen layer."""
    return min(edge * min(content_size) // max(content_size), edge) < cfg.min_image_size()


def check_styles(cfg: TransferConfig, sources: list) -> None:
    blend = cfg.style_blend
    if not sources:
        raise ConfigError("no style image given")
    if blend is not None and len(blend) != len(sources):
        raise ConfigError(f"{len(blend)} style blend weights for {len(sources)} style images: "
                          "give one weight per style image")
    regions.check_count(cfg, len(sources))


def style_working_size(cfg: TransferConfig, style_size: tuple[int, int],
                       working: tuple[int, int]) -> tuple[int, int]:
    """The size a style image of ``style_size`` is worked on at, for a picture of ``working`` size."""
    if cfg.style_scale is None:
        return working  # the seed resizes the style to the content's size
    edge = max(16, round(cfg.style_scale * max(working)))
    return images.working_size(style_size, edge, cfg.size_multiple())


def _as_list(styles: Styles) -> list[ImageSource]:
    return list(styles) if isinstance(styles, (list, tuple)) else [styles]


def load(source: ImageSource, config: TransferConfig, fit: int | None) -> Image.Image:
    """An image source as RGB; a file is read at no less than ``fit`` px (None: whole)."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    return images.load_image(source, fit, config.max_megapixels)


def _style_fit(config: TransferConfig) -> int | None:
    """The longest edge (px) a style image is needed at, at most: the output's times style_scale."""
    return config.size and math.ceil(config.size * max(1.0, config.style_scale or 1.0))


def _name(source: ImageSource) -> str:
    return "<image>" if isinstance(source, Image.Image) else str(source)


def _check_same_stem(output: Path) -> None:
    """RunError when the record beside ``output`` is a run's on another output of the same name
    without its suffix (cat.png, cat.jpg): its record, snapshots and checkpoint would be replaced."""
    record = read_record(record_path(output))
    theirs = record.get("target") or record.get("output")  # records before "target" name a finished output only
    # By name: the record lies beside its output, and a folder moved since keeps its runs.
    if isinstance(theirs, str) and Path(theirs).name != output.name:
        raise RunError(f"{record_path(output)} is the record of the run on {theirs}: a run on {output} would replace "
                       "it and that run's snapshots and checkpoint; choose another output name")
