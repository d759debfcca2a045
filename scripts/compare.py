#!/usr/bin/env python3
"""The README's two comparisons, on the bundled example, written to benchmarks/results/:

- optimizer modes: loss against evaluations, `seed` (L-BFGS-B restarted every iteration)
  against `continuous` (one run), same budget, 256 px;
- multi-scale: time to reach a given loss at 512 px, one scale against coarse to fine.

    python scripts/compare.py [--out-dir benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from engine import IterationDone, StyleTransfer, preset_config
from engine.io.visuals import loss_curves

ROOT = Path(__file__).resolve().parent.parent
CONTENT, STYLE = ROOT / "examples" / "content.jpg", ROOT / "examples" / "style.jpg"


def run(**settings) -> list[dict]:
    """The run's iterations, each with the wall seconds since the run began."""
    started, rows = time.perf_counter(), []

    def record(event) -> None:
        if isinstance(event, IterationDone):
            rows.append({**event.record(), "elapsed": time.perf_counter() - started})

    StyleTransfer(preset_config("starry_tubingen", save_every=0, **settings)).run(CONTENT, STYLE, callback=record)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    out = parser.parse_args().out_dir
    stem = out / f"{datetime.date.today().isoformat()}-compare"
    modes = {mode: run(size=256, iterations=10, maxfun=20, optimizer_mode=mode) for mode in ("seed", "continuous")}
    loss_curves(modes, Path(f"{stem}-optimizer-modes.png"), title="starry_tubingen, 256 px, from noise")

    single = run(size=512, iterations=8, maxfun=20)
    multi = run(size=512, scales=2, scale_iterations=(6, 4), maxfun=20)
    target = single[-1]["loss"]
    final = [row for row in multi if row["size"] == single[-1]["size"]]
    reached = next((row["elapsed"] for row in final if row["loss"] <= target), None)
    results = {"optimizer_modes": modes, "single_scale": single, "multi_scale": multi,
               "target_loss": target, "single_seconds": single[-1]["elapsed"], "multi_seconds_to_target": reached}
    Path(f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| evaluations | seed mode loss | continuous mode loss |", "|---|---|---|"]
    totals = {m: 0 for m in modes}
    for seed_row, cont_row in zip(modes["seed"], modes["continuous"]):
        totals["seed"] += seed_row["evaluations"]
        lines.append(f"| {totals['seed']} | {seed_row['loss']:.3e} | {cont_row['loss']:.3e} |")
    lines += ["", f"512 px, one scale: loss {target:.3e} after {sum(r['evaluations'] for r in single)} evaluations, "
              f"{single[-1]['elapsed']:.0f} s.",
              f"512 px, two scales ({multi[0]['size'][0]}x{multi[0]['size'][1]} then 512): "
              + (f"the same loss reached after {reached:.0f} s" if reached else "did not reach that loss")
              + f"; final loss {multi[-1]['loss']:.3e} after {multi[-1]['elapsed']:.0f} s."]
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
