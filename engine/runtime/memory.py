"""Memory: what one evaluation and a run need at a working size, estimated before
the run starts, and refusing a run that would not fit instead of being killed.

The per-evaluation estimate counts tensor bytes (linear in pixels, plus the
weights); ONNX Runtime's CPU arena and the process keep more: the measured peak
RSS above the interpreter's was 1.47-1.49 times the estimate at 512 and 1024 px
(benchmarks/results), so a run is counted as ``ARENA_FACTOR`` times it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..models import vgg
from ..config import Pooling, TransferConfig
from ..errors import MemoryLimitError
from ..graph.lossgrad import WINOGRAD_TILES

FLOAT32 = 4
GIB = 1024 ** 3
ARENA_FACTOR = 1.6


@dataclass(frozen=True)
class FeatureMap:
    """One tensor of the forward pass up to the deepest chosen layer: a conv's (ReLU'd) output or a pool's."""
    kind: str        # "conv" or "pool"
    name: str        # block1_conv1 ..., block1_pool ...
    in_channels: int
    channels: int
    height: int      # of this tensor
    width: int

    @property
    def elements(self) -> int:
        return self.channels * self.height * self.width


def forward_maps(config: TransferConfig, width: int, height: int) -> list[FeatureMap]:
    """The forward tensors, in order, at a (width, height) image: each conv output (its
    input is the previous map, or the image) and each 2x2 pool (floor) between blocks."""
    order = vgg.conv_layer_names(config.convnet)
    deepest = max([config.content_layer, *config.style_layers], key=order.index)
    maps: list[FeatureMap] = []
    h, w, block = height, width, 1
    for layer in vgg.conv_layers(config.convnet):
        if layer.block != block:
            maps.append(FeatureMap("pool", f"block{block}_pool", layer.in_channels, layer.in_channels, h // 2, w // 2))
            h, w, block = h // 2, w // 2, layer.block
        maps.append(FeatureMap("conv", layer.name, layer.in_channels, layer.out_channels, h, w))
        if layer.name == deepest:
            break
    return maps


# Host-side copies of the image per evaluation, bytes per image element (3 per pixel): Problem
# keeps its last 4 points as float64 and returns the gradient as float64; the evaluator's bound
# float32 image and the float32 gradient it hands back.
_HOST_BYTES_PER_ELEMENT = 4 * 8 + 8 + 4 + 4
# Image-sized float32 tensors of the TV term and the final gradient sum (crops, differences, pads).
_IMAGE_TENSORS = 12


def _winograd(m: FeatureMap, winograd: bool) -> int | None:
    """The tile size m of this conv's Winograd F(m, 3) in a ``winograd`` graph, else None."""
    block = int(m.name[len("block"):].split("_")[0])
    return WINOGRAD_TILES.get(block) if winograd and m.kind == "conv" else None


def activation_peak(config: TransferConfig, width: int, height: int, winograd: bool = False) -> tuple[int, str]:
    """The most float32 feature-map elements alive at once in one evaluation, and where.

    A walk over the graph's phases, assuming tensors are freed after their last use:
    at the end of the forward every conv (ReLU) output and pool output is kept for
    the backward's masks, and each loss term's gradient w.r.t. its layer (a feature
    map per style layer, two for the content layer: the difference and its gradient)
    waits for the backward. Walking back, a step's own and shallower maps are still
    alive, deeper ones are freed; a conv step adds the incoming gradient, the ReLU
    mask, the masked gradient and the input gradient, a max-pool step the incoming
    gradient and three input-sized tensors (mask, upsampled gradient, product). A Winograd
    F(m, 3) conv's input gradient also holds its tiles ((m+2)^2/m^2 times the gradient's
    size) and their products (that much of the input).
    """
    maps = forward_maps(config, width, height)
    seeds = {m.name: 0 for m in maps}
    for layer in config.style_layers:
        seeds[layer] += next(m.elements for m in maps if m.name == layer)
    seeds[config.content_layer] += 2 * next(m.elements for m in maps if m.name == config.content_layer)
    # An average pool also keeps its unscaled output (the scale is a separate Mul).
    kept = [m.elements * (2 if m.kind == "pool" and config.pooling is Pooling.AVG else 1) for m in maps]
    peak, where = sum(kept) + sum(seeds.values()), "end of forward"
    for i in reversed(range(len(maps))):
        m = maps[i]
        below = maps[i - 1].elements if i > 0 else 3 * width * height
        alive = sum(kept[:i + 1]) + sum(seeds[n.name] for n in maps[:i + 1])
        transient = 3 * m.elements + below if m.kind == "conv" else m.elements + 3 * below
        tile = _winograd(m, winograd)
        if tile:
            transient += (tile + 2) ** 2 * (m.elements + below) // tile ** 2
        if alive + transient > peak:
            peak, where = alive + transient, f"backward of {m.name}"
    return peak, where


def eval_memory_breakdown(config: TransferConfig, width: int, height: int,
                          winograd: bool = False) -> dict[str, int]:
    """The parts of :func:`estimate_eval_bytes`, in bytes: ``weights`` is constant, the
    other parts are proportional to the pixel count."""
    maps = forward_maps(config, width, height)
    pixels = width * height
    weights = 0
    convs = [m for m in maps if m.kind == "conv"]
    for m in convs:
        tile = _winograd(m, winograd)
        # A direct conv keeps its kernel and the flipped copy its backward uses (the image's conv
        # none: its backward is a ConvTranspose of the kernel, except on a torus, 7 KB); a Winograd
        # conv keeps one transformed kernel ((m+2)^2 values per 9) that both directions share.
        direct = 9 if m is convs[0] else 2 * 9
        weights += m.in_channels * m.channels * (direct if tile is None else (tile + 2) ** 2) + m.channels
    return {
        "activations": FLOAT32 * activation_peak(config, width, height, winograd)[0],
        "image": FLOAT32 * _IMAGE_TENSORS * 3 * pixels,
        "host": _HOST_BYTES_PER_ELEMENT * 3 * pixels,
        # The loss graph's forward weights and their flipped copies for the backward (the
        # targets graphs' sessions are closed once the targets are computed).
        "weights": FLOAT32 * weights,
    }


def estimate_eval_bytes(config: TransferConfig, width: int, height: int, winograd: bool = False) -> int:
    """Estimated memory (bytes) one evaluation at a (width, height) working size needs:
    the tensors alive at its peak (:func:`activation_peak`), the image-sized tensors and
    host copies, and the weights (the constant part); affine in the pixel count.

    It counts tensor bytes, as an allocator that frees each tensor after its last use
    would need; an arena allocator keeps more (the benchmark reports the measured peak
    RSS beside it). Excludes the interpreter and libraries and the optimiser's state
    (:func:`estimate_optimizer_bytes`).
    """
    return sum(eval_memory_breakdown(config, width, height, winograd).values())


def estimate_optimizer_bytes(width: int, height: int, history: int = 10) -> int:
    """scipy's L-BFGS-B state for 3*width*height float64 variables: its work array
    (2*m*n + 5*n + 11*m*m + 8*m doubles, m = ``history``, 10 by default) plus x,
    the gradient and the bounds arrays (about 5 n doubles)."""
    n = 3 * width * height
    return 8 * (2 * history * n + 5 * n + 11 * history ** 2 + 8 * history + 5 * n)


def largest_square(bytes_for: Callable[[int, int], float], budget: float, multiple: int = 16) -> int:
    """The largest square side (a multiple of ``multiple``) with ``bytes_for(side, side) <= budget`` (0: none)."""
    if bytes_for(multiple, multiple) > budget:
        return 0
    low, high = 1, 2
    while bytes_for(high * multiple, high * multiple) <= budget:
        low, high = high, high * 2
        if high > 1 << 20:
            return low * multiple
    while high - low > 1:
        mid = (low + high) // 2
        if bytes_for(mid * multiple, mid * multiple) <= budget:
            low = mid
        else:
            high = mid
    return low * multiple


def proc_bytes(file: str, key: str) -> int | None:
    """A ``/proc`` field given in kB (``/proc/meminfo`` MemTotal, MemAvailable;
    ``/proc/self/status`` VmRSS, VmHWM) in bytes, None where there is none."""
    try:
        for line in Path("/proc", file).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_bytes(config: TransferConfig, width: int, height: int, winograd: bool = False) -> float:
    """Estimated peak memory of a run at a (width, height) working size, in bytes."""
    return (ARENA_FACTOR * estimate_eval_bytes(config, width, height, winograd)
            + estimate_optimizer_bytes(width, height))


def available_bytes() -> int | None:
    """MemAvailable; None where it cannot be read (then nothing is refused)."""
    return proc_bytes("meminfo", "MemAvailable")


# A style image's targets pass (forward only, no arena, tensors freed after their last use) peaked
# at 1.9-2.2 times its largest feature map above the engine's own memory, at 1024x816, 2048x1632
# and 4096x3264 px (--style-scale 4 and 8): counted as this many.
TARGETS_MAPS = 2.5


def targets_bytes(config: TransferConfig, width: int, height: int) -> float:
    """Estimated peak memory of computing a (width, height) style image's targets, in bytes."""
    largest = max(m.elements for m in forward_maps(config, width, height))
    return FLOAT32 * (TARGETS_MAPS * largest + 3 * width * height)


def check_memory(config: TransferConfig, width: int, height: int, available: int | None = None,
                 winograd: bool = False, style_sizes: tuple[tuple[int, int], ...] = ()) -> None:
    """MemoryLimitError unless a run at a (width, height) working size, and the targets of its style
    images at ``style_sizes``, fit in the available memory (None: MemAvailable)."""
    available = available if available is not None else available_bytes()
    if available is None:
        return
    for style_width, style_height in style_sizes:
        need = targets_bytes(config, style_width, style_height)
        if need > available:
            raise MemoryLimitError(
                f"the style image at {style_width}x{style_height} px needs about {need / GIB:.1f} GiB for its "
                f"targets but {available / GIB:.1f} GiB are available: use a smaller --style-scale (or --size)")
    need = run_bytes(config, width, height, winograd)
    if need > available:
        side = largest_square(lambda w, h: run_bytes(config, w, h, winograd), available, config.size_multiple())
        raise MemoryLimitError(
            f"a {width}x{height} px run needs about {need / GIB:.1f} GiB but {available / GIB:.1f} GiB "
            f"are available: use a smaller --size (a {side} px square fits)")
