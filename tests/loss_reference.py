"""An independent float64 numpy implementation of the seed's loss and its gradient.

Written straight from the seed's formulas with explicit loops over kernel
offsets; shares no code with the engine's ONNX graphs. The 3x3 convolution
forward is ``vgg_reference.conv3x3`` (also engine-free); its adjoint, the
pooling and its gradient routing, the Gram matrix, the loss terms and the
backward pass live here.

Images and activations here are single (C, H, W) arrays (no batch axis).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

import vgg_reference


def conv3x3(x, w, b):
    """x (C,H,W), w (O,C,3,3), b (O,) -> (O,H,W): cross-correlation, zero padding 1."""
    return vgg_reference.conv3x3(np.asarray(x, np.float64)[None], w, b)[0]


def conv3x3_input_grad(dy, w, shape):
    """Adjoint of conv3x3 w.r.t. x: scatter each output's gradient back to its window."""
    c, h, wd = shape
    padded = np.zeros((c, h + 2, wd + 2))
    for di in range(3):
        for dj in range(3):
            padded[:, di:di + h, dj:dj + wd] += np.einsum("oc,ohw->chw", w[:, :, di, dj], dy)
    return padded[:, 1:-1, 1:-1]


def pool2(x, kind):
    c, h, w = x.shape
    windows = x[:, : h // 2 * 2, : w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2)
    return windows.max(axis=(2, 4)) if kind == "max" else windows.mean(axis=(2, 4))


def pool2_grad(dy, x, kind):
    """Route dy (C,h/2,w/2) back to x (C,h,w): to each window's argmax, or 1/4 to each."""
    c, h, w = x.shape
    windows = x.reshape(c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4).reshape(c, h // 2, w // 2, 4)
    if kind == "max":
        route = np.zeros_like(windows)
        np.put_along_axis(route, windows.argmax(axis=-1)[..., None], 1.0, axis=-1)
    else:
        route = np.full_like(windows, 0.25)
    dx = route * dy[..., None]
    return dx.reshape(c, h // 2, w // 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(c, h, w)


def pool_name(layer: str) -> str:
    """The pool after the last conv of ``layer``'s block: block3_conv3 -> block3_pool."""
    return layer.split("_")[0] + "_pool"


def vgg_layers(weights: Mapping, arch: str = "vgg16"):
    """``[(name, W, b, pool_after)]`` in forward order, float64, for :func:`forward`."""
    names = vgg_reference.conv_layer_names(arch)
    layers = []
    for i, name in enumerate(names):
        pool_after = i + 1 < len(names) and names[i + 1].split("_")[0] != name.split("_")[0]
        w, b = weights[name]
        layers.append((name, np.asarray(w, np.float64), np.asarray(b, np.float64), pool_after))
    return layers


def forward(layers, x, upto, pooling="max", pool_scales: Mapping[str, float] | None = None):
    """layers: [(name, W, b, pool_after)] in order; returns activations and a tape.

    ``pool_scales`` (avg pooling): each pool's output is multiplied by
    ``pool_scales[block<n>_pool]`` (1 when absent).
    """
    pool_scales = pool_scales or {}
    acts, tape = {}, []
    x = np.asarray(x, np.float64)
    for name, w, b, pool_after in layers:
        pre = conv3x3(x, w, b)
        y = np.maximum(pre, 0.0)
        tape.append(("conv", name, x, w, y))
        acts[name] = y
        if name == upto:
            break
        x = y
        if pool_after:
            scale = float(pool_scales.get(pool_name(name), 1.0))
            tape.append(("pool", name, x, scale, None))
            x = pool2(x, pooling) * scale
    return acts, tape


def gram(f):
    flat = f.reshape(f.shape[0], -1)
    return flat @ flat.T


def style_coefficient(weight: float, n_layers: int, features_shape: Sequence[int]) -> float:
    """The seed's per-layer factor: weight / len(style_layers) / (4 (h w)^2)."""
    hw = features_shape[-1] * features_shape[-2]
    return weight / n_layers / (4.0 * hw ** 2)


def loss_and_grad(layers, x, content_target, gram_targets, content_weight, style_weights, tv_weight,
                  content_layer, style_layers, pooling="max", pool_scales=None):
    """The seed's total loss for image x (3,H,W) and its gradient, in float64.

    Returns ({"loss", "content", "style.<layer>"..., "tv"}, dloss/dx (3,H,W)); each
    term is weighted as the seed adds it.
    """
    x = np.asarray(x, np.float64)
    order = [name for name, *_ in layers]
    deepest = max([content_layer, *style_layers], key=order.index)
    acts, tape = forward(layers, x, deepest, pooling, pool_scales)
    grads = {name: np.zeros_like(a) for name, a in acts.items()}
    diff = acts[content_layer] - content_target
    terms = {"content": content_weight * np.sum(diff ** 2)}
    grads[content_layer] += 2 * content_weight * diff
    for layer, weight in zip(style_layers, style_weights):
        f = acts[layer]
        coef = style_coefficient(weight, len(style_layers), f.shape)
        d = gram(f) - gram_targets[layer]
        terms[f"style.{layer}"] = coef * np.sum(d ** 2)
        grads[layer] += 4 * coef * (d @ f.reshape(f.shape[0], -1)).reshape(f.shape)
    terms["tv"], dx_tv = tv(x, tv_weight)

    dy = None
    for kind, name, xin, wt, y in reversed(tape):
        if kind == "conv":
            dy = grads[name] if dy is None else dy + grads[name]
            dy = conv3x3_input_grad(dy * (y > 0), wt, xin.shape)
        else:
            dy = pool2_grad(dy * wt, xin, pooling)  # wt holds the pool's scale
    terms["loss"] = sum(terms.values())
    return terms, dy + dx_tv


def tv(x, tv_weight, wrap=False):
    """The seed's total variation of x (C,H,W) and its gradient; with ``wrap`` the last row and
    column are compared with the first (the image as a torus)."""
    if wrap:
        a, c = x - np.roll(x, -1, axis=1), x - np.roll(x, -1, axis=2)
        grad = 2 * tv_weight * (a - np.roll(a, 1, axis=1) + c - np.roll(c, 1, axis=2))
        return tv_weight * np.sum(a ** 2 + c ** 2), grad
    h, w = x.shape[1:]
    a = x[:, : h - 1, : w - 1] - x[:, 1:, : w - 1]
    c = x[:, : h - 1, : w - 1] - x[:, : h - 1, 1:]
    grad = np.zeros_like(x)
    grad[:, : h - 1, : w - 1] += 2 * tv_weight * (a + c)
    grad[:, 1:, : w - 1] -= 2 * tv_weight * a
    grad[:, : h - 1, 1:] -= 2 * tv_weight * c
    return tv_weight * np.sum(a ** 2 + c ** 2), grad


def targets(layers, content, style, content_layer, style_layers, pooling="max", pool_scales=None):
    """The content target (C,h,w) and the style Gram targets {layer: (C,C)}, float64."""
    order = [name for name, *_ in layers]
    deepest = max([content_layer, *style_layers], key=order.index)
    acts_c, _ = forward(layers, content, deepest, pooling, pool_scales)
    acts_s, _ = forward(layers, style, deepest, pooling, pool_scales)
    return acts_c[content_layer], {layer: gram(acts_s[layer]) for layer in style_layers}


def relative_l2(actual, reference) -> float:
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(actual - reference) / np.linalg.norm(reference))
