"""The benchmark's pure parts: FLOP counts, the GPU estimate,
the result writers, and the PyTorch reference loss (skipped without torch). No timing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import TransferConfig, preset_config
from benchmarks.harness import GPU_TF32_TFLOPS, ConvFlops, conv_flops, gpu_estimate, gpu_name, loglog_exponent
from benchmarks.report import markdown, result_stem, write_results
from engine.runtime.memory import estimate_eval_bytes, eval_memory_breakdown
from engine.errors import ConfigError

from test_loss_graph import SEED_STYLE_LAYERS, synthetic_weights  # noqa: F401 (fixture)


def one_layer_config() -> TransferConfig:
    return TransferConfig(content_layer="block1_conv1", style_layers=("block1_conv1",), style_weights=(1.0,))


def test_conv_flops_of_one_layer_by_hand():
    # 4x2 image, 3 -> 64 channels, 3x3 kernel: 2 * 8 px * 3 * 64 * 9 = 27,648 forward,
    # the same again for the gradient back to the image's 3 channels.
    flops = conv_flops(one_layer_config(), 4, 2)
    assert flops.forward == 27_648
    assert flops.backward == 27_648
    assert flops.total == 55_296
    # Gram 64x64 over 8 positions and its gradient: 2 * (2 * 64 * 64 * 8).
    assert flops.gram == 131_072


def test_conv_flops_across_a_pool_by_hand():
    config = TransferConfig(content_layer="block2_conv1", style_layers=("block1_conv1",), style_weights=(1.0,))
    flops = conv_flops(config, 4, 4)
    # block1_conv1 at 4x4: 2*16*3*64*9; block1_conv2: 2*16*64*64*9; block2_conv1 at 2x2: 2*4*64*128*9.
    assert flops.per_layer == {"block1_conv1": 55_296, "block1_conv2": 1_179_648, "block2_conv1": 589_824}
    assert flops.forward == 1_824_768 == flops.backward


def test_conv_flops_of_the_starry_tubingen_layers_per_pixel():
    # VGG16 to block5_conv1, per pixel at full resolution: 18*(3*64 + 64*64) for block 1,
    # 18*(64*128 + 128*128)/4, 18*(128*256 + 2*256*256)/16, 18*(256*512 + 2*512*512)/64,
    # 18*512*512/256 = 574,848 FLOPs.
    config = preset_config("starry_tubingen")
    flops = conv_flops(config, 256, 176)
    assert flops.forward == 574_848 * 256 * 176
    assert list(flops.per_layer)[-1] == "block5_conv1"
    assert len(flops.per_layer) == 11  # 2 + 2 + 3 + 3 convs, then block5_conv1


def test_loglog_exponent():
    pixels = [1e4, 4e4, 1.6e5]
    assert loglog_exponent(pixels, [2e-6 * p ** 1.5 for p in pixels]) == pytest.approx(1.5)
    assert loglog_exponent(pixels[:1], [1.0]) is None


def test_gpu_estimate_is_labelled_and_uses_the_dense_peak():
    peak = GPU_TF32_TFLOPS["H100-SXM"] * 1e12
    estimate = gpu_estimate(round(peak), "h100 sxm")  # one second of FLOPs at 100% of the peak
    assert estimate["kind"] == "estimate" and estimate["gpu"] == "H100-SXM"
    low, high = estimate["efficiency"]
    assert estimate["ms"] == pytest.approx([1e3 / high, 1e3 / low])
    with pytest.raises(ConfigError, match="H200"):
        gpu_name("GTX 480")


def fake_result(with_torch: bool) -> dict:
    """A result dict shaped as run_benchmark's, with made-up numbers."""
    config = preset_config("starry_tubingen")
    sizes = []
    for size, (w, h) in [(128, (128, 80)), (256, (256, 176))]:
        flops = conv_flops(config, w, h)
        t = 1e-9 * w * h * 7
        entry = {"size": size, "width": w, "height": h, "pixels": w * h, "provider": "CPUExecutionProvider",
                 "conv_gflop": flops.total / 1e9, "conv_forward_gflop": flops.forward / 1e9, "gram_gflop": flops.gram / 1e9,
                 "time_to_first_eval_s": 1.3, "prepare_s": 1.2, "command_to_ready_s": 1.45, "sessions_s": 0.5, "graphs_s": 0.1, "first_eval_s": 0.1,
                 "rss": {"onnx_peak": 400e6 + 6000 * w * h, "onnx_baseline": 100e6},
                 "estimate_eval_bytes": estimate_eval_bytes(config, w, h),
                 "estimate_breakdown": eval_memory_breakdown(config, w, h),
                 "onnx": {"median_s": t, "min_s": t, "max_s": t, "times_s": [t], "gflops": flops.total / t / 1e9,
                          "ms_per_megapixel": 1e3 * t / (w * h / 1e6), "share_of_sgemm_peak": 0.9}}
        if with_torch:
            entry["torch"] = {**entry["onnx"], "median_s": 1.2 * t}
            entry["onnx_over_torch"] = 1 / 1.2
            entry["torch_check"] = {"engine_loss": 1.0, "torch_loss": 1.0, "loss_rel_err": 1e-6,
                                    "terms_rel_err": {}, "grad_rel_err": 1e-5}
            entry["rss"].update(torch_peak=300e6, torch_baseline=200e6)
        sizes.append(entry)
    return {
        "date": "2026-01-02",
        "machine": {"cpu": "AMD EPYC", "cores": 2, "threads": 2, "memory_gib": 23.5, "platform": "Linux",
                    "versions": {"onnxruntime": "1.0", "numpy": "2.0", "scipy": "1.0", "python": "3.11",
                                 **({"torch": "2.13.0+cpu"} if with_torch else {})},
                    "blas_tuning_environment": {"OPENBLAS_CORETYPE": "Zen", "OPENBLAS_L2_SIZE": None}},
        "settings": {"preset": "starry_tubingen", "convnet": "vgg16", "content_layer": config.content_layer,
                     "style_layers": list(config.style_layers), "pooling": "max", "content": "examples/content.jpg",
                     "style": "examples/style.jpg", "sizes": [128, 256], "repeats": 3, "warmup": 2,
                     "requested_provider": "auto", "threads": 2, "rss_evaluations": 3, "graph_version": "2"},
        "torch": {"available": with_torch, "used": with_torch},
        "sgemm": {"n": 4096, "repeats": 5, "threads": 2, "best_s": 0.7, "gflops": 190.0,
                  "blas": {"name": "scipy-openblas", "version": "0.3"},
                  "unset_for_measurement": ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"],
                  "environment": {"OPENBLAS_CORETYPE": "Zen", "OPENBLAS_L2_SIZE": None}},
        "sizes": sizes,
        "provider": "CPUExecutionProvider",
        "lbfgs": {"size": [256, 176], "evaluations": 21, "wall_s": 6.5, "ort_run_s": 6.2, "evaluator_copies_s": 0.01,
                  "problem_conversions_s": 0.02, "optimizer_s": 0.2, "outside_ort_share": 0.046,
                  "outside_ort_ms_per_eval": 14.0, "ort_run_median_s": 0.3,
                  "blas_threads_as_set": {"outside_ort_share": 0.066, "outside_ort_ms_per_eval": 26.0,
                                          "ort_run_median_s": 0.34}},
        "scaling": {"onnx_exponent": 0.95, "ms_per_megapixel": {"128": 7000.0, "256": 6900.0},
                    **({"torch_exponent": 0.9} if with_torch else {})},
        "memory": {"total_bytes": 24 * 2 ** 30, "baseline_rss_bytes": 100e6, "multiple": 16,
                   "largest_square": {"estimate_eval": 3000, "estimate_run": 2600, "measured_eval": 1900,
                                      "measured_run": 1700},
                   "measured_fit": {"intercept_bytes": 3e8, "bytes_per_pixel": 6000.0}},
        "gpu_estimate": {"gpu": "H200", "kind": "estimate", "note": "estimate",
                         "sizes": [{"size": e["size"], "width": e["width"], "height": e["height"],
                                    **gpu_estimate(round(e["conv_gflop"] * 1e9), "H200")} for e in sizes]},
        "load_average": {"before": [0.1, 0.1, 0.1], "after": [1.5, 1.0, 0.5]},
        "seconds": 60.0,
    }


