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


def _roll(b: GraphBuilder, x: str, axis: int, shift: int) -> str:
    """``numpy.roll(x, shift, axis)`` for shift +1 or -1, as a Concat of two slices."""
    cut = -1 if shift == 1 else 1
    head = b.op("Slice", x, b.ints(cut), b.ints(INT64_MAX), b.ints(axis))
    tail = b.op("Slice", x, b.ints(0), b.ints(cut), b.ints(axis))
    return b.op("Concat", head, tail, axis=axis)


def tv_term_wrapped(b: GraphBuilder, image: str, weight: str) -> tuple[str, str]:
    """Total variation on a torus (tileable output), and d/dx.

    ``a = x - roll(x, -1, H)``, ``c = x - roll(x, -1, W)`` at every pixel (the last row's
    neighbour is the first row), loss ``weight * sum(a^2 + c^2)``, gradient
    ``2 weight (a + c - roll(a, 1, H) - roll(c, 1, W))``.
    """
    a = b.op("Sub", image, _roll(b, image, 2, -1))
    c = b.op("Sub", image, _roll(b, image, 3, -1))
    loss = b.op("Mul", weight, b.op("Add", b.sum_of_squares(a), b.sum_of_squares(c)))
    grad = b.op("Sub", b.op("Add", a, c), b.op("Add", _roll(b, a, 2, 1), _roll(b, c, 3, 1)))
    return loss, b.op("Mul", grad, b.op("Mul", weight, b.const(2.0)))


def guided_style_term(b: GraphBuilder, features: str, regions: list[tuple[str, str, str]]) -> tuple[str, str]:
    """Guided Gram matrices (Gatys et al. 2017): the style term of several regions, and d/dF.

    ``regions``: per region (mask (1,1,h,w) at the features' resolution, target Gram (C,C),
    coefficient). Loss ``sum_r c_r sum((G(F m_r) - T_r)^2)``; the host folds each region's
    area normalisation into ``c_r`` and ``T_r``. d/dF is each region's :func:`style_term`
    gradient with respect to ``F m_r``, times ``m_r``, summed.
    """
    loss = grad = None
    for mask, target, coefficient in regions:
        term, term_grad = style_term(b, b.op("Mul", features, mask), target, coefficient)
        term_grad = b.op("Mul", term_grad, mask)
        loss = term if loss is None else b.op("Add", loss, term)
        grad = term_grad if grad is None else b.op("Add", grad, term_grad)
    return loss, grad


def halve_mask(b: GraphBuilder, mask: str) -> str:
    """A (1,1,h,w) mask brought to the next block's resolution: the 2x2 average, as the features are pooled."""
    return b.op("AveragePool", mask, kernel_shape=[2, 2], strides=[2, 2])
