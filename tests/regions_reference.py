"""A float64 numpy reference of guided Grams (regions) and circular padding (tiles).

Written from the formulas, sharing no code with the engine: region r's style loss at
layer L is ``w_L / n / 4 * ||G(F m_r) / a_r - G(S s_r) / b_r||^2`` (m_r, s_r the content and
style masks brought to L by 2x2 averages per pool, a_r, b_r their sums of squares); with
``wrap`` every 3x3 convolution pads with the opposite edge and the total variation wraps.
The circular convolution's adjoint scatters into a padded buffer and folds its border
back explicitly (the engine uses a circular convolution with the flipped kernel instead).
Images and activations are (C, H, W) arrays.
"""
from __future__ import annotations

import numpy as np

import loss_reference as ref


def conv3x3(x, w, b, wrap):
    if not wrap:
        return ref.conv3x3(x, w, b)
    h, wd = x.shape[1:]
    padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1)), mode="wrap")
    y = np.zeros((w.shape[0], h, wd)) + np.asarray(b, np.float64)[:, None, None]
    for di in range(3):
        for dj in range(3):
            y += np.einsum("oc,chw->ohw", w[:, :, di, dj], padded[:, di:di + h, dj:dj + wd])
    return y


def conv3x3_input_grad(dy, w, shape, wrap):
    if not wrap:
        return ref.conv3x3_input_grad(dy, w, shape)
    c, h, wd = shape
    padded = np.zeros((c, h + 2, wd + 2))
    for di in range(3):
        for dj in range(3):
            padded[:, di:di + h, dj:dj + wd] += np.einsum("oc,ohw->chw", w[:, :, di, dj], dy)
    # Padded row 0 is a copy of row h-1, row h+1 of row 0 (and so for columns): fold them back.
    rows, cols = (np.arange(h + 2) - 1) % h, (np.arange(wd + 2) - 1) % wd
    dx = np.zeros(shape)
    np.add.at(dx, (slice(None), rows[:, None], cols[None, :]), padded)
    return dx


def forward(layers, x, upto, pooling="max", wrap=False):
    acts, tape = {}, []
    x = np.asarray(x, np.float64)
    for name, w, b, pool_after in layers:
        y = np.maximum(conv3x3(x, w, b, wrap), 0.0)
        tape.append(("conv", name, x, w, y))
        acts[name] = y
        if name == upto:
            break
        x = y
        if pool_after:
            tape.append(("pool", name, x, None, None))
            x = ref.pool2(x, pooling)
    return acts, tape


def mask_at(mask, shape):
    """A (H, W) mask at a layer's (h, w): 2x2 averages until it has that size."""
    mask = np.asarray(mask, np.float64)
    while mask.shape != tuple(shape):
        mask = ref.pool2(mask[None], "avg")[0]
    return mask


def _deepest(layers, names):
    order = [name for name, *_ in layers]
    return max(names, key=order.index)


def mean_grams(layers, style, mask, style_layers, pooling="max", wrap=False):
    """{layer: G(S s) / sum(s^2)} of a style image (3,H,W) and its mask (H,W)."""
    acts, _ = forward(layers, style, _deepest(layers, style_layers), pooling, wrap)
    out = {}
    for layer in style_layers:
        s = mask_at(mask, acts[layer].shape[1:])
        out[layer] = ref.gram(acts[layer] * s) / np.sum(s ** 2)
    return out


def loss_and_grad(layers, x, content_target, targets, masks, content_weight, style_weights, tv_weight,
                  content_layer, style_layers, pooling="max", wrap=False):
    """Total loss and d/dx for image x (3,H,W). ``targets[r]``: region r's {layer: mean Gram};
    ``masks[r]``: its content mask (H,W). Returns ({"loss", "content", "style.<layer>", "tv"}, grad)."""
    x = np.asarray(x, np.float64)
    acts, tape = forward(layers, x, _deepest(layers, [content_layer, *style_layers]), pooling, wrap)
    grads = {name: np.zeros_like(a) for name, a in acts.items()}
    diff = acts[content_layer] - content_target
    terms = {"content": content_weight * np.sum(diff ** 2)}
    grads[content_layer] += 2 * content_weight * diff
    for layer, weight in zip(style_layers, style_weights):
        f = acts[layer]
        coef = weight / len(style_layers) / 4.0
        terms[f"style.{layer}"] = 0.0
        for mask, target in zip(masks, targets):
            m = mask_at(mask, f.shape[1:])
            area = np.sum(m ** 2)
            fm = f * m
            d = ref.gram(fm) / area - target[layer]
            terms[f"style.{layer}"] += coef * np.sum(d ** 2)
            # d/dFm of coef ||G(Fm)/a - T||^2 = coef (2/a) (D + D^T) Fm = 4 coef / a D Fm (D symmetric)
            grads[layer] += 4 * coef / area * (d @ fm.reshape(f.shape[0], -1)).reshape(f.shape) * m
    terms["tv"], dx_tv = ref.tv(x, tv_weight, wrap)
    dy = None
    for kind, name, xin, wt, y in reversed(tape):
        if kind == "conv":
            dy = grads[name] if dy is None else dy + grads[name]
            dy = conv3x3_input_grad(dy * (y > 0), wt, xin.shape, wrap)
        else:
            dy = ref.pool2_grad(dy, xin, pooling)
    terms["loss"] = sum(terms.values())
    return terms, dy + dx_tv