@pytest.mark.parametrize("with_torch", [False, True])
def test_writers_produce_json_and_a_markdown_table(tmp_path, with_torch):
    result = fake_result(with_torch)
    json_path, md_path = write_results(result, tmp_path / "results")
    assert json_path.name == "2026-01-02-cpu.json" and md_path.name == "2026-01-02-cpu.md"
    data = json.loads(json_path.read_text())
    for key in ("date", "machine", "settings", "sgemm", "sizes", "lbfgs", "scaling", "memory", "gpu_estimate"):
        assert key in data
    entry = data["sizes"][0]
    for key in ("width", "height", "pixels", "conv_gflop", "time_to_first_eval_s", "rss", "estimate_eval_bytes", "onnx"):
        assert key in entry
    assert ("onnx_over_torch" in entry) is with_torch
    text = md_path.read_text()
    assert text == markdown(result)
    assert "2 cores of an AMD EPYC" in text
    assert "| 128x80 | 10,240 |" in text and "| 256x176 | 45,056 |" in text
    assert "| ready s | from command s | first eval done s |" in text and "| 1.20 | 1.45 | 1.30 |" in text
    assert ("engine / PyTorch" in text) is with_torch
    assert "estimate, not measured (H200)" in text
    assert "OPENBLAS_CORETYPE=Zen" in text and "unset" in text
    assert "scipy's BLAS on one thread) of 21 evaluations" in text and "4.6% outside" in text
    assert "with scipy's BLAS threads as set (all cores unless limited): 6.6% outside" in text
    assert "**1700 px** for a run" in text
    assert not list((tmp_path / "results").glob(".*"))  # atomic writes leave no temp files


