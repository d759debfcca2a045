"""ONNX graph building: a small builder, the op table, the loss terms, the loss-gradient graph."""
