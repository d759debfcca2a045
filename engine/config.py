"""The settings of one style transfer: a frozen dataclass validated once, and the string choices.

Defaults are the seed's ``style_transfer`` defaults except these. The weights are those of
the seed's Starry Night picture (preset ``starry_tubingen``): its signature's (content 3e-2,
style up to 2e4, tv 5e-2) were only ever used for its unit tests and, run to the end, leave
a painting with the photo gone. The start, the optimiser and the sizes: the content image,
one continuous L-BFGS run that stops once the picture stops changing (tol), and a few
iterations at half size first from 128 px up reach the seed's loss several times sooner
(benchmarks/results, README "Time to a picture"); the seed's presets pin its own loop.
Every other module and the CLI take the defaults from here, so each one is written once.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from .models import vgg
from .errors import ConfigError
from .io.images import MAX_MEGAPIXELS


# scales=None: from this output size (longest edge, px) a run first takes a few iterations at
# half the size (measured faster at 128, 192, 256 and 512 px); below it the half-size image
# is under 64 px, and the pass was not measured (README "Time to a picture").
AUTO_SCALES_FROM = 128
AUTO_COARSE_ITERATIONS = 3
# Each scale halves the size: 12 go from 65536 px down to 32, more than any run can use.
MAX_SCALES = 12


class Pooling(str, Enum):
    """Downsampling between VGG blocks: the trained max pooling, or average (smoother results)."""
    MAX = "max"
    AVG = "avg"


class Provider(str, Enum):
    """ONNX Runtime execution provider; AUTO takes CUDA when it starts, else CPU."""
    AUTO = "auto"
    CUDA = "cuda"
    CPU = "cpu"


class Init(str, Enum):
    """Starting image of the optimisation: uniform noise (the seed), the content or the style image."""
    NOISE = "noise"
    CONTENT = "content"
    STYLE = "style"


class PreserveColors(str, Enum):
    """Keep the content's colours: NONE, LUMINANCE (style on luminance only), HISTOGRAM (style recoloured)."""
    NONE = "none"
    LUMINANCE = "luminance"
    HISTOGRAM = "histogram"


class StyleNormalization(str, Enum):
    """Per-layer style weighting: RAW (the seed's weights as given) or GATYS (times 1e3/C^2)."""
    RAW = "raw"
    GATYS = "gatys"


class OptimizerMode(str, Enum):
    """SEED restarts L-BFGS every iteration as the seed does; CONTINUOUS keeps its curvature memory."""
    SEED = "seed"
    CONTINUOUS = "continuous"