def test_result_stem_names_the_provider():
    assert result_stem({"date": "2026-01-02", "provider": "CUDAExecutionProvider"}) == "2026-01-02-cuda"
    assert result_stem({"date": "2026-01-02", "provider": "CPUExecutionProvider"}) == "2026-01-02-cpu"


def test_torch_reference_matches_the_float64_reference():
    pytest.importorskip("torch")
    import loss_reference
    import vgg_reference

    from benchmarks.torch_reference import TorchLoss

    config = TransferConfig(content_layer="block2_conv1", style_layers=("block1_conv1", "block2_conv1"),
                            style_weights=(10.0, 1.0), content_weight=2.0, tv_weight=0.5)
    weights = vgg_reference.random_weights("vgg16", seed=3)
    rng = np.random.default_rng(5)
    content, style, x = ((rng.standard_normal((1, 3, 16, 24)) * 50).astype(np.float32) for _ in range(3))
    reference = TorchLoss(config, weights, threads=1)
    reference.set_targets(content, [style])
    loss, grad = reference.loss_and_grad(x.astype(np.float64))

    layers = loss_reference.vgg_layers(weights)
    content_target, grams = loss_reference.targets(layers, content[0], style[0], config.content_layer,
                                                   config.style_layers)
    terms, expected_grad = loss_reference.loss_and_grad(
        layers, x[0], content_target, grams, config.content_weight, config.style_weights, config.tv_weight,
        config.content_layer, config.style_layers)
    assert loss == pytest.approx(terms["loss"], rel=1e-4)
    assert grad.dtype == np.float64 and grad.shape == x.shape
    assert loss_reference.relative_l2(grad[0], expected_grad) < 1e-4
    got = reference.evaluate_terms(x)
    for name in ("content", "tv", "style.block1_conv1", "style.block2_conv1"):
        assert got[name] == pytest.approx(terms[name], rel=1e-4)


def test_conv_flops_is_a_frozen_record():
    flops = conv_flops(one_layer_config(), 4, 2)
    assert isinstance(flops, ConvFlops)
    with pytest.raises(AttributeError):
        flops.forward = 0  # type: ignore[misc]


def test_markdown_warns_when_other_processes_took_the_cpu():
    result = fake_result(with_torch=False)
    result["sizes"][0]["contention"] = {"other_cpu_share": 0.01, "steal_share": 0.0}
    assert "Warning" not in markdown(result)
    result["sizes"][1]["contention"] = {"other_cpu_share": 0.25, "steal_share": 0.0}
    text = markdown(result)
    assert "**Warning:** other processes used up to 25%" in text
    assert "| 1% |" in text


