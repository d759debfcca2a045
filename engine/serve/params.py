"""A job's parameters: the JSON a client sends, turned into a validated TransferConfig.

Any ``nst stylize`` setting (``TransferConfig`` field) may be given, plus ``preset``.
The server reads no path a client names, so ``init`` is noise, content or style.
"""
from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from ..config import Init, TransferConfig
from ..errors import ConfigError
from ..io.images import working_size
from ..presets import preset_config

# As `nst stylize`: a server's job is 512 px on its longest edge unless asked otherwise.
DEFAULT_SIZE = 512
FIELDS = tuple(f.name for f in fields(TransferConfig))


def parse_params(text: str) -> dict[str, Any]:
    """The ``params`` form field: a JSON object (empty: all defaults)."""
    try:
        params = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"params is not valid JSON ({exc.msg} at character {exc.pos}): "
                          'send an object such as {"preset": "starry_tubingen", "size": 256}') from None
    if not isinstance(params, dict):
        raise ConfigError('params must be a JSON object such as {"size": 256, "iterations": 10}')
    return params


def job_config(params: dict[str, Any], styles: int, content_size: tuple[int, int], max_pixels: int) -> TransferConfig:
    """The job's TransferConfig; ConfigError for anything unknown, invalid, or over the server's limits."""
    settings = dict(params)
    preset = settings.pop("preset", None)
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
                          f"use preset or any of {', '.join(FIELDS)}")
    init = settings.get("init", Init.NOISE.value)
    if init not in {i.value for i in Init}:
        raise ConfigError(f"init {init!r} is not allowed on a server: choose noise, content or style "
                          "(the server reads no file a client names)")
    settings.setdefault("size", DEFAULT_SIZE)
    try:
        config = preset_config(preset, **settings) if preset is not None else TransferConfig(**settings)
    except TypeError as exc:  # a wrongly typed value the dataclass could not take
        raise ConfigError(f"invalid parameters: {exc}") from None
    if config.style_blend is not None and len(config.style_blend) != styles:
        raise ConfigError(f"{len(config.style_blend)} style_blend weights for {styles} style images: "
                          "give one weight per style image")
    width, height = working_size(content_size, config.size)
    if width * height > max_pixels:
        raise ConfigError(f"size {config.size} makes a {width}x{height} = {width * height} pixel picture, over the "
                          f"server's limit of {max_pixels} pixels (--max-pixels): choose a smaller size")
    return config
