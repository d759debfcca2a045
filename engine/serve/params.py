"""A job's parameters: the JSON a client sends, turned into a validated TransferConfig.

Any ``nst stylize`` setting (``TransferConfig`` field) may be given, plus ``preset``.
The server reads no path a client names, so ``init`` is noise, content or style.
"""
from __future__ import annotations

import json
import typing
from dataclasses import fields
from typing import Any

from ..config import Init, TransferConfig
from ..errors import ConfigError
from ..io.images import working_size
from ..presets import preset_config
from ..run.engine import style_working_size

# As `nst stylize`: a server's job is 512 px on its longest edge unless asked otherwise.
DEFAULT_SIZE = 512
FIELDS = tuple(f.name for f in fields(TransferConfig))
_FIELD_TYPES = typing.get_type_hints(TransferConfig)


def _no_constant(name: str) -> Any:
    raise ConfigError(f"params holds {name}: give finite numbers (JSON has no NaN or Infinity)")


def parse_params(text: str) -> dict[str, Any]:
    """The ``params`` form field: a JSON object (empty: all defaults; no NaN or Infinity, which
    Python's json takes but no JSON answer can carry back)."""
    try:
        params = json.loads(text or "{}", parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"params is not valid JSON ({exc.msg} at character {exc.pos}): "
                          'send an object such as {"preset": "starry_tubingen", "size": 256}') from None
    if not isinstance(params, dict):
        raise ConfigError('params must be a JSON object such as {"size": 256, "iterations": 10}')
    return params


def job_config(params: dict[str, Any], style_sizes: list[tuple[int, int]], content_size: tuple[int, int],
               max_pixels: int) -> TransferConfig:
    """The job's TransferConfig; ConfigError for anything unknown, invalid, or over the server's limits."""
    settings = dict(params)
    preset = settings.pop("preset", None)
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
                          f"use preset or any of {', '.join(FIELDS)}")
    init = settings.get("init", Init.NOISE.value)
    if not isinstance(init, str) or init not in {i.value for i in Init}:
        raise ConfigError(f"init {init!r} is not allowed on a server: choose noise, content or style "
                          "(the server reads no file a client names)")
    for masks in ("content_masks", "style_masks"):
        if settings.get(masks) is not None:
            raise ConfigError(f"{masks} is not allowed on a server: it names files, and the server reads no "
                              "file a client names (run masked jobs with nst stylize or nst batch)")
    wrong = sorted(name for name in settings if _FIELD_TYPES[name] is bool and not isinstance(settings[name], bool))
    if wrong:
        raise ConfigError(f"{wrong[0]} must be true or false, got {settings[wrong[0]]!r}")
    settings.setdefault("size", DEFAULT_SIZE)
    try:
        config = preset_config(preset, **settings) if preset is not None else TransferConfig(**settings)
    except TypeError as exc:  # a wrongly typed value the dataclass could not take
        raise ConfigError(f"invalid parameters: {exc}") from None
    if config.style_blend is not None and len(config.style_blend) != len(style_sizes):
        raise ConfigError(f"{len(config.style_blend)} style_blend weights for {len(style_sizes)} style images: "
                          "give one weight per style image")
    width, height = working_size(content_size, config.size)
    if width * height > max_pixels:
        raise ConfigError(f"size {config.size} makes a {width}x{height} = {width * height} pixel picture, over the "
                          f"server's limit of {max_pixels} pixels (--max-pixels): choose a smaller size")
    for style_size in style_sizes:  # a style image is worked on at style_scale times the picture's size
        sw, sh = style_working_size(config, style_size, (width, height))
        if sw * sh > max_pixels:
            raise ConfigError(f"style_scale {config.style_scale:g} makes a {sw}x{sh} = {sw * sh} pixel style image, "
                              f"over the server's limit of {max_pixels} pixels (--max-pixels): choose a smaller "
                              "style_scale or size")
    for what, size in [("content", content_size)] + [("style", s) for s in style_sizes]:
        if size[0] * size[1] > config.max_megapixels * 1e6:
            raise ConfigError(f"max_megapixels {config.max_megapixels:g} is below the {what} image's "
                              f"{size[0] * size[1] / 1e6:.3g} megapixels: raise it or leave it out")
    return config
