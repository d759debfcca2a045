"""The seed's four parameter sets ("Generate pictures" and Part F), by the names of their outputs.

Each also pins the seed's loop (noise start, L-BFGS-B restarted every iteration, every
iteration run), where the engine's defaults start from the content with one continuous run
that stops once an iteration changes the loss little: a preset reproduces the
seed's pictures and numbers; an override (e.g. ``--optimizer-mode continuous --init content``)
takes the faster path with its weights.
"""
from __future__ import annotations

from typing import Any

from .config import TransferConfig
from .errors import ConfigError

_SEED_LOOP = dict(optimizer_mode="seed", init="noise", tol=None, scales=1)
_VGG16_STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")

PRESETS: dict[str, dict[str, Any]] = {
    "wave_chicago": dict(
        convnet="vgg16", content_weight=500, style_weights=(20, 20, 30, 10, 10), tv_weight=200,
        content_layer="block4_conv2", style_layers=_VGG16_STYLE_LAYERS, iterations=50, **_SEED_LOOP),
    "starry_tubingen": dict(
        convnet="vgg16", content_weight=100, style_weights=(1000, 100, 12, 1, 1), tv_weight=200,
        content_layer="block4_conv2", style_layers=_VGG16_STYLE_LAYERS, iterations=50, **_SEED_LOOP),
    "portrait_of_pavlos": dict(
        convnet="vgg16", content_weight=1000, style_weights=(500, 100, 12, 1, 1), tv_weight=200,
        content_layer="block4_conv2", style_layers=_VGG16_STYLE_LAYERS, iterations=50, **_SEED_LOOP),
    # Part F: the only VGG19 set; its style layers are each block's last conv.
    "pavlos_grandma_woman_with_hat": dict(
        convnet="vgg19", content_weight=1000, style_weights=(500, 100, 12, 1, 1), tv_weight=200,
        content_layer="block4_conv2",
        style_layers=("block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4", "block5_conv4"),
        iterations=50, **_SEED_LOOP),
}


def preset_config(name: str, **overrides: Any) -> TransferConfig:
    """The TransferConfig of preset ``name``; ``overrides`` replace its fields.

    An override whose value is None is ignored, so CLI options left unset keep the
    preset's value.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    given = {key: value for key, value in overrides.items() if value is not None}
    return TransferConfig(**{**PRESETS[name], **given})
