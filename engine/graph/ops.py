"""The differentiable ops of the VGG feature graph: each forward beside its backward.

A backward rule maps the upstream gradient ``dy`` of a step's output to the
gradient of its input, using only ops that ONNX Runtime's CUDA provider runs and
no shape-computing ops, so the whole loss-gradient graph can stay on the GPU.
Adding an op is adding one entry to :data:`RULES`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from onnx import TensorProto

from ..models.export import INPUT_NAME
from . import winograd
from .builder import INT64_MAX, GraphBuilder


@dataclass(frozen=True)
class Step:
    """One forward node: ``y = op(x, *params)``."""

    op_type: str
    x: str
    y: str
    params: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    forward: Callable[[GraphBuilder, Step], None]
    backward: Callable[[GraphBuilder, Step, str], str]


def _emit(b: GraphBuilder, step: Step) -> None:
    b.op(step.op_type, step.x, *step.params, name=step.y, **step.attrs)


def _flipped_kernel(b: GraphBuilder, step: Step) -> str:
    # The kernel's in/out swapped and flipped: a forward Conv with it is the adjoint (1.3-1.6x
    # faster than ConvTranspose on CPU). Derived in-graph so ORT folds it to a constant at load.
    swapped = b.op("Transpose", step.params[0], perm=[1, 0, 2, 3])
    return b.op("Slice", swapped, b.ints(-1, -1), b.ints(-INT64_MAX, -INT64_MAX), b.ints(2, 3), b.ints(-1, -1))


def _conv_backward(b: GraphBuilder, step: Step, dy: str) -> str:
    if step.x == INPUT_NAME:
        # The image's conv: its adjoint has 3 output channels, which the CPU's blocked (NCHWc)
        # Conv pads to 16 and reorders in and out; ConvTranspose (a GEMM, then col2im) is ~3x faster.
        return b.op("ConvTranspose", dy, step.params[0], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b.op("Conv", dy, _flipped_kernel(b, step), kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def wrap_pad(b: GraphBuilder, x: str) -> str:
    """``x`` (N,C,h,w) with one row/column of the opposite edge added on each side: (N,C,h+2,w+2).

    A Concat of slices works at any opset (Pad's "wrap" mode needs opset 19; the graphs are at 17).
    """
    rows = b.op("Concat", b.crop(x, (-1, 0), (INT64_MAX, INT64_MAX)), x, b.crop(x, (0, 0), (1, INT64_MAX)), axis=2)
    return b.op("Concat", b.crop(rows, (0, -1), (INT64_MAX, INT64_MAX)), rows,
                b.crop(rows, (0, 0), (INT64_MAX, 1)), axis=3)


def _circular_conv_forward(b: GraphBuilder, step: Step) -> None:
    # The image as a torus (--tileable): the 3x3 conv's border sees the opposite edge, not zeros.
    b.op("Conv", wrap_pad(b, step.x), *step.params, name=step.y, **{**step.attrs, "pads": [0, 0, 0, 0]})


def _circular_conv_backward(b: GraphBuilder, step: Step, dy: str) -> str:
    # A circular convolution's adjoint is the circular convolution with the flipped kernel:
    # the gradient reaching the wrapped border folds back onto the opposite edge.
    return b.op("Conv", wrap_pad(b, dy), _flipped_kernel(b, step), kernel_shape=[3, 3], pads=[0, 0, 0, 0])


def _winograd_forward(b: GraphBuilder, step: Step) -> None:
    # params: the kernel's Winograd transform U, the bias; attrs: m, in and out channels.
    u, bias = step.params
    winograd.conv_forward(b, step.x, u, bias, step.attrs["out_channels"], step.attrs["m"], name=step.y)


def _winograd_backward(b: GraphBuilder, step: Step, dy: str) -> str:
    return winograd.conv_input_gradient(b, dy, step.x, step.params[0], step.attrs["in_channels"], step.attrs["m"])


def _relu_backward(b: GraphBuilder, step: Step, dy: str) -> str:
    # Mul by a 0/1 mask is ~8x faster than Where on CPU.
    mask = b.op("Cast", b.op("Greater", step.y, b.const(0.0)), to=TensorProto.FLOAT)
    return b.op("Mul", dy, mask)


def _upsample2(b: GraphBuilder, x: str) -> str:
    return b.op("Resize", x, "", b.const([1, 1, 2, 2]), mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _maxpool_backward(b: GraphBuilder, step: Step, dy: str) -> str:
    # The gradient goes to the inputs equal to their window's max. Ties after a ReLU
    # sit at 0 and are zeroed by the next ReLU backward. MaxUnpool would be CPU-only.
    mask = b.op("Cast", b.op("Equal", step.x, _upsample2(b, step.y)), to=TensorProto.FLOAT)
    return b.op("Mul", mask, _upsample2(b, dy))


def _avgpool_backward(b: GraphBuilder, step: Step, dy: str) -> str:
    return b.op("Mul", _upsample2(b, dy), b.const(0.25))


def _scale_backward(b: GraphBuilder, step: Step, dy: str) -> str:
    return b.op("Mul", dy, step.params[0])


RULES: dict[str, Rule] = {
    "Conv": Rule(_emit, _conv_backward),
    "CircularConv": Rule(_circular_conv_forward, _circular_conv_backward),  # a Conv on a torus (tileable)
    "WinogradConv": Rule(_winograd_forward, _winograd_backward),  # CPU graphs only (Shape ops)
    "Relu": Rule(_emit, _relu_backward),
    "MaxPool": Rule(_emit, _maxpool_backward),
    "AveragePool": Rule(_emit, _avgpool_backward),
    "Mul": Rule(_emit, _scale_backward),  # by a scalar: the average pools' rescaling
}
