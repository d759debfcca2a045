"""Where one evaluation's time goes, the engine against PyTorch eager, part by part.

ONNX Runtime's profile and PyTorch's profiler over the same evaluations, alternated in one
process (2 threads each, the bundled pair, the default preset at the given size), summed per
part of the network: the direct 3x3 convolutions per block (forward and input gradient), the
Winograd layers (their transforms and batched products), the Gram matrices and their gradients,
and the rest (pools, ReLU masks, NCHWc reorders, elementwise ops).

    python -m benchmarks.time_by_part 256 10 --out benchmarks/results/<date>-time-by-part-256.md
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnxruntime as ort

from benchmarks.harness import interleaved_times, median, torch_available
from benchmarks.torch_reference import TorchLoss
from engine import StyleTransfer, TransferConfig
from engine.errors import EngineError
from engine.io.files import atomic_write_text
from engine.run import signals
from engine.models.store import find_model
from engine.models.weights import load_weights
from engine.runtime.sessions import LossGradEvaluator, session_options

DIRECT, WINOGRAD = "3x3 convs, block {}", "3x3 convs, blocks 3-5 (the engine's: Winograd, transforms and products)"
GRAMS, REST = "Gram matrices and their gradients", "pools, ReLU masks, reorders, elementwise"
ROOT = Path(__file__).resolve().parent.parent
WARMUP = 2
OTHERS_CPU = 0.10  # calls during which other processes took more of the CPU are set aside (as `nst bench`)


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


def measure(size: int, evaluations: int, content: Path, style: Path) -> str:
    """The markdown report: both sides' wall-time medians and their time per part."""
    from torch.profiler import ProfilerActivity, profile

    config = TransferConfig(size=size)
    transfer = StyleTransfer(config, provider="cpu", threads=2)
    problem = transfer.prepare(content, style)
    inputs = problem.evaluator.session.get_inputs()
    constants = {i.name: problem.evaluator.input(i.name) for i in inputs if i.name != "image"}
    reference = TorchLoss(config, load_weights(find_model(config.convnet), config.convnet).layers, 2)
    x = problem.initial_image().astype(np.float32)
    reference.set_targets(x, [x])
    with tempfile.TemporaryDirectory() as folder:  # the profile file goes with it
        options = session_options(2)
        options.enable_mem_pattern = False  # as the engine's CPU sessions
        options.enable_profiling, options.profile_file_prefix = True, str(Path(folder) / "profile")
        session = ort.InferenceSession(str(transfer.engine.graphs(config).loss), options,
                                       providers=["CPUExecutionProvider"])
        engine = LossGradEvaluator(session, constants, problem.shape)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as torch_profile:
            timings = interleaved_times({"engine": lambda: engine(x), "torch": lambda: reference.loss_and_grad(x.ravel())},
                                        warmup=WARMUP, repeats=evaluations)
        calls = {name: WARMUP + len(t.seconds) for name, t in timings.items()}  # what each profile holds
        width = problem.shape[3]
        parts = {"engine": collections.Counter(), "torch": collections.Counter()}
        for op, shapes, ms in kernel_events(session.end_profiling()):
            parts["engine"][engine_part(op, shapes, width)] += ms / calls["engine"]
    for event in torch_profile.key_averages(group_by_input_shape=True):
        ms = event.self_cpu_time_total / 1000 / calls["torch"]
        if event.key == "aten::mkldnn_convolution":
            parts["torch"][conv_part(event.input_shapes[0][3], width)] += ms
        elif event.key == "aten::convolution_backward":
            parts["torch"][conv_part(event.input_shapes[1][3], width)] += ms
        elif event.key == "aten::mm":
            parts["torch"][GRAMS] += ms
        else:
            parts["torch"][REST] += ms

    wall = {name: 1000 * median(t.used(OTHERS_CPU, evaluations)[0]) for name, t in timings.items()}
    lines = [f"# One evaluation by part at {problem.shape[3]}x{problem.shape[2]}: the engine against PyTorch eager\n",
             f"- `python -m benchmarks.time_by_part {size} {evaluations}`: {evaluations} evaluations of each, "
             f"alternated in one process, 2 threads each; onnxruntime {ort.__version__}, "
             f"torch {reference.torch.__version__}",
             f"- wall-time medians: engine {wall['engine']:.1f} ms, PyTorch {wall['torch']:.1f} ms "
             f"(engine / PyTorch {wall['engine'] / wall['torch']:.2f})",
             "- engine: ONNX Runtime's kernel times per evaluation; PyTorch: its profiler's self CPU time per "
             "evaluation (the profiler's own overhead included)\n",
             "| part | engine ms | PyTorch ms | engine / PyTorch |", "|---|---|---|---|"]
    for name in (DIRECT.format(1), DIRECT.format(2), WINOGRAD, GRAMS, REST):
        ours, theirs = parts["engine"][name], parts["torch"][name]
        lines.append(f"| {name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")
    lines.append(f"| sum | {sum(parts['engine'].values()):.1f} | {sum(parts['torch'].values()):.1f} | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", type=int, help="longest edge in px")
    parser.add_argument("evaluations", type=int, help="timed evaluations of each")
    parser.add_argument("--content", type=Path, default=ROOT / "examples" / "content.jpg")
    parser.add_argument("--style", type=Path, default=ROOT / "examples" / "style.jpg")
    parser.add_argument("--out", type=Path, required=True, help="the markdown file written")
    args = parser.parse_args()
    if args.size < 16 or args.evaluations < 1:
        parser.error("the size must be at least 16 px and the evaluations at least 1")
    if not torch_available():
        parser.error("this compares with PyTorch, which is not installed: pip install torch==2.13.0 (the bench extra)")
    try:
        report = measure(args.size, args.evaluations, args.content, args.style)
    except EngineError as exc:
        raise SystemExit(f"error: {exc}") from None
    atomic_write_text(args.out, report)
    print(report, end="")


if __name__ == "__main__":
    signals.main(lambda: main)  # Ctrl-C or SIGTERM: the profile's folder removed, nothing written, no traceback
