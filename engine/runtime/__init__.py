"""ONNX Runtime: providers, sessions, the loss-gradient evaluator, memory estimates."""
