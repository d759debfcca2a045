"""Time to a finished picture: the engine against the seed's own pipeline, translated to PyTorch.

The reference ("seed") is the seed's loop as it stands: a uniform(0, 255) - 128 noise start,
then K iterations, each a fresh ``fmin_l_bfgs_b(maxfun=20)`` on the raw loss, with the loss
and gradient from PyTorch eager autograd (:class:`~benchmarks.torch_reference.TorchLoss`,
the engine's loss on the same weights). Its loss after K iterations is the target; an
engine arm's time is the wall time from its ``StyleTransfer.run`` call (graphs, sessions,
targets included) to the first evaluation at the final size whose loss is at or below the
target (an arm that has not got there after as many evaluations as the seed pipeline made in
its K iterations, about K x 21 as scipy overruns maxfun, stops; these arms run on tol 0). The seed
arm's clock also starts before its targets are computed. An arm with ``finish=true`` instead
runs as a user's run does, to its own end (its iterations, its tol): its time and final loss
are set against the seed pipeline's after K iterations, a finished picture against a finished
picture.

Arms run one after the other, alternated, ``repeats`` times each; medians are reported with
the CPU share other processes took while each arm ran (the machine is shared).

    python -m benchmarks.time_to_image --size 256 --iterations 10 --repeats 2 \\
        --arm "continuous:optimizer_mode=continuous" --arm "fast:optimizer_mode=continuous;init=content" \\
        --out benchmarks/results/x

An arm's overrides are TransferConfig fields, ``winograd`` (true/false) for StyleTransfer and
``finish``. ``--seed-from`` reuses the seed pipeline's runs of an earlier result (same images,
size, threads and K; the report says so) where running it again would take most of the time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import fmin_l_bfgs_b
from threadpoolctl import threadpool_limits

from engine.config import TransferConfig
from engine.io import images
from engine.models.store import find_model
from engine.models.weights import load_weights
from engine import Evaluated, Prepared, StyleTransfer

from .harness import CpuMonitor
from .torch_reference import TorchLoss

ROOT = Path(__file__).resolve().parent.parent
SEED_MAXFUN = 20


class _Reached(Exception):
    """Raised from the callback to stop an engine arm once it reached the target."""


def seed_arm(config: TransferConfig, content: Path, style: Path, size: int, iterations: int,
             threads: int) -> dict[str, Any]:
    """The seed's loop in PyTorch: (seconds, loss) after each iteration, from the clock's start."""
    started = time.perf_counter()
    st = StyleTransfer(config)
    content_image, style_image = images.load_image(content), images.load_image(style)
    _, working = st.sizes_for(content_image.size, size)
    content_x, style_x = images.preprocess(content_image, working), images.preprocess(style_image, working)
    reference = TorchLoss(config, load_weights(find_model(config.convnet), config.convnet).layers, threads)
    reference.set_targets(content_x, [style_x])
    x = (np.random.default_rng(config.seed).uniform(0, 255, content_x.shape) - 128.0).ravel()
    curve, evaluations = [], [0]

    def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        evaluations[0] += 1
        loss, grad = reference.loss_and_grad(flat)
        return loss, grad.ravel()

    with threadpool_limits(1, user_api="blas"):  # as the engine's drivers do
        for i in range(1, iterations + 1):
            x, loss, _ = fmin_l_bfgs_b(loss_and_grad, x, maxfun=SEED_MAXFUN)
            curve.append({"iteration": i, "seconds": time.perf_counter() - started, "loss": float(loss),
                          "evaluations": evaluations[0]})
    return {"curve": curve, "x": x.reshape(content_x.shape), "working": list(working)}


def engine_arm(config: TransferConfig, content: Path, style: Path, target: float | None, max_evaluations: int | None,
               threads: int, winograd: bool | None = None) -> dict[str, Any]:
    """One ``StyleTransfer.run`` until its loss at the final size is <= ``target`` or the budget
    ends; with neither (None), until the run ends by itself, as a user's does.

    Curve: (seconds, best loss so far) at each evaluation of the final size; ``finished``:
    the seconds, final loss and evaluations of a run that ended by itself."""
    st = StyleTransfer(config, provider="cpu", threads=threads, winograd=winograd)
    scales = len(st.scale_plan(images.load_image(content).size)[0])
    state = {"scale": 0, "best": float("inf"), "evaluations": 0, "reached": None}
    curve: list[dict] = []
    started = time.perf_counter()

    def callback(event) -> None:
        if isinstance(event, Prepared):
            state["scale"] = event.scale
        elif isinstance(event, Evaluated):
            state["evaluations"] += 1
            if state["scale"] != scales:
                return
            state["best"] = min(state["best"], event.loss)
            now = time.perf_counter() - started
            curve.append({"evaluation": state["evaluations"], "seconds": now, "loss": state["best"]})
            if target is not None and state["best"] <= target:
                state["reached"] = now
                raise _Reached
            if max_evaluations is not None and state["evaluations"] >= max_evaluations:
                raise _Reached

    finished = None
    try:
        result = st.run(content, style, callback=callback)
        finished = {"seconds": time.perf_counter() - started, "loss": result.iterations[-1].loss,
                    "evaluations": state["evaluations"], "iterations": len(result.iterations)}
    except _Reached:
        pass
    return {"curve": curve, "seconds_to_target": state["reached"], "evaluations": state["evaluations"],
            "finished": finished}


def _parse_arm(text: str) -> tuple[str, dict[str, Any]]:
    """``name:field=value,field=value`` (values as JSON where they parse) -> (name, overrides)."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(content: Path, style: Path, size: int, iterations: list[int], arms: dict[str, dict], repeats: int,
        threads: int, base: dict[str, Any], partial=None, seed_runs: list[dict] | None = None) -> dict[str, Any]:
    """Alternate the seed arm and every engine arm ``repeats`` times; the raw curves and the medians.

    An arm with ``finish`` true runs as a user's run does (its config's iterations and tol)
    to its own end; the others stop at the seed pipeline's deepest target or its evaluation
    count, on 10 x K iterations and tol 0. ``seed_runs``: the seed arm's runs of an earlier
    result, taken instead of running it again (one per repeat, reused in turn)."""
    runs: list[dict] = []
    deepest = max(iterations)
    for repeat in range(repeats):
        if seed_runs:
            seed_run = {**seed_runs[repeat % len(seed_runs)], "repeat": repeat, "reused": True}
        else:
            config = TransferConfig(**base, save_every=0, iterations=deepest, maxfun=SEED_MAXFUN)
            with CpuMonitor() as monitor:
                seed = seed_arm(config, content, style, size, deepest, threads)
            seed_run = {"arm": "seed", "repeat": repeat, "curve": seed["curve"], "contention": monitor.result,
                        "seconds_to": {str(k): seed["curve"][k - 1]["seconds"] for k in iterations},
                        "targets": {k: seed["curve"][k - 1]["loss"] for k in iterations}}
        runs.append(seed_run)
        targets = {int(k): t for k, t in seed_run["targets"].items()}
        for name, overrides in arms.items():
            finish = bool(overrides.get("finish"))
            fields = {k: v for k, v in overrides.items() if k not in ("winograd", "finish")}
            loop = {} if finish else {"iterations": 10 * deepest, "tol": 0}
            cfg = TransferConfig(**{**base, "save_every": 0, **loop, **fields})
            budget = seed_run["curve"][deepest - 1]["evaluations"]  # what the seed pipeline used
            with CpuMonitor() as monitor:
                result = engine_arm(cfg, content, style, None if finish else min(targets.values()),
                                    None if finish else budget, threads, overrides.get("winograd"))
            seconds_to = {str(k): next((p["seconds"] for p in result["curve"] if p["loss"] <= t), None)
                          for k, t in targets.items()}
            runs.append({"arm": name, "repeat": repeat, "curve": result["curve"], "contention": monitor.result,
                         "seconds_to": seconds_to, "overrides": overrides, "finished": result["finished"]})
            if partial:
                partial(runs)
    summary = {}
    for name in ["seed", *arms]:
        mine = [r for r in runs if r["arm"] == name]
        summary[name] = {
            str(k): _median([r["seconds_to"][str(k)] for r in mine]) for k in iterations}
        summary[name]["other_cpu_share"] = _median([r["contention"]["other_cpu_share"] for r in mine])
        if name == "seed":
            summary[name]["finished"] = {"seconds": _median([r["curve"][deepest - 1]["seconds"] for r in mine]),
                                         "loss": _median([r["curve"][deepest - 1]["loss"] for r in mine])}
        elif all(r["finished"] for r in mine):
            summary[name]["finished"] = {key: _median([r["finished"][key] for r in mine])
                                         for key in ("seconds", "loss", "evaluations", "iterations")}
    return {"content": str(content), "content_sha256": _sha256(content), "style": str(style),
            "style_sha256": _sha256(style), "size": size, "iterations": iterations, "repeats": repeats,
            "threads": threads, "base_config": base, "config_defaults": TransferConfig().to_dict(),
            "arms": {n: o for n, o in arms.items()}, "seed_reused": bool(seed_runs), "summary": summary, "runs": runs}


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _median(values: list[float | None]) -> float | None:
    """The median, or None when any run did not get there (a median of 'never' is not a time)."""
    if not values or any(v is None for v in values):
        return None
    return statistics.median(values)


