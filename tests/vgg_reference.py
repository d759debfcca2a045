"""A float64 NumPy reference of the VGG feature graph, written independently of ``engine``.

Conventions (those of Keras's VGG16/VGG19 notop models, and of ONNX ``Conv``):

- images and activations are NCHW arrays (any batch size N);
- each conv layer is a 3x3 cross-correlation with zero padding 1 and stride 1,
  weights ``W`` of shape (out, in, 3, 3) (OIHW) plus a bias of shape (out,),
  followed by ReLU;
- a 2x2 max-pool with stride 2 (floor: an odd last row/column is dropped) follows
  each block except the last, since the feature graph stops at the last conv.

``weights`` everywhere is a mapping ``{"block1_conv1": (W, b), ...}``.
Tests import this module for features, and later for loss references.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

ARCHITECTURES = ("vgg16", "vgg19")
CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
BLOCK_CHANNELS = (64, 128, 256, 512, 512)

Weights = Mapping[str, tuple[np.ndarray, np.ndarray]]


def conv_layer_names(arch: str) -> tuple[str, ...]:
    """``block1_conv1`` ... in forward order (13 for VGG16, 16 for VGG19)."""
    return tuple(
        f"block{block}_conv{i}"
        for block, count in enumerate(CONVS_PER_BLOCK[arch], start=1)
        for i in range(1, count + 1)
    )


def keras_layer_names(arch: str) -> tuple[str, ...]:
    """All layer names of Keras's notop model (``[l.name for l in model.layers]``)."""
    names = ["input_1"]
    for block, count in enumerate(CONVS_PER_BLOCK[arch], start=1):
        names += [f"block{block}_conv{i}" for i in range(1, count + 1)]
        names.append(f"block{block}_pool")
    return tuple(names)


def conv_shapes(arch: str) -> dict[str, tuple[int, int, int, int]]:
    """``{layer: (out, in, 3, 3)}`` for every conv layer of ``arch``."""
    shapes, in_ch = {}, 3
    for block, (count, out_ch) in enumerate(zip(CONVS_PER_BLOCK[arch], BLOCK_CHANNELS), start=1):
        for i in range(1, count + 1):
            shapes[f"block{block}_conv{i}"] = (out_ch, in_ch, 3, 3)
            in_ch = out_ch
    return shapes


def random_weights(arch: str, seed: int = 0, bias_scale: float = 0.1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """He-scaled normal kernels and small normal biases, float32, OIHW.

    He scaling keeps activations of order one through all the layers, so relative
    errors stay meaningful in the deep layers.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in conv_shapes(arch).items():
        fan_in = shape[1] * 9
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        b = rng.standard_normal(shape[0], dtype=np.float32) * np.float32(bias_scale)
        weights[name] = (w, b)
    return weights


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 cross-correlation, zero padding 1, stride 1: (N,C,H,W) -> (N,O,H,W), float64."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    assert w.shape[1:] == (c, 3, 3), f"kernel {w.shape} does not fit {c} input channels"
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for dy in range(3):
        for dx in range(3):
            window = padded[:, :, dy:dy + h, dx:dx + wd]
            out += np.einsum("oc,nchw->nohw", w[:, :, dy, dx], window, optimize=True)
    return out + np.asarray(b, np.float64)[None, :, None, None]


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def max_pool2x2(x: np.ndarray) -> np.ndarray:
    """2x2 max-pool, stride 2, floor mode (Keras ``padding='valid'``): (N,C,H,W) -> (N,C,H//2,W//2)."""
    n, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def vgg_features(image: np.ndarray, weights: Weights, arch: str,
                 layers: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Post-ReLU activations of the conv layers of ``arch`` for ``image`` (N,3,H,W).

    ``image`` is already in the network's input convention. Returns float64 arrays
    for ``layers`` (default: all conv layers), computing no further than needed.
    """
    names = conv_layer_names(arch)
    wanted = set(names if layers is None else layers)
    unknown = wanted - set(names)
    if unknown:
        raise ValueError(f"not {arch} conv layers: {sorted(unknown)}")
    x = np.asarray(image, np.float64)
    features = {}
    for i, name in enumerate(names):
        if not wanted - features.keys():
            break
        x = relu(conv3x3(x, *weights[name]))
        if name in wanted:
            features[name] = x
        next_name = names[i + 1] if i + 1 < len(names) else None
        if next_name is not None and next_name.split("_")[0] != name.split("_")[0]:
            x = max_pool2x2(x)
    return features


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |actual - reference| / max |reference| (a max-norm relative error)."""
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, f"shape {actual.shape} != reference {reference.shape}"
    scale = np.abs(reference).max()
    return float(np.abs(actual - reference).max() / (scale if scale > 0 else 1.0))
