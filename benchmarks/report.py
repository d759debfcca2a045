"""The benchmark's results rendered: Markdown tables and the committed JSON/Markdown files."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from engine.io.files import atomic_write_text
from engine.runtime.memory import GIB

from .harness import CALL_CONTENTION, CONTENTION_WARNING, MIB


def _used_share(contention: dict | None) -> float | None:
    """Other processes' CPU share in what a result uses: over its kept calls, else its section's."""
    if not contention:
        return None
    share = contention.get("used_calls_other_cpu_share")
    return share if share is not None else contention.get("other_cpu_share")


def _share(contention: dict | None) -> str:
    share = _used_share(contention)
    return "–" if share is None else f"{100 * share:.0f}%"


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / MIB:,.0f}"


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: machine line, timing and memory tables, then the one-off measurements."""
    m, s, sg = result["machine"], result["settings"], result["sgemm"]
    v = m["versions"]
    torch_used = result["torch"]["used"]
    lines = [
        f"# Benchmark {result['date']}: one loss+gradient evaluation",
        "",
        f"- machine: {m['cores']} cores of an {m['cpu']}, {m['memory_gib']} GiB; {s['threads']} threads",
        f"- provider: {result['provider']}; onnxruntime {v.get('onnxruntime')}, numpy {v.get('numpy')}, "
        f"scipy {v.get('scipy')}" + (f", torch {v['torch']}" if "torch" in v else "") + f", python {v.get('python')}",
        f"- model: {s['convnet']} `{s['preset']}` layers (content {s['content_layer']}, style "
        f"{', '.join(s['style_layers'])}), {s['pooling']} pooling; images {s['content']}, {s['style']}",
        f"- {s['warmup']} warm-up, then median of {s['repeats']} evaluations"
        + (", interleaved with PyTorch eager autograd in the same process" if torch_used else "")
        + f"; load average before/after: {result['load_average']['before'][0]:.2f}/{result['load_average']['after'][0]:.2f}",
        f"- sgemm peak: {sg['gflops']:.0f} GFLOP/s (numpy float32 {sg['n']}x{sg['n']} matmul, best of "
        f"{sg['repeats']}, {sg['threads']} threads, {sg['blas'].get('name')} {sg['blas'].get('version')}; measured "
        f"with {', '.join(sg['unset_for_measurement'])} unset; in the environment: "
        + ", ".join(f"{k}={val if val is not None else 'unset'}" for k, val in sg["environment"].items()) + ")",
        "",
        "## Time per evaluation",
        "",
    ]
    header = ["size", "pixels", "engine ms", "engine GFLOP/s", "of sgemm peak"]
    if torch_used:
        header += ["PyTorch ms", "PyTorch GFLOP/s", "engine / PyTorch"]
    header += ["conv GFLOP", "ms per MP", "ready s", "from command s", "first eval done s", "others' CPU"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in result["sizes"]:
        row = [f"{e['width']}x{e['height']}", f"{e['pixels']:,}", f"{1e3 * e['onnx']['median_s']:.1f}",
               f"{e['onnx']['gflops']:.0f}", f"{100 * e['onnx']['share_of_sgemm_peak']:.0f}%"]
        if torch_used:
            row += [f"{1e3 * e['torch']['median_s']:.1f}", f"{e['torch']['gflops']:.0f}", f"{e['onnx_over_torch']:.2f}"]
        command = e.get("command_to_ready_s")  # absent from results made before it was measured
        row += [f"{e['conv_gflop']:.1f}", f"{e['onnx']['ms_per_megapixel']:.0f}", f"{e['prepare_s']:.2f}",
                "-" if command is None else f"{command:.2f}", f"{e['time_to_first_eval_s']:.2f}",
                _share(e.get("contention"))]
        lines.append("| " + " | ".join(row) + " |")
    sc = result["scaling"]
    shares = [share for share in map(_used_share, [*(e.get("contention") for e in result["sizes"]),
                                                     sg.get("contention"), result.get("lbfgs", {}).get("contention")])
              if share is not None]
    if shares and max(shares) > CONTENTION_WARNING:
        lines += ["", f"**Warning:** other processes used up to {100 * max(shares):.0f}% of the machine's CPU time "
                  "during these measurements; the times are inflated by that much or more. Rerun on a quiet machine."]
    set_aside = sum(len(e[k]["times_s"]) - e[k]["calls_used"] for e in result["sizes"] for k in ("onnx", "torch")
                    if k in e and "calls_used" in e[k])
    if set_aside:
        lines += ["", f"{set_aside} timed calls during which other processes took over {100 * CALL_CONTENTION:.0f}% "
                  "of the CPU time were set aside and made again (all kept in the JSON)."]
    spread = "; ".join(
        f"{e['width']}x{e['height']} engine {1e3 * e['onnx']['min_s']:.0f}-{1e3 * e['onnx']['max_s']:.0f} ms"
        + (f", PyTorch {1e3 * e['torch']['min_s']:.0f}-{1e3 * e['torch']['max_s']:.0f} ms" if "torch" in e else "")
        for e in result["sizes"])
    lines += ["", f"Spread of the calls used (min-max): {spread}. On a shared virtual machine absolute times move "
              "between runs" + ("; the ratio of the interleaved timings moves much less." if torch_used else ".")]
    lines += ["", "GFLOP/s counts the 3x3 convs only: forward and input gradient (no weight gradients). "
              "'ready': a fresh process's StyleTransfer.prepare (graphs, sessions started, targets computed: the "
              "time to the first evaluation); 'from command': the same point counted from the process's start "
              "(interpreter, imports); 'first eval done': 'ready' plus the first evaluation."]
    notes = []
    if sc.get("onnx_exponent") is not None:
        notes.append(f"Scaling: time grows as pixels^{sc['onnx_exponent']:.2f} (engine)"
                     + (f", pixels^{sc['torch_exponent']:.2f} (PyTorch)" if sc.get("torch_exponent") is not None else "")
                     + " (log-log fit over the sizes above).")
    if torch_used:
        worst = max(max(e["torch_check"]["loss_rel_err"], e["torch_check"]["grad_rel_err"]) for e in result["sizes"])
        notes.append(f"PyTorch's loss and gradient match the engine's at every size (largest relative "
                     f"difference {worst:.1e}).")
    if notes:
        lines += ["", *notes]
    lines += ["", "## Memory", "", "| size | engine peak RSS MiB | engine above baseline MiB | estimate MiB | "
              "estimate / measured" + (" | PyTorch peak RSS MiB | PyTorch above baseline MiB |" if torch_used else " |"),
              "|---|---|---|---|---|" + ("---|---|" if torch_used else "")]
    for e in result["sizes"]:
        r = e["rss"]
        above = r["onnx_peak"] - r["onnx_baseline"]
        row = [f"{e['width']}x{e['height']}", _mib(r["onnx_peak"]), _mib(above), _mib(e["estimate_eval_bytes"]),
               f"{e['estimate_eval_bytes'] / above:.2f}" if above > 0 else "–"]
        if torch_used:
            row += [_mib(r.get("torch_peak")), _mib(r["torch_peak"] - r["torch_baseline"]) if "torch_peak" in r else "–"]
        lines.append("| " + " | ".join(row) + " |")
    mem = result["memory"]
    big = mem["largest_square"]
    lines += ["", f"Peak RSS: each size in a fresh process ({s['rss_evaluations']} evaluations; VmHWM); the baseline "
              "is its RSS after imports. The estimate counts the tensors alive at an evaluation's peak, as an "
              "allocator freeing each after its last use would hold them, plus host copies and weights.", ""]
    room = f"{mem['total_bytes'] / GIB:.1f} GiB less the {_mib(mem['baseline_rss_bytes'])} MiB baseline"
    if "measured_run" in big:
        lines.append(f"Largest square working size that fits in {room} (extrapolated, not run): "
                     f"**{big['measured_run']} px** for a run (a line through the measured peak RSS, "
                     f"{mem['measured_fit']['bytes_per_pixel']:.0f} bytes per pixel, plus L-BFGS-B's state), "
                     f"{big['measured_eval']} px for one evaluation; by the tensor estimate "
                     f"{big['estimate_run']} px for a run, {big['estimate_eval']} px for one evaluation.")
    else:
        lines.append(f"Largest square working size that fits in {room} by the tensor estimate (extrapolated, not "
                     f"run): {big['estimate_run']} px for a run (with L-BFGS-B's state), {big['estimate_eval']} px "
                     "for one evaluation.")
    if "lbfgs" in result:
        lb = result["lbfgs"]
        lines += ["", "## Time outside ONNX Runtime", "",
                  f"An L-BFGS-B run (the engine's driver, scipy's BLAS on one thread) of {lb['evaluations']} "
                  f"evaluations at {lb['size'][0]}x{lb['size'][1]}: {lb['wall_s']:.2f} s wall, {100 * lb['outside_ort_share']:.1f}% "
                  f"outside ONNX Runtime's run ({lb['outside_ort_ms_per_eval']:.1f} ms per evaluation: "
                  f"optimiser {lb['optimizer_s']:.3f} s, Problem's conversions {lb['problem_conversions_s']:.3f} s, "
                  f"evaluator copies {lb['evaluator_copies_s']:.3f} s); ONNX Runtime's run took "
                  f"{1e3 * lb['ort_run_median_s']:.0f} ms (median) there."]
        other = lb.get("blas_threads_as_set")
        if other:
            lines.append(f"The same with scipy's BLAS threads as set (all cores unless limited): "
                         f"{100 * other['outside_ort_share']:.1f}% outside ({other['outside_ort_ms_per_eval']:.1f} ms "
                         f"per evaluation), ONNX Runtime's run {1e3 * other['ort_run_median_s']:.0f} ms (median). "
                         "Each in a fresh process, after 2 warm-up evaluations.")
    if "gpu_estimate" in result:
        g = result["gpu_estimate"]
        first = g["sizes"][0]
        lines += ["", f"## GPU: estimate, not measured ({g['gpu']})", "",
                  f"No CUDA session here. Conv FLOPs at {100 * first['efficiency'][0]:.0f}-"
                  f"{100 * first['efficiency'][1]:.0f}% of the {g['gpu']}'s dense TF32 peak "
                  f"({first['tf32_dense_tflops']} TFLOP/s) would take: "
                  + "; ".join(f"{e['width']}x{e['height']} {e['ms'][0]:.2f}-{e['ms'][1]:.2f} ms" for e in g["sizes"])
                  + " per evaluation (memory-bound ops and launch overhead not included)."]
    return "\n".join(lines) + "\n"


def result_stem(result: dict[str, Any]) -> str:
    kind = "cuda" if result.get("provider") == "CUDAExecutionProvider" else "cpu"
    return f"{result['date']}-{kind}"


def write_results(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<out_dir>/<date>-<cpu|cuda>.json`` and ``.md`` atomically; their paths."""
    out_dir = Path(out_dir)
    stem = result_stem(result)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(result, indent=2, default=_json_default) + "\n")
    atomic_write_text(md_path, markdown(result))
    return json_path, md_path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