def markdown(result: dict[str, Any]) -> str:
    ks = result["iterations"]
    seed = result["summary"]["seed"]
    head = " | ".join(f"to seed's K={k} loss (s) | / seed" for k in ks)
    lines = [f"{Path(result['content']).name} + {Path(result['style']).name}, {result['size']} px, "
             f"{result['repeats']} alternated repeats, medians; other processes' CPU share in the last column.",
             "", f"| arm | {head} | other CPU |", "|---|" + "---|---|" * len(ks) + "---|"]
    for name, row in result["summary"].items():
        cells = []
        for k in ks:
            t = row[str(k)]
            cells += ["not reached" if t is None else f"{t:.1f}",
                      "-" if t is None or not seed[str(k)] else f"{t / seed[str(k)]:.2f}"]
        share = row["other_cpu_share"]
        lines.append(f"| {name} | {' | '.join(cells)} | {'-' if share is None else f'{share:.0%}'} |")
    finished = {name: row["finished"] for name, row in result["summary"].items() if "finished" in row}
    if len(finished) > 1:
        deepest, end = max(ks), finished["seed"]
        lines += ["", f"Finished pictures: the seed pipeline after its K={deepest} iterations; an arm run to its own "
                  "end (its iterations and tol, as a user's run):", "",
                  "| arm | seconds | / seed | final loss | / seed's | evaluations |", "|---|---|---|---|---|---|"]
        for name, row in finished.items():
            lines.append(f"| {name} | {row['seconds']:.1f} | {row['seconds'] / end['seconds']:.2f} | {row['loss']:.4g} "
                         f"| {row['loss'] / end['loss']:.2f} | {_count(row.get('evaluations'))} |")
    if result.get("seed_reused"):
        lines += ["", "The seed arm's runs are reused from an earlier result of the same images, size and threads."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for run in result["runs"]:
        colour = colours.setdefault(run["arm"], f"C{len(colours)}")
        xs, ys = [p["seconds"] for p in run["curve"]], [p["loss"] for p in run["curve"]]
        ax.plot(xs, ys, color=colour, label=run["arm"] if run["repeat"] == 0 else None,
                marker="." if run["arm"] == "seed" else None)
    for k, t in next(r["targets"] for r in result["runs"] if "targets" in r).items():
        ax.axhline(t, color="grey", lw=0.6, ls="--")
        ax.text(ax.get_xlim()[1], t, f" seed K={k}", va="center", fontsize=7, color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the run began")
    ax.set_ylabel("total loss (best so far)")
    ax.set_title(f"{Path(result['content']).name} + {Path(result['style']).name}, {result['size']} px")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _reusable_seed_runs(args: argparse.Namespace) -> list[dict]:
    """The seed arm's runs of ``args.seed_from``; SystemExit when they measured something else."""
    earlier = json.loads(args.seed_from.read_text())
    mine = {"content_sha256": _sha256(args.content), "style_sha256": _sha256(args.style), "size": args.size,
            "threads": args.threads, "iterations": args.iterations}
    differs = [key for key, value in mine.items() if earlier.get(key) != value]
    if differs:
        raise SystemExit(f"{args.seed_from} measured another {', '.join(differs)}: run the seed pipeline again "
                         "(leave out --seed-from)")
    return [r for r in earlier["runs"] if r["arm"] == "seed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--content", type=Path, default=ROOT / "examples" / "content.jpg")
    parser.add_argument("--style", type=Path, default=ROOT / "examples" / "style.jpg")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=lambda s: [int(k) for k in s.split(",")], default=[10],
                        help="the seed loop's K values to measure against, e.g. 10,50")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of both arms (1: on a shared machine, spinning thread pools of both "
                             "libraries lose most to oversubscription)")
    parser.add_argument("--arm", action="append", default=[], help="name:field=value;field=value")
    parser.add_argument("--seed-from", type=Path,
                        help="an earlier result (.json) whose seed-pipeline runs to reuse (same images, size, "
                             "threads and K) instead of running that pipeline again")
    parser.add_argument("--out", type=Path, required=True, help="path stem of the .json, .md and .png written")
    args = parser.parse_args()
    arms = dict(_parse_arm(a) for a in args.arm)
    seed_runs = _reusable_seed_runs(args) if args.seed_from else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save = lambda runs: Path(f"{args.out}.partial.json").write_text(json.dumps(runs, indent=1) + "\n")
    result = run(args.content, args.style, args.size, args.iterations, arms, args.repeats, args.threads,
                 base={"size": args.size}, partial=save, seed_runs=seed_runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(markdown(result))
    plot(result, Path(f"{args.out}.png"))
    Path(f"{args.out}.partial.json").unlink(missing_ok=True)  # the whole result stands in for it now
    print(markdown(result))


if __name__ == "__main__":
    main()
