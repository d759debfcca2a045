"""The seed's loss terms as ONNX subgraphs, each with its gradient.

Feature maps are NCHW (1, C, h, w); weights are scalar graph inputs computed on
the host, so one graph serves every weighting and image size.
"""
from __future__ import annotations

from .builder import INT64_MAX, GraphBuilder


def content_term(b: GraphBuilder, features: str, target: str, weight: str) -> tuple[str, str]:
    """``weight * sum((F - T)^2)`` (the seed's feature_reconstruction_loss) and d/dF."""
    diff = b.op("Sub", features, target)
    loss = b.op("Mul", weight, b.sum_of_squares(diff))
    grad = b.op("Mul", diff, b.op("Mul", weight, b.const(2.0)))
    return loss, grad


def gram(b: GraphBuilder, features: str) -> tuple[str, str]:
    """The Gram matrix (C, C) of (1, C, h, w) features, and the features as (C, h*w)."""
    flat = b.op("Squeeze", b.op("Reshape", features, b.ints(0, 0, -1)), b.ints(0))
    return b.op("MatMul", flat, b.op("Transpose", flat, perm=[1, 0])), flat


def style_term(b: GraphBuilder, features: str, target_gram: str, coefficient: str) -> tuple[str, str]:
    """``coefficient * sum((G - T)^2)`` and d/dF.

    ``coefficient`` folds in the seed's 1/(4 (h w)^2), the layer weight and
    1/len(style_layers). d/dF = 4 c (G - T) F: a 1x1 Conv with (G - T) as its
    kernel, which keeps F's NCHW shape without a shape-computing Reshape back.
    """
    g, _ = gram(b, features)
    diff = b.op("Sub", g, target_gram)
    loss = b.op("Mul", coefficient, b.sum_of_squares(diff))
    kernel = b.op("Unsqueeze", b.op("Mul", diff, b.op("Mul", coefficient, b.const(4.0))), b.ints(2, 3))
    return loss, b.op("Conv", features, kernel, kernel_shape=[1, 1])


def tv_term(b: GraphBuilder, image: str, weight: str) -> tuple[str, str]:
    """The seed's total variation with its exact slicing, on NCHW, and d/dx.

    ``a = x[:H-1, :W-1] - x[1:, :W-1]``, ``c = x[:H-1, :W-1] - x[:H-1, 1:]``,
    loss ``weight * sum(a^2 + c^2)``; each difference's gradient is padded back
    to where its two operands sit.
    """
    corner = b.crop(image, (0, 0), (-1, -1))
    a = b.op("Sub", corner, b.crop(image, (1, 0), (INT64_MAX, -1)))
    c = b.op("Sub", corner, b.crop(image, (0, 1), (-1, INT64_MAX)))
    loss = b.op("Mul", weight, b.op("Add", b.sum_of_squares(a), b.sum_of_squares(c)))
    at_corner = b.pad_hw(b.op("Add", a, c), 0, 0, 1, 1)
    below = b.pad_hw(a, 1, 0, 0, 1)
    right = b.pad_hw(c, 0, 1, 1, 0)
    grad = b.op("Sub", b.op("Sub", at_corner, below), right)
    return loss, b.op("Mul", grad, b.op("Mul", weight, b.const(2.0)))
