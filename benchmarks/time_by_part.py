"""Where one evaluation's time goes, the engine against PyTorch eager, part by part.

ONNX Runtime's profile and PyTorch's profiler over the same evaluations, alternated in one
process (2 threads each, the bundled pair, the default preset at the given size), summed per
part of the network: the direct 3x3 convolutions per block (forward and input gradient), the
Winograd layers (their transforms and batched products), the Gram matrices and their gradients,
and the rest (pools, ReLU masks, NCHWc reorders, elementwise ops).

    python -m benchmarks.time_by_part 256 10 > benchmarks/results/<date>-time-by-part-256.md
"""
from __future__ import annotations

import collections
import json
import sys
import time
from typing import Iterator

import numpy as np
import onnxruntime as ort

from benchmarks.torch_reference import TorchLoss
from engine import StyleTransfer, TransferConfig
from engine.models.store import find_model
from engine.models.weights import load_weights
from engine.runtime.sessions import LossGradEvaluator, session_options

DIRECT, WINOGRAD = "3x3 convs, block {}", "3x3 convs, blocks 3-5 (the engine's: Winograd, transforms and products)"
GRAMS, REST = "Gram matrices and their gradients", "pools, ReLU masks, reorders, elementwise"


def conv_part(width: int, image_width: int) -> str:
    """The part of a 3x3 conv on maps ``width`` wide, for an image ``image_width`` wide."""
    block = {image_width >> b: b + 1 for b in range(5)}[width]
    return DIRECT.format(block) if block < 3 else WINOGRAD


def kernel_events(profile: str) -> Iterator[tuple[str, list[list[int]], float]]:
    """(op, input shapes, ms) of each kernel run in an ONNX Runtime profile file."""
    with open(profile) as f:
        events = json.load(f)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            shapes = [next(iter(s.values())) for s in event["args"].get("input_type_shape", [])]
            yield event["args"]["op_name"], shapes, event["dur"] / 1000


def engine_part(op: str, shapes: list[list[int]], image_width: int) -> str:
    """The part of the network an ONNX Runtime kernel belongs to, from its op and input shapes."""
    kernel = shapes[1] if len(shapes) > 1 else []
    if op == "ConvTranspose" or (op == "Conv" and len(kernel) == 4 and kernel[2:] == [3, 3]):
        return conv_part(shapes[0][3], image_width)  # (the ConvTranspose: the image's conv's input gradient)
    if op == "Conv" and len(kernel) == 4 and kernel[2:] == [1, 1]:
        return GRAMS  # a style layer's gradient 4c (G - T) F as a 1x1 conv
    if op in ("MatMul", "FusedMatMul") and len(shapes[0]) == 2 and len(kernel) == 2 and shapes[0][1] == kernel[1]:
        return GRAMS  # F F^T
    if (op in ("MatMul", "FusedMatMul") or op == "DepthToSpace"
            or (op == "Conv" and len(kernel) == 4 and kernel[1] == 1)        # input transforms
            or (op == "ReorderOutput" and shapes[0][0] > 1)                  # their channels-as-batch outputs
            or (op == "Slice" and len(shapes[0]) == 4 and shapes[0][1] > 3)):  # the crop to the layer's size
        return WINOGRAD
    return REST


def main(size: int, evaluations: int) -> None:
    config = TransferConfig(size=size)
    transfer = StyleTransfer(config, provider="cpu", threads=2)
    problem = transfer.prepare("examples/content.jpg", "examples/style.jpg")
    session = problem.evaluator.session
    options = session_options(2)
    options.enable_mem_pattern = False
    options.enable_profiling = True
    options.profile_file_prefix = "/tmp/nst-time-by-part"
    constants = {i.name: problem.evaluator.input(i.name) for i in session.get_inputs() if i.name != "image"}
    engine = LossGradEvaluator(ort.InferenceSession(str(transfer.engine.graphs(config).loss), options, providers=["CPUExecutionProvider"]),
                               constants, problem.shape)
    reference = TorchLoss(config, load_weights(find_model(config.convnet), config.convnet).layers, 2)
    x = problem.initial_image().astype(np.float32)
    reference.set_targets(x, [x])
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):  # warm-up
        engine(x)
        reference.loss_and_grad(x.ravel())
    walls = {"engine": [], "torch": []}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as torch_profile:
        for _ in range(evaluations):
            for name, call in (("engine", lambda: engine(x)), ("torch", lambda: reference.loss_and_grad(x.ravel()))):
                time.sleep(0.05)  # ONNX Runtime's spinning threads off the next call (as the harness)
                start = time.perf_counter()
                call()
                walls[name].append(time.perf_counter() - start)

    width = problem.shape[3]
    parts = {"engine": collections.Counter(), "torch": collections.Counter()}
    for op, shapes, ms in kernel_events(engine.session.end_profiling()):
        parts["engine"][engine_part(op, shapes, width)] += ms / (evaluations + 2)
    for event in torch_profile.key_averages(group_by_input_shape=True):
        ms = event.self_cpu_time_total / 1000 / evaluations
        if event.key == "aten::mkldnn_convolution":
            parts["torch"][conv_part(event.input_shapes[0][3], width)] += ms
        elif event.key == "aten::convolution_backward":
            parts["torch"][conv_part(event.input_shapes[1][3], width)] += ms
        elif event.key == "aten::mm":
            parts["torch"][GRAMS] += ms
        else:
            parts["torch"][REST] += ms

    wall = {name: 1000 * float(np.median(w)) for name, w in walls.items()}
    print(f"# One evaluation by part at {problem.shape[3]}x{problem.shape[2]}: the engine against PyTorch eager\n")
    print(f"- `python -m benchmarks.time_by_part {size} {evaluations}`: {evaluations} evaluations of each, alternated "
          f"in one process, 2 threads each; onnxruntime {ort.__version__}, torch {reference.torch.__version__}")
    print(f"- wall-time medians: engine {wall['engine']:.1f} ms, PyTorch {wall['torch']:.1f} ms "
          f"(engine / PyTorch {wall['engine'] / wall['torch']:.2f})")
    print("- engine: ONNX Runtime's kernel times per evaluation; PyTorch: its profiler's self CPU time per "
          "evaluation (the profiler's own overhead included)\n")
    print("| part | engine ms | PyTorch ms | engine / PyTorch |")
    print("|---|---|---|---|")
    for name in (DIRECT.format(1), DIRECT.format(2), WINOGRAD, GRAMS, REST):
        ours, theirs = parts["engine"][name], parts["torch"][name]
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")
    print(f"| sum | {sum(parts['engine'].values()):.1f} | {sum(parts['torch'].values()):.1f} | |")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
