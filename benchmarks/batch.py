"""What a batch costs, written to benchmarks/results/<date>-batch.{json,md}:

- per-job overhead (wall time less the time of the job's own iterations) of 128 px jobs run
  one after another on one reused engine, against a fresh ``nst stylize`` process per job;
- throughput (images/minute) of 8 jobs at 128 px: the local runner against the Ray runner on a
  local cluster of this machine's cores.

Each measurement carries the share of the machine's CPU time other processes took meanwhile
(the harness's CpuMonitor): on a shared machine, read the numbers with it.

    python -m benchmarks.batch [--jobs 8] [--size 128] [--iterations 2] [--maxfun 10]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import CpuMonitor, cpu_count, machine_info, wait_for_quiet
from engine import Engine, IterationDone, preset_config
from engine.batch.jobs import Job
from engine.batch.runner import LocalRunner, run_batch

ROOT = Path(__file__).resolve().parent.parent
CONTENT, STYLE = ROOT / "examples" / "content.jpg", ROOT / "examples" / "style.jpg"


def jobs(count: int, out: Path, settings: dict) -> list[Job]:
    """``count`` jobs of the bundled pair, each with its own seed (so each is its own work)."""
    return [Job(f"job{k}.png", CONTENT, (STYLE,), out / f"job{k}.png", preset_config(**settings, seed=k))
            for k in range(count)]


def overhead(settings: dict, count: int, threads: int) -> dict:
    """Per job: wall seconds and seconds outside its iterations, reused engine vs a process each."""
    config = preset_config(**settings)
    engine = Engine(provider="cpu", threads=threads)
    reused = []
    with tempfile.TemporaryDirectory() as folder, CpuMonitor() as reused_load:
        for k in range(count + 1):  # the first opens the sessions: reported apart
            iterations = []
            started = time.perf_counter()
            engine.run(config.replace(seed=k), CONTENT, STYLE, Path(folder) / f"r{k}.png",
                       callback=lambda e: iterations.append(e.seconds) if isinstance(e, IterationDone) else None)
            wall = time.perf_counter() - started
            reused.append({"wall_s": wall, "iterations_s": sum(iterations), "overhead_s": wall - sum(iterations)})
    fresh = []
    with tempfile.TemporaryDirectory() as folder, CpuMonitor() as fresh_load:
        for k in range(count):
            output = Path(folder) / f"f{k}.png"
            command = [sys.executable, "-c", "from engine.cli import main; main()", "stylize", str(CONTENT),
                       str(STYLE), "-o", str(output), "--preset", settings["name"], "--size", str(settings["size"]),
                       "--iterations", str(settings["iterations"]), "--maxfun", str(settings["maxfun"]),
                       "--save-every", "0", "--seed", str(k), "--provider", "cpu", "--threads", str(threads), "-q"]
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            wall = time.perf_counter() - started
            record = json.loads(output.with_suffix(".json").read_text())
            iterations = sum(it["seconds"] for it in record["iterations"])
            fresh.append({"wall_s": wall, "iterations_s": iterations, "overhead_s": wall - iterations})
    return {"first_reused_job": reused[0], "reused": reused[1:], "fresh_process": fresh,
            "reused_other_cpu_share": reused_load.result["other_cpu_share"],
            "fresh_other_cpu_share": fresh_load.result["other_cpu_share"],
            "mean_overhead_reused_s": _mean(r["overhead_s"] for r in reused[1:]),
            "mean_overhead_fresh_s": _mean(r["overhead_s"] for r in fresh)}


def throughput(settings: dict, count: int) -> dict:
    """Images/minute of ``count`` jobs: local runner (all cores in one engine) and Ray."""
    import ray

    from engine.batch.ray_runner import RayRunner

    cores = cpu_count()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        runs = {"local": lambda out: LocalRunner(Engine(provider="cpu", threads=cores))}
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        runs[f"ray, {cores} workers of 1 CPU"] = lambda out: RayRunner(
            cpus_per_job=1, scratch=str(out / "scratch"), engine_options=dict(provider="cpu", threads=1))
        runs[f"ray, 1 worker of {cores} CPUs"] = lambda out: RayRunner(
            cpus_per_job=cores, scratch=str(out / "scratch"), engine_options=dict(provider="cpu", threads=cores))
        try:
            for name, make in runs.items():
                out = Path(folder) / name.replace(" ", "_").replace(",", "")
                before = wait_for_quiet(0.0, window=2.0)["other_cpu_share"]
                with CpuMonitor() as load:
                    started = time.perf_counter()
                    summary = run_batch(jobs(count, out, settings), out, make(out))
                    wall = time.perf_counter() - started
                assert summary.complete, summary.counts
                results[name] = {"wall_s": wall, "images_per_minute": count / wall * 60,
                                 "other_cpu_share": load.result["other_cpu_share"], "other_cpu_share_before": before}
        finally:
            ray.shutdown()
    return {"runs": results, "ray_local_cluster_start_s": ray_start}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def markdown(result: dict) -> str:
    s, o, t = result["settings"], result["overhead"], result["throughput"]
    lines = [f"# Batch, {result['date']}: {s['name']} at {s['size']} px, {s['iterations']} x {s['maxfun']} evaluations "
             f"per job, CPU", "", f"{result['machine']['cpu']}, {result['machine']['cores']} cores.", "",
             "## Per-job overhead (wall time less the job's iterations)", "",
             "| | jobs | mean wall s | mean overhead s | other processes' CPU share |", "|---|---|---|---|---|"]
    for key, share in (("reused", "reused_other_cpu_share"), ("fresh_process", "fresh_other_cpu_share")):
        rows = o[key]
        lines.append(f"| {'one reused engine' if key == 'reused' else 'a fresh nst process per job'} | {len(rows)} | "
                     f"{_mean(r['wall_s'] for r in rows):.2f} | {_mean(r['overhead_s'] for r in rows):.2f} | "
                     f"{o[share]:.0%} |")
    first = o["first_reused_job"]
    lines += ["", f"The engine's first job (sessions opened): {first['wall_s']:.2f} s wall, "
                  f"{first['overhead_s']:.2f} s overhead.", "",
              f"## Throughput, {result['jobs']} jobs", "",
              "| runner | wall s | images/minute | other processes' CPU share (2 s before) |", "|---|---|---|---|"]
    for name, row in t["runs"].items():
        lines.append(f"| {name} | {row['wall_s']:.1f} | {row['images_per_minute']:.1f} | "
                     f"{row['other_cpu_share']:.0%} ({row['other_cpu_share_before']:.0%}) |")
    lines += ["", "Ray's workers are not children of the measuring process, so during the Ray runs their own CPU time "
              "counts as other processes'; the share in the 2 s before each run says how busy the machine was.",
              f"Starting the local Ray cluster: {t['ray_local_cluster_start_s']:.1f} s (not in the times above).",
              f"Load average before: {', '.join(f'{v:.1f}' for v in result['load_average_before'])}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--overhead-jobs", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--maxfun", type=int, default=10)
    parser.add_argument("--preset", default="starry_tubingen")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    settings = dict(name=args.preset, size=args.size, iterations=args.iterations, maxfun=args.maxfun, save_every=0)
    threads = cpu_count()
    result = {"date": datetime.date.today().isoformat(), "settings": settings, "jobs": args.jobs,
              "machine": machine_info(threads), "load_average_before": os.getloadavg()}
    result["overhead"] = overhead(settings, args.overhead_jobs, threads)
    result["throughput"] = throughput(settings, args.jobs)
    stem = args.out_dir / f"{result['date']}-batch"
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
