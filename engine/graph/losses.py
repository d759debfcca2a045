"""The seed's four loss pieces, evaluated through the engine's own ONNX subgraphs.

Each function takes numpy arrays in the layouts the seed's tests use ((H, W, C)
feature maps; (1, H, W, C) for the total variation image), builds a tiny graph
around the same term the loss-gradient graph uses, and runs it in ONNX Runtime.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnxruntime as ort

from .builder import GraphBuilder
from .terms import content_term, gram, style_term, tv_term
from ..runtime.sessions import CPU, session_options

_FEATURES = [1, "channels", "height", "width"]


@lru_cache(maxsize=None)
def _session(kind: str) -> ort.InferenceSession:
    b = GraphBuilder()
    if kind == "content":
        loss, _ = content_term(b, b.input("output", _FEATURES), b.input("base", _FEATURES), b.input("weight", []))
        b.output("result", loss, [])
    elif kind == "gram":
        g, _ = gram(b, b.input("x", _FEATURES))
        b.output("result", g, ["channels", "channels"])
    elif kind == "style":
        target, _ = gram(b, b.input("base", _FEATURES))
        loss, _ = style_term(b, b.input("output", _FEATURES), target, b.input("coefficient", []))
        b.output("result", loss, [])
    else:
        loss, _ = tv_term(b, b.input("x", [1, "channels", "height", "width"]), b.input("weight", []))
        b.output("result", loss, [])
    return ort.InferenceSession(b.model(kind).SerializeToString(), session_options(), providers=[CPU])


def _nchw(hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(hwc, np.float32).transpose(2, 0, 1)[None])


def _run(kind: str, **feeds) -> np.ndarray:
    return _session(kind).run(["result"], feeds)[0]


def content_loss(base: np.ndarray, output: np.ndarray) -> float:
    """``sum((output - base)^2)`` of two (H, W, C) feature maps."""
    return float(_run("content", base=_nchw(base), output=_nchw(output), weight=np.array(1.0, np.float32)))


def gram_matrix(x: np.ndarray) -> np.ndarray:
    """The (C, C) Gram matrix of an (H, W, C) feature map."""
    return _run("gram", x=_nchw(x))


def style_loss(base: np.ndarray, output: np.ndarray) -> float:
    """``sum((G(output) - G(base))^2) / (4 (H W)^2)`` of two (H, W, C) feature maps."""
    h, w, _ = np.shape(base)
    coefficient = np.array(1.0 / (4.0 * (h * w) ** 2), np.float32)
    return float(_run("style", base=_nchw(base), output=_nchw(output), coefficient=coefficient))


def total_variation_loss(x: np.ndarray) -> float:
    """The seed's total variation of a (1, H, W, C) image."""
    return float(_run("tv", x=_nchw(np.asarray(x)[0]), weight=np.array(1.0, np.float32)))
