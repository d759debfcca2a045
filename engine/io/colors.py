"""Keeping the content's colours (Gatys et al. 2017, "Controlling Perceptual Factors in
Neural Style Transfer", section 5): luminance-only transfer in YIQ, and colour
histogram matching of the style to the content.

Images are (H, W, 3) RGB on a 0..255 scale. Every function taking an image also takes
a Pillow image; a result has the kind of the first argument: a Pillow image gives an
RGB Pillow image, a uint8 array a uint8 array (clipped, rounded), a float array a
float array of that dtype (clipped, not rounded, so 16-bit output keeps its precision).
"""
from __future__ import annotations

from typing import Union

import numpy as np
from PIL import Image

Picture = Union[Image.Image, np.ndarray]

# The NTSC (FCC) RGB -> YIQ matrix, rows Y, I, Q. I and Q rows sum to 0, so greys have
# no chroma; the Y row sums to 1, so a grey's luminance is its level.
_YIQ = np.array([[0.299, 0.587, 0.114],
                 [0.596, -0.274, -0.322],
                 [0.211, -0.523, 0.312]])
# The exact inverse, not the rounded published one, so from_yiq(to_yiq(x)) == x.
_RGB = np.linalg.inv(_YIQ)
# Added to variances (0..255 scale, so std 0.03 levels): flat images get a finite transform.
_EPS = 1e-3


def to_yiq(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB 0..255 -> float64 (..., 3) YIQ: Y in 0..255, I and Q signed, same scale."""
    return np.asarray(rgb, np.float64) @ _YIQ.T


def from_yiq(yiq: np.ndarray) -> np.ndarray:
    """(..., 3) YIQ -> float64 (..., 3) RGB, the exact inverse of ``to_yiq``; not clipped."""
    return np.asarray(yiq, np.float64) @ _RGB.T


def luminance_only(image: Picture) -> Picture:
    """The image's luminance Y in all three channels: the network input for luminance-only transfer."""
    y = to_yiq(_rgb(image))[..., :1]
    return _like(np.repeat(y, 3, axis=-1), image)


def match_luminance(style_y: Picture, content_y: Picture) -> Picture:
    """The style's luminance shifted and scaled to the content's mean and standard deviation.

    ``(σ_C/σ_S)(L_S − μ_S) + μ_C`` on luminance-only images (see ``luminance_only``);
    the result is luminance-only too, the style's size, clipped to 0..255.
    """
    ls, lc = to_yiq(_rgb(style_y))[..., 0], to_yiq(_rgb(content_y))[..., 0]
    matched = np.sqrt((lc.var() + _EPS) / (ls.var() + _EPS)) * (ls - ls.mean()) + lc.mean()
    return _like(np.repeat(matched[..., None], 3, axis=-1), style_y)


def recombine_luminance(output: Picture, content: Picture) -> Picture:
    """The output's luminance Y with the content's chroma I, Q, back in RGB, clipped to 0..255.

    ``content`` (8-bit) is resized with Lanczos to the output's size when they differ.
    """
    out = _rgb(output)
    height, width = out.shape[:2]
    source = content if isinstance(content, Image.Image) else Image.fromarray(np.asarray(content, np.uint8), "RGB")
    if source.size != (width, height):
        source = source.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    yiq = to_yiq(out)
    yiq[..., 1:] = to_yiq(_rgb(source))[..., 1:]
    return _like(from_yiq(yiq), output)


def match_histogram(style: Picture, content: Picture) -> Picture:
    """The style recoloured so its RGB mean and 3x3 covariance equal the content's.

    The paper's colour histogram matching, as the linear map x' = A (x − μ_S) + μ_C with
    A = Σ_C^½ Σ_S^-½ (symmetric square roots by eigen-decomposition, the "Image Analogies"
    variant: unlike a Cholesky factor it does not depend on the order of the channels).
    Result: the style's size, clipped to 0..255.
    """
    s, c = _rgb(style), _rgb(content).reshape(-1, 3)
    pixels = s.reshape(-1, 3)
    mean_s, mean_c = pixels.mean(axis=0), c.mean(axis=0)
    a = _sym_power(_covariance(c), 0.5) @ _sym_power(_covariance(pixels), -0.5)
    return _like(((pixels - mean_s) @ a.T + mean_c).reshape(s.shape), style)


def _covariance(pixels: np.ndarray) -> np.ndarray:
    return np.cov(pixels, rowvar=False, bias=True) + _EPS * np.eye(3)


def _sym_power(matrix: np.ndarray, power: float) -> np.ndarray:
    """A symmetric positive definite 3x3 matrix to ``power`` through its eigen-decomposition."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.maximum(values, _EPS) ** power) @ vectors.T


def _rgb(image: Picture) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    rgb = np.asarray(image, np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {rgb.shape}")
    return rgb


def _like(rgb: np.ndarray, template: Picture) -> Picture:
    """Float RGB in the kind of ``template`` (see the module docstring)."""
    rgb = np.clip(rgb, 0.0, 255.0)
    if isinstance(template, np.ndarray) and template.dtype.kind == "f":
        return rgb.astype(template.dtype)
    pixels = np.rint(rgb).astype(np.uint8)
    return Image.fromarray(pixels, "RGB") if isinstance(template, Image.Image) else pixels