def test_timings_set_aside_disturbed_calls_only_when_enough_are_clean():
    from benchmarks.harness import Timings

    t = Timings(seconds=[1.0, 2.0, 3.0, 4.0], other_s=[0.0, 1.0, 0.02, None], capacity_s=[2.0, 2.0, 2.0, None])
    assert t.other_cpu == [0.0, 0.5, 0.01, None]
    assert t.clean(0.1) == [1.0, 3.0, 4.0]
    # Other processes' share over the calls used: CPU seconds over capacity, not the worst call's.
    assert t.used(0.1, minimum=2) == ([1.0, 3.0, 4.0], pytest.approx(0.02 / 4.0))
    assert t.used(0.1, minimum=4) == ([1.0, 2.0, 3.0, 4.0], pytest.approx(1.02 / 6.0))


def test_interleaved_timing_alternates_the_order():
    from benchmarks.harness import interleaved_times

    calls = []
    timings = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                warmup=1, repeats=2, max_rounds=2, pause=0)
    assert calls == ["a", "b", "a", "b", "b", "a"]
    assert len(timings["a"].seconds) == len(timings["b"].other_cpu) == 2


def test_cli_rejects_a_bad_benchmark_setting_with_one_line():
    from typer.testing import CliRunner

    from engine.cli import app

    result = CliRunner().invoke(app, ["bench", "--gpu", "GTX 480"])
    assert result.exit_code == 1
    assert "unknown GPU 'GTX 480'" in result.output
    assert "Traceback" not in result.output


def test_nst_bench_refuses_bad_sizes_before_measuring_anything(tmp_path, vgg16_onnx, monkeypatch):
    from typer.testing import CliRunner

    import benchmarks.harness
    from conftest import error_line, written
    from engine.cli import app

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured before the sizes were checked")

    monkeypatch.setattr(benchmarks.harness, "sgemm_peak", no_measuring)
    out = tmp_path / "results"
    common = ["bench", "--out-dir", str(out), "--models-dir", str(vgg16_onnx.parent), "--provider", "cpu",
              "--quiet-wait", "0"]
    line = error_line(CliRunner().invoke(app, [*common, "--sizes", "128,big"]))
    assert "--sizes '128,big' is not a comma-separated list of numbers" in line and "e.g. --sizes 128,256,512" in line
    line = error_line(CliRunner().invoke(app, [*common, "--sizes", "128,16"]))
    assert "too small for the deepest chosen layer" in line
    assert written(out) == []


def test_time_by_part_puts_every_kernel_of_a_profiled_winograd_loss_graph_in_its_part(tmp_path, synthetic_weights):
    import onnxruntime as ort
    from benchmarks.time_by_part import DIRECT, GRAMS, REST, WINOGRAD, engine_part, kernel_events
    from engine.graph import lossgrad
    from engine.models.export import feature_graph

    choice = lossgrad.LayerChoice("block4_conv2", SEED_STYLE_LAYERS, winograd=True)
    model = lossgrad.build_loss_graph(feature_graph(synthetic_weights), choice)
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "profile")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in session.get_inputs()}
    feeds["image"] = np.random.default_rng(0).uniform(-100, 100, (1, 3, 48, 64)).astype(np.float32)
    feeds[lossgrad.CONTENT_TARGET] = np.zeros((1, 512, 6, 8), np.float32)
    session.run(None, feeds)
    parts: dict[str, list[str]] = {}
    for op, shapes, _ in kernel_events(session.end_profiling()):
        parts.setdefault(engine_part(op, shapes, image_width=64), []).append(op)
    # Blocks 1-2 direct: 4 forward convs, 4 input gradients (the image's a ConvTranspose).
    assert sorted(parts[DIRECT.format(1)] + parts[DIRECT.format(2)]) == ["Conv"] * 7 + ["ConvTranspose"]
    # One Gram and one gradient (a 1x1 conv) per style layer.
    assert sorted(parts[GRAMS]) == ["Conv"] * 5 + ["FusedMatMul"] * 5
    # 7 Winograd layers forward and back: each a transform, a product, an output transform, DepthToSpace.
    assert parts[WINOGRAD].count("DepthToSpace") == 14
    assert sum(op in ("MatMul", "FusedMatMul") for op in parts[WINOGRAD]) == 28
    assert not {"Conv", "ConvTranspose", "MatMul", "FusedMatMul", "DepthToSpace"} & set(parts[REST])


def test_time_by_part_refuses_an_impossible_setting_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "parts.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.time_by_part", "256", "0", "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("the evaluations at least 1")
    assert "Traceback" not in done.stderr
    assert not out.exists()
