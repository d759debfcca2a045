"""A small ONNX graph builder: each call adds one node and returns its output name."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..models.export import IR_VERSION, OPSET

INT64_MAX = np.iinfo(np.int64).max


class GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._ids = itertools.count()
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs) -> str:
        """Add one ``op_type`` node; its single output is ``name`` or a fresh name."""
        out = name or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{out}/{op_type}", **attrs))
        return out

    def const(self, value, dtype=np.float32) -> str:
        """An initializer holding ``value``; equal constants are shared."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def initializer(self, tensor: onnx.TensorProto) -> str:
        self.initializers.append(tensor)
        return tensor.name

    def input(self, name: str, shape: list, elem_type: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, tensor: str, shape: list) -> None:
        if tensor != name:
            self.op("Identity", tensor, name=name)
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))

    # The few composite helpers the loss terms share.
    def sum_all(self, x: str) -> str:
        # ORT's ReduceSum(keepdims=0) over all axes yields shape (1,), not a scalar: reshape to ().
        return self.op("Reshape", self.op("ReduceSum", x, keepdims=1), self.ints())

    def sum_of_squares(self, x: str) -> str:
        return self.sum_all(self.op("Mul", x, x))

    def crop(self, x: str, starts: tuple[int, int], ends: tuple[int, int]) -> str:
        """``x[:, :, starts[0]:ends[0], starts[1]:ends[1]]`` (INT64_MAX = to the end)."""
        return self.op("Slice", x, self.ints(*starts), self.ints(*ends), self.ints(2, 3))

    def pad_hw(self, x: str, top: int, left: int, bottom: int, right: int) -> str:
        return self.op("Pad", x, self.ints(0, 0, top, left, 0, 0, bottom, right))

    def model(self, graph_name: str, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        domains = sorted({node.domain for node in self.nodes if node.domain})  # e.g. ONNX Runtime's com.microsoft
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)] +
                                  [helper.make_opsetid(domain, 1) for domain in domains],
                                  producer_name="nst-engine", ir_version=IR_VERSION)
        if metadata:
            helper.set_model_props(model, metadata)
        return model
