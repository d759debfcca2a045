"""Command to first evaluation: what `nst stylize CONTENT STYLE -o OUT` (no tuning flags, 512 px)
does before its first evaluation, timed from a fresh process's start.

Each repeat is a new Python process that imports the CLI (``engine.cli``, as the command
does) and starts the run the command starts (``TransferConfig(size=512)``, all cores, no
output file), cancelled once its first evaluation is done. From 128 px up the default run
begins at half the size (config.AUTO_SCALES_FROM), so its first evaluation is at that size;
the size is reported (``--scales 1``: the output size from the start). Reported, from the
process's start: the imports done, the first scale ready (images loaded, graphs found,
sessions open, targets computed: the first evaluation starts), and the first evaluation done;
medians of the repeats, with the CPU share other processes took. ``--checkout`` times another
checkout of the engine (its ``engine`` package and ``exported_models``) with the same child,
for a before/after.

    python -m benchmarks.startup --repeats 5 --out benchmarks/results/<date>-startup
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .harness import CpuMonitor

ROOT = Path(__file__).resolve().parent.parent

# Run by ``python -c`` in the checkout timed, with the process's start time as argv[1].
CHILD = """
import json, sys, threading, time
spawned = float(sys.argv[1])
import engine.cli
from engine import Evaluated, Prepared, StyleTransfer, TransferConfig
imported = time.time()
marks, stop = {}, threading.Event()

def callback(event):
    if isinstance(event, Prepared) and "ready" not in marks:
        marks.update(ready=time.time(), size=[event.width, event.height])
    elif isinstance(event, Evaluated) and "done" not in marks:
        marks["done"] = time.time()
        stop.set()

config = TransferConfig(size=int(sys.argv[4]), scales=json.loads(sys.argv[5]))
StyleTransfer(config).run(sys.argv[2], sys.argv[3], callback=callback, cancel=stop)
print(json.dumps({"imports_s": imported - spawned, "ready_s": marks["ready"] - spawned,
                  "first_eval_done_s": marks["done"] - spawned, "size": marks["size"], "init": config.init}))
"""


def measure(checkout: Path, content: Path, style: Path, size: int, scales: int | None) -> dict:
    with CpuMonitor() as monitor:
        done = subprocess.run([sys.executable, "-c", CHILD, repr(time.time()), str(content), str(style), str(size),
                               json.dumps(scales)],
                              cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the child failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "other_cpu_share": monitor.result["other_cpu_share"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--content", type=Path, default=ROOT / "examples" / "content.jpg")
    parser.add_argument("--style", type=Path, default=ROOT / "examples" / "style.jpg")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scales", type=int, default=None, help="--scales of the run (default: automatic)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the engine checkout to time (default: this one)")
    parser.add_argument("--out", type=Path, required=True, help="path stem of the .json and .md written")
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    sources = (checkout, args.content.resolve(), args.style.resolve(), args.size, args.scales)
    measure(*sources)  # graphs built, model verified
    runs = [measure(*sources) for _ in range(args.repeats)]
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    medians = {key: statistics.median(r[key] for r in runs) for key in ("imports_s", "ready_s", "first_eval_done_s",
                                                                       "other_cpu_share")}
    result = {"checkout_commit": commit, "content": str(args.content), "style": str(args.style), "size": args.size,
              "scales": args.scales,
              "cpus": os.cpu_count(), "repeats": args.repeats, "medians": medians, "runs": runs}
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    width, height = runs[0]["size"]
    Path(f"{args.out}.md").write_text(
        f"`nst stylize --size {args.size}{'' if args.scales is None else f' --scales {args.scales}'}` with no other "
        f"tuning flags (init {runs[0]['init']}), its first evaluation at "
        f"{width}x{height} px, engine at {commit}, "
        f"{os.cpu_count()} CPUs; seconds from a fresh process's start, median of {args.repeats}:\n\n"
        "| imports done | ready (first evaluation starts) | first evaluation done | others' CPU |\n|---|---|---|---|\n"
        f"| {medians['imports_s']:.2f} | {medians['ready_s']:.2f} | {medians['first_eval_done_s']:.2f} "
        f"| {medians['other_cpu_share']:.0%} |\n")
    print(Path(f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
