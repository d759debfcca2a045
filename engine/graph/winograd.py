"""Winograd F(m, 3) convolutions (3x3, pad 1) from ONNX ops: fewer multiplications per pixel.

A 3x3 convolution over m x m output tiles costs 9 C K multiply-adds per pixel directly and
(m+2)^2 / m^2 C K in the Winograd domain (4 for F(2,3), 2.25 for F(4,3)), plus transforms
that are linear in C or K. Per tile d ((m+2) x (m+2) input pixels) and kernel g:
``Y = A^T [(G g G^T) * (B^T d B)] A``. Here:

- the kernel transform ``U = G g G^T`` is done once, in numpy, when the graph is built:
  one (alpha^2, K, C) tensor per layer, *instead of* the kernel;
- the input transform is a Conv over channels-as-batch (each channel (1, H, W) convolved
  with the alpha^2 kernels ``B^T[i] (x) B^T[j]`` at stride m): (C, alpha^2, tiles_h, tiles_w);
- the product is one batched MatMul per tile position, the output transform a MatMul by
  ``A^T (x) A^T`` and a DepthToSpace back to the image layout, cropped to the input's size.

The input-gradient convolution (the kernel transposed and flipped) reuses the same U: with
interpolation points closed under t -> 1/t, ``G flip(g) = Q G g`` for a signed, scaled
permutation Q, which moves into that conv's own input and output transforms, and its
channel swap into a transposed read of U (ONNX Runtime's FusedMatMul with transA). So a layer
holds one weight tensor, not two.
Points closed under t -> -1/t instead give ``G flip(g) = Q G D g`` (D negates the middle tap),
the transform of a kernel whose correlation is the original one between two (-1)^(row+column)
sign patterns, which go into the tiles' transforms as well.

F(4,3) uses the points 0, 1, -1, 1/2, -2 and infinity (closed under t -> -1/t): their float32
rounding error is ~2.5x smaller than that of 0, +-1, 2, 1/2 (closed under t -> 1/t), whose
gradient on the real VGG16 was up to 1.3e-4 (relative L2) off a float64 reference where the
direct graph's was 4e-5 (README, Performance).

Transforms and tile crops use Shape/Slice and the input gradient ONNX Runtime's own FusedMatMul,
so these graphs are for the CPU provider (on a GPU cuDNN picks its own algorithms); H and W stay
dynamic.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx
from onnx import numpy_helper

from .builder import GraphBuilder

CONTRIB = "com.microsoft"  # ONNX Runtime's own ops; these graphs run on its CPU provider only

# Interpolation points (the last, None, is infinity), closed under t -> 1/t (F(2,3)) or
# t -> -1/t (F(4,3)).
POINTS = {2: (0.0, 1.0, -1.0, None), 4: (0.0, 1.0, -1.0, 0.5, -2.0, None)}


@dataclass(frozen=True)
class Transforms:
    """F(m, 3): ``BT`` (alpha, alpha), ``G`` (alpha, 3), ``AT`` (m, alpha), float64."""
    m: int
    BT: np.ndarray
    G: np.ndarray
    AT: np.ndarray

    @property
    def alpha(self) -> int:
        return self.m + 2


@lru_cache(maxsize=None)
def transforms(m: int) -> Transforms:
    """The Toom-Cook matrices of F(m, 3): G and A^T from the points, B^T solved so that
    ``y_k = sum_i AT[k,i] (G g)_i (BT d)_i`` equals the correlation ``sum_r g_r d_(k+r)``."""
    points = POINTS[m]
    alpha = m + 2
    finite = [p for p in points if p is not None]
    G = np.zeros((alpha, 3))
    AT = np.zeros((m, alpha))
    for i, p in enumerate(points):
        if p is None:
            G[i] = (0, 0, 1)
            AT[m - 1, i] = 1.0
        else:
            scale = np.prod([p - q for q in finite if q != p])
            G[i] = np.array([1.0, p, p * p]) / scale
            AT[:, i] = [p ** k for k in range(m)]
    # Linear in BT: for every k, r, s: sum_i AT[k,i] G[i,r] BT[i,s] = [s == k + r].
    rows, rhs = [], []
    for k in range(m):
        for r in range(3):
            for s in range(alpha):
                row = np.zeros((alpha, alpha))
                row[:, s] = AT[k] * G[:, r]
                rows.append(row.ravel())
                rhs.append(1.0 if s == k + r else 0.0)
    solution, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    BT = solution.reshape(alpha, alpha)
    if not np.allclose(np.array(rows) @ solution, rhs, atol=1e-9):
        raise AssertionError(f"no exact F({m},3) input transform for points {points}")
    return Transforms(m, BT, G, AT)


def flip_permutation(t: Transforms) -> tuple[np.ndarray, np.ndarray, bool]:
    """(perm, scale, alternate) with ``G @ flip(g) = scale[:, None] * (G @ D g)[perm]`` for every
    3-vector g, D = diag(1, -1, 1) where ``alternate`` (points closed under t -> -1/t), else the identity
    (points closed under t -> 1/t)."""
    flipped = t.G[:, ::-1]
    for alternate in (False, True):
        rows = t.G * ([1.0, -1.0, 1.0] if alternate else 1.0)
        perm, scale = np.zeros(t.alpha, int), np.zeros(t.alpha)
        for i, row in enumerate(flipped):
            # The row of G D that this flipped row is a multiple of.
            j = int(np.argmax([abs(row @ other) / (np.linalg.norm(other) * np.linalg.norm(row) + 1e-300)
                               for other in rows]))
            perm[i], scale[i] = j, (row @ rows[j]) / (rows[j] @ rows[j])
        if np.allclose(flipped, rows[perm] * scale[:, None], atol=1e-12) and len(set(perm)) == t.alpha:
            return perm, scale, alternate
    raise AssertionError("the points are not closed under t -> 1/t or t -> -1/t")


def kernel_transform(kernel: np.ndarray, t: Transforms) -> np.ndarray:
    """U (alpha^2, K, C) float32 of a (K, C, 3, 3) kernel: ``G g G^T`` per (K, C)."""
    k, c = kernel.shape[:2]
    per_tap = np.einsum("ia,jb->abij", t.G, t.G).reshape(9, t.alpha ** 2)  # kernel tap (a, b) -> (i, j)
    u = np.asarray(kernel, np.float64).reshape(k * c, 9) @ per_tap
    return np.ascontiguousarray(u.T.reshape(t.alpha ** 2, k, c), np.float32)


def _input_kernels(BT: np.ndarray) -> np.ndarray:
    """(alpha^2, 1, alpha, alpha): kernel (i, j) is the outer product BT[i] x BT[j]."""
    alpha = BT.shape[0]
    return np.einsum("ia,jb->ijab", BT, BT).reshape(alpha * alpha, 1, alpha, alpha).astype(np.float32)


def _output_matrix(AT: np.ndarray) -> np.ndarray:
    """(m^2, alpha^2): output (p, q) from tile position (i, j) by AT[p, i] AT[q, j]."""
    m, alpha = AT.shape
    return np.einsum("pi,qj->pqij", AT, AT).reshape(m * m, alpha * alpha).astype(np.float32)


def _tiles(b: GraphBuilder, x: str, BT: np.ndarray, m: int) -> tuple[str, str]:
    """x (1, C, H, W) -> V (C, alpha^2, tiles) and the tiles' (th, tw) as a 1-D int64 shape piece.

    Padding 1 before and m after (the Conv's own, so no padded copy) gives ceil(H/m) tiles of
    stride m, whatever H."""
    per_channel = b.op("Reshape", x, b.ints(-1, 1, 0, 0))
    v = b.op("Conv", per_channel, b.const(_input_kernels(BT)), strides=[m, m], pads=[1, 1, m, m])
    grid = b.op("Slice", b.op("Shape", v), b.ints(2), b.ints(4), b.ints(0))
    return b.op("Reshape", v, b.ints(0, 0, -1)), grid


def _untile(b: GraphBuilder, y: str, grid: str, channels: int, x: str, m: int) -> str:
    """(m^2 * channels, tiles) -> (1, channels, H, W): DepthToSpace, then crop to x's H and W."""
    shape = b.op("Concat", b.ints(1, m * m * channels), grid, axis=0)
    image = b.op("DepthToSpace", b.op("Reshape", y, shape), blocksize=m, mode="DCR")
    size = b.op("Slice", b.op("Shape", x), b.ints(2), b.ints(4), b.ints(0))
    return b.op("Slice", image, b.ints(0, 0), size, b.ints(2, 3))


def conv_forward(b: GraphBuilder, x: str, u: str, bias: str | None, out_channels: int, m: int,
                 name: str | None = None) -> str:
    """``Conv(x, kernel, bias, pad 1)`` with the kernel given as its transform U (alpha^2, K, C)."""
    t = transforms(m)
    v, grid = _tiles(b, x, t.BT, m)                                   # (C, a2, T)
    products = b.op("MatMul", u, b.op("Transpose", v, perm=[1, 0, 2]))  # (a2, K, T)
    flat = b.op("Reshape", products, b.ints(t.alpha ** 2, -1))
    y = b.op("MatMul", b.const(_output_matrix(t.AT)), flat)           # (m2, K*T)
    y = _untile(b, y, grid, out_channels, x, m)
    if bias is None:
        return b.op("Identity", y, name=name) if name else y
    return b.op("Add", y, b.op("Reshape", bias, b.ints(1, -1, 1, 1)), name=name)


def conv_input_gradient(b: GraphBuilder, dy: str, x: str, u: str, in_channels: int, m: int) -> str:
    """dL/dx of ``Conv(x, kernel, pad 1)`` from dy (1, K, H, W), with the same U (alpha^2, K, C).

    It is the conv of dy with the kernel transposed and flipped, whose transform is
    ``Q U Q^T`` (channels swapped): Q's permutation and scales go into this conv's input and
    output transforms, the channel swap into the MatMul's operand order."""
    t = transforms(m)
    perm, scale, alternate = flip_permutation(t)
    inverse = np.argsort(perm)
    # Tile position u = perm[i] holds scale[i] * V[i] (B^T rows moved and scaled), and the
    # output reads position i from u = perm[i].
    BT = (t.BT * scale[:, None])[inverse]
    AT = t.AT[:, inverse]
    if alternate:
        assert t.m % 2 == 0, "the sign pattern repeats per tile only for an even m"
        # G flip(g) = Q G D g is the transform of the kernel D g D, whose correlation is M corr(M d, g)
        # for the sign pattern M = (-1)^(row + column): M goes into the tiles' transforms (m is even,
        # so every tile sees the same pattern, and its sign at the tile's first pixel cancels in 2-D).
        signs = (-1.0) ** np.arange(t.alpha)
        BT, AT = BT * signs, AT * signs[:t.m, None]
    v, grid = _tiles(b, dy, BT, m)                                      # (K, a2, T)
    # U^T V, U read transposed: as a plain MatMul of the transposed tiles by U (the operand MLAS packs
    # anew every call), all Winograd products took 10-13% longer at 256 and 512 px.
    products = b.op("FusedMatMul", u, b.op("Transpose", v, perm=[1, 0, 2]), transA=1,
                    domain=CONTRIB)                                     # (a2, C, T)
    flat = b.op("Reshape", products, b.ints(t.alpha ** 2, -1))
    y = b.op("MatMul", b.const(_output_matrix(AT)), flat)               # (m2, C*T)
    return _untile(b, y, grid, in_channels, x, m)


def transformed_weights(kernel: onnx.TensorProto, name: str, m: int) -> onnx.TensorProto:
    """The initializer ``name`` holding U of a Conv kernel initializer."""
    return numpy_helper.from_array(kernel_transform(numpy_helper.to_array(kernel), transforms(m)), name)
