"""Regions: a style per part of the picture (guided Gram matrices, Gatys et al. 2017).

Content mask r (at the working size) says where style image r applies; an optional
style mask r says which part of style image r its statistics come from. At each style
layer both masks are brought to the layer's resolution by a 2x2 average per pool (the
graphs do the same to the content masks), and region r's style loss is

    w_L / len(style_layers) / 4 * || G(F m_r) / a_r - G(S s_r) / b_r ||^2

with F, S the output's and the style's features, a_r = sum(m_r^2) and b_r = sum(s_r^2)
the masks' areas at that layer (each Gram is a mean over its region). With one region
covering everything this is exactly the seed's style loss. The loss graph takes it as
``sum(c_r (G(F m_r) - T_r)^2)``: the host folds the areas into T_r = G(S s_r) a_r / b_r
and c_r = w_L / len / (4 a_r^2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import TransferConfig
from ..errors import ConfigError
from ..graph import lossgrad
from ..io.masks import load_mask

# Share of the image allowed below half coverage (anti-aliased edges of hand-drawn masks).
UNCOVERED_TOLERANCE = 0.001


@dataclass(frozen=True)
class Masks:
    content: list[np.ndarray]   # (H, W) at the working size, one per region
    styles: list[np.ndarray]    # (h, w) at each style image's size (ones without style masks)


def load_masks(config: TransferConfig, size: tuple[int, int],
               style_sizes: list[tuple[int, int]] | None = None) -> Masks:
    """The content masks at ``size`` = (width, height) and the style masks at ``style_sizes``
    (default: ``size``). ConfigError when a mask is empty or when the content masks together
    leave part of the image without a style: cheap, so a run checks them before any work."""
    style_sizes = style_sizes or [size] * len(config.content_masks)
    content = [load_mask(path, size, config.max_megapixels) for path in config.content_masks]
    for path, mask in zip(config.content_masks, content):
        _check_not_empty("content", path, mask)
    if config.style_masks:
        styles = [load_mask(path, s, config.max_megapixels) for path, s in zip(config.style_masks, style_sizes)]
        for path, mask in zip(config.style_masks, styles):
            _check_not_empty("style", path, mask)
    else:
        styles = [np.ones((h, w), np.float32) for w, h in style_sizes]
    uncovered = float(np.mean(np.sum(content, axis=0) < 0.5))
    if uncovered > UNCOVERED_TOLERANCE:
        raise ConfigError(f"the content masks leave {100 * uncovered:.1f}% of the image without a style "
                          "(no mask at least 50% white or opaque there): paint every part of the image "
                          "into one of the masks")
    return Masks(content, styles)


def check_count(config: TransferConfig, styles: int) -> None:
    masks = len(config.content_masks or ())
    if masks and masks != styles:
        raise ConfigError(f"{masks} content masks for {styles} style images: give one mask per style image, "
                          "in the same order")


def layer_mask(mask: np.ndarray, downsampling: int) -> np.ndarray:
    """A (h, w) mask at a layer ``downsampling`` times smaller: 2x2 averages, as the graphs take them."""
    while downsampling > 1:
        h, w = mask.shape
        mask = mask[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        downsampling //= 2
    return mask


def area(mask: np.ndarray) -> float:
    """How much of a layer a mask covers, as its Gram weighs positions: sum(m^2)."""
    return float(np.sum(np.square(mask, dtype=np.float64)))


@dataclass(frozen=True)
class RegionTargets:
    """Each region's content mask at the working size and its style's masked Grams divided by
    the style mask's area at each layer (float64)."""
    masks: list[np.ndarray]
    mean_grams: list[dict[str, np.ndarray]]

    def mask_inputs(self) -> dict[str, np.ndarray]:
        return {lossgrad.region_mask(r): m[None, None].astype(np.float32) for r, m in enumerate(self.masks)}

    def layer_inputs(self, layer: str, downsampling: int, weight: float) -> dict[str, np.ndarray]:
        """The loss graph's ``gram_target.L.r`` and ``style_weight.L.r`` of one style layer;
        ``weight`` is the layer's weight divided by the number of style layers."""
        inputs = {}
        for r, (mask, grams) in enumerate(zip(self.masks, self.mean_grams)):
            a = area(layer_mask(mask, downsampling))
            inputs[lossgrad.gram_target(layer, r)] = (grams[layer] * a).astype(np.float32)
            inputs[lossgrad.style_weight(layer, r)] = np.array(weight / (4.0 * a * a), np.float32)
        return inputs


# (style image x (1,3,h,w), style mask (1,1,h,w)) -> {layer: Gram of the masked features}
MaskedGrams = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def region_targets(masks: Masks, styles_x: list[np.ndarray], masked_grams: MaskedGrams,
                   downsampling: dict[str, int]) -> RegionTargets:
    """Each region's style statistics (``downsampling``: each style layer's, e.g. 4 at block3)."""
    mean_grams = []
    for x, mask in zip(styles_x, masks.styles):
        grams = masked_grams(x, mask[None, None])
        mean_grams.append({layer: g.astype(np.float64) / area(layer_mask(mask, downsampling[layer]))
                           for layer, g in grams.items()})
    return RegionTargets(masks.content, mean_grams)


def _check_not_empty(kind: str, path, mask: np.ndarray) -> None:
    if mask.max() < 1 / 255:
        raise ConfigError(f"{kind} mask '{path}' is empty (black or transparent everywhere): paint the region "
                          "its style applies to in white, or opaque")