@dataclass(frozen=True)
class TransferConfig:
    """Everything that decides the result of one transfer, validated at construction.

    convnet:        backbone, "vgg16" or "vgg19".
    content_layer:  Keras conv layer name whose activations the content loss matches.
    style_layers:   conv layer names whose Gram matrices the style loss matches.
    content_weight: weight of the content loss (sum of squared activation differences).
    style_weights:  one weight per style layer; the seed also divides each by len(style_layers).
    tv_weight:      weight of the total-variation loss (sum of squared neighbour differences,
                    in 0-255 pixel units).
    iterations:     outer iterations; each runs L-BFGS and may save a snapshot.
    maxfun:         most loss-and-gradient evaluations per iteration (the seed's fmin_l_bfgs_b maxfun).
    seed:           seed of the random start image; None draws a fresh one each run.
    size:           longest edge of the output in px; None keeps the content image's size.
    pooling:        Pooling.MAX (as trained) or Pooling.AVG; a plain "max"/"avg" is accepted.
    save_every:     save a snapshot every N iterations; 0 saves none.
    init:           start image: "noise" (the seed's uniform(0,255)-128), "content", "style",
                    or the path of an image file.
    style_blend:    one weight per style image when several are given (normalised to sum 1);
                    None weighs them equally.
    preserve_colors: PreserveColors: keep the content's colours (luminance-only transfer, or
                    the style's colour histogram matched to the content's).
    style_scale:    the style image's longest edge relative to the output's (aspect kept);
                    None resizes it to the output size, as the seed does.
    scales:         number of sizes, coarse to fine, the result of each the start of the next.
                    None (automatic): an output of AUTO_SCALES_FROM px or more on its longest
                    edge first runs AUTO_COARSE_ITERATIONS iterations at half its size, then
                    ``iterations`` at its size; a smaller one, or one with min_size,
                    scale_iterations or content_masks given, runs at its size only.
    min_size:       longest edge of the first (coarsest) size; None: size / 2**(scales-1).
    scale_iterations: iterations at each size, coarse to fine; None: ``iterations`` at each.
    optimizer_mode: OptimizerMode.SEED restarts L-BFGS every iteration as the seed does;
                    CONTINUOUS is one L-BFGS run of iterations*maxfun evaluations.
    tol:            stop once an iteration (maxfun evaluations) lowers the loss by at most tol
                    times the loss it started from: the picture has stopped changing. 0 or
                    None: run every iteration (the presets do, as the seed).
    clip_pixels:    keep pixels within 0..255 through L-BFGS-B's box constraints.
    style_normalization: StyleNormalization: RAW (the seed's) or GATYS (each layer's weight
                    times 1e3 / C**2, C its channel count, so weights carry across networks).
    sheet, gif, plot: also write a contact sheet of the snapshots, an animated GIF of them, and
                    a loss-curve PNG (plot needs matplotlib: the 'plot' extra).
    bit_depth:      8, or 16 for 16-bit PNG/TIFF output.
    content_masks:  regions (guided Grams, Gatys et al. 2017): one mask image per style image,
                    saying where that style applies (white or opaque = there; any size,
                    resized to the working size); together they must cover the image.
                    None: every style applies everywhere.
    style_masks:    with content_masks, one mask per style image saying which part of it its
                    statistics come from; None: the whole style image.
    tileable:       the output wraps around (seamless tiles): every convolution sees the image
                    as a torus and the total variation wraps; the output keeps the working size.
    tile_preview:   also write a 2x2 mosaic of the result (``<stem>_tiled.png``) to check the seams.
    max_megapixels: the largest input image read (width * height / 1e6); larger ones are
                    refused before decoding.
    """

    convnet: str = "vgg16"
    content_layer: str = "block4_conv2"
    style_layers: tuple[str, ...] = (
        "block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
    content_weight: float = 100
    style_weights: tuple[float, ...] = (1000, 100, 12, 1, 1)
    tv_weight: float = 200
    iterations: int = 50
    maxfun: int = 20
    seed: int | None = 0
    size: int | None = None
    pooling: Pooling = Pooling.MAX
    save_every: int = 1
    init: str = "content"
    style_blend: tuple[float, ...] | None = None
    preserve_colors: PreserveColors = PreserveColors.NONE
    style_scale: float | None = None
    scales: int | None = None
    min_size: int | None = None
    scale_iterations: tuple[int, ...] | None = None
    optimizer_mode: OptimizerMode = OptimizerMode.CONTINUOUS
    tol: float | None = 0.01
    clip_pixels: bool = False
    style_normalization: StyleNormalization = StyleNormalization.RAW
    sheet: bool = False
    gif: bool = False
    plot: bool = False
    bit_depth: int = 8
    content_masks: tuple[str, ...] | None = None
    style_masks: tuple[str, ...] | None = None
    tileable: bool = False
    tile_preview: bool = False
    max_megapixels: float = MAX_MEGAPIXELS

    def __post_init__(self) -> None:
        # Frozen: normalised values go in through object.__setattr__, once, here.
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        vgg.check_architecture(self.convnet)
        _check_layer(self.convnet, "content_layer", self.content_layer)

        style_layers = tuple(str(name) for name in _as_tuple(self.style_layers))
        if not style_layers:
            raise ConfigError("style_layers is empty: give at least one conv layer, e.g. block1_conv1")
        for name in style_layers:
            _check_layer(self.convnet, "style_layers", name)
            if style_layers.count(name) > 1:
                raise ConfigError(f"style layer '{name}' is listed twice: give each layer once")
        put("style_layers", style_layers)

        style_weights = tuple(_weight("style_weights", w) for w in _as_tuple(self.style_weights))
        if len(style_weights) != len(style_layers):
            raise ConfigError(f"{len(style_weights)} style_weights for {len(style_layers)} style_layers: "
                              "give one weight per style layer")
        put("style_weights", style_weights)
        put("content_weight", _weight("content_weight", self.content_weight))
        put("tv_weight", _weight("tv_weight", self.tv_weight))

        put("iterations", _integer("iterations", self.iterations, 1))
        put("maxfun", _integer("maxfun", self.maxfun, 1))
        put("save_every", _integer("save_every", self.save_every, 0, "(0 saves no snapshots)"))
        if self.seed is not None:
            put("seed", _integer("seed", self.seed, 0, "(or None for a fresh random start)"))
        if self.size is not None:
            put("size", _integer("size", self.size, 16, "px (or None to keep the content image's size)"))
        put("pooling", parse_choice(Pooling, "pooling", self.pooling))

        put("init", str(self.init))
        if self.init_file is not None and not Path(self.init_file).is_file():
            raise ConfigError(f"init '{self.init}' is neither noise, content, style nor an existing image file")
        if self.style_blend is not None:
            blend = tuple(_weight("style_blend", w) for w in _as_tuple(self.style_blend))
            if not sum(blend) > 0:
                raise ConfigError("style_blend weights are all 0: give at least one positive weight")
            put("style_blend", blend)
        put("preserve_colors", parse_choice(PreserveColors, "preserve_colors", self.preserve_colors))
        if self.style_scale is not None:
            scale = _weight("style_scale", self.style_scale)
            if not 0.05 <= scale <= 8:
                raise ConfigError(f"style_scale must be between 0.05 and 8, got {scale:g}")
            put("style_scale", scale)
        if self.scales is not None:
            put("scales", _integer("scales", self.scales, 1, "(leave it out to choose by the output's size)",
                                   MAX_SCALES))
        if self.min_size is not None:
            put("min_size", _integer("min_size", self.min_size, self.min_image_size(),
                                     "px for the deepest chosen layer"))
        if self.scale_iterations is not None:
            put("scale_iterations", tuple(_integer("scale_iterations", n, 1) for n in _as_tuple(self.scale_iterations)))
        put("optimizer_mode", parse_choice(OptimizerMode, "optimizer_mode", self.optimizer_mode))
        if self.tol is not None:
            put("tol", _weight("tol", self.tol))
        put("style_normalization", parse_choice(StyleNormalization, "style_normalization", self.style_normalization))
        for flag in ("clip_pixels", "sheet", "gif", "plot"):
            put(flag, bool(getattr(self, flag)))
        if (self.sheet or self.gif) and not self.save_every:
            raise ConfigError("the contact sheet and the GIF are made of snapshots: set save_every >= 1")
        if self.bit_depth not in (8, 16):
            raise ConfigError(f"bit_depth must be 8 or 16, got {self.bit_depth!r}")
        put("max_megapixels", _weight("max_megapixels", self.max_megapixels))
        if not self.max_megapixels > 0:
            raise ConfigError("max_megapixels must be > 0")
        self._check_masks(put)
        for flag in ("tileable", "tile_preview"):
            put(flag, bool(getattr(self, flag)))
        if self.tileable and self.preserve_colors is PreserveColors.LUMINANCE:
            raise ConfigError("tileable and preserve_colors luminance do not mix: the content's colours put back "
                              "after the run would not wrap; use preserve_colors histogram")

    def _check_masks(self, put) -> None:
        for name in ("content_masks", "style_masks"):
            value = getattr(self, name)
            if value is None:
                continue
            paths = tuple(str(p) for p in _as_tuple(value))
            if not paths:
                raise ConfigError(f"{name} is empty: give one mask image per style image (or None)")
            for path in paths:
                if not Path(path).is_file():
                    raise ConfigError(f"{name}: mask '{path}' is not an existing image file, check the path")
            put(name, paths)
        if self.style_masks is not None:
            if self.content_masks is None:
                raise ConfigError("style_masks need content_masks: they say where each masked style applies")
            if len(self.style_masks) != len(self.content_masks):
                raise ConfigError(f"{len(self.style_masks)} style masks for {len(self.content_masks)} content "
                                  "masks: give one of each per style image")
        if self.content_masks is not None and self.style_blend is not None:
            raise ConfigError("style_blend and content_masks do not mix: with masks each style has its own region")

    @property
    def init_file(self) -> str | None:
        """The start image's path when ``init`` names a file; None for noise, content or style."""
        return None if self.init in {i.value for i in Init} else self.init

    def replace(self, **changes: Any) -> TransferConfig:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields: enums as their values, tuples as lists. ``TransferConfig(**d)`` rebuilds it."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def min_image_size(self) -> int:
        """Smallest image edge (px) that leaves the deepest chosen layer at least 1 px of feature map."""
        return self._deepest_downsampling()

    def size_multiple(self) -> int:
        """The multiple (px) working sizes are rounded to: every 2x2 pooling before the
        deepest chosen layer then sees even sizes, so no row or column is dropped."""
        return self._deepest_downsampling()

    def _deepest_downsampling(self) -> int:
        return max(vgg.conv_layer(self.convnet, name).downsampling
                   for name in (self.content_layer, *self.style_layers))


def parse_choice(enum_cls: type[Enum], name: str, value: Any) -> Enum:
    """``value`` as a member of ``enum_cls``; a wrong string is a ConfigError that lists the choices."""
    try:
        return enum_cls(value)
    except ValueError:
        options = ", ".join(member.value for member in enum_cls)
        raise ConfigError(f"unknown {name} {value!r}: choose one of {options}") from None


def _check_layer(arch: str, field: str, name: str) -> None:
    try:
        vgg.conv_layer(arch, name)
    except ConfigError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def _as_tuple(value: Any) -> tuple:
    # A lone "block1_conv1" or 1.0 means a one-element list, not a sequence of characters.
    if isinstance(value, (str, numbers.Number)):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(f"expected a list, got {value!r}") from None


def _weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, minimum: int, hint: str = "", maximum: int | None = None) -> int:
    whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}{' ' + hint if hint else ''}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value!r}")
    return int(value)
