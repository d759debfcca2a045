"""Per-evaluation CPU seconds, one thread each, interleaved: the engine direct, with Winograd, and PyTorch eager.

One thread and process CPU time (not wall time) because the machine these numbers come from is
shared: a spinning thread pool loses most of its wall time to oversubscription, and CPU time
counts only this process's work. Also checks both graphs against PyTorch (loss, gradient L2).

    python -m benchmarks.winograd_cpu 256,512 5 benchmarks/results/2026-12-02-winograd.json
"""
import json
import resource
import statistics
import sys
import time

import numpy as np
from benchmarks.harness import CpuMonitor
from benchmarks.torch_reference import TorchLoss, check_torch
from engine import StyleTransfer, TransferConfig
from engine.models.store import find_model
from engine.models.weights import load_weights
def cpu(): r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
out = {}
for size in map(int, sys.argv[1].split(",")):
    cfg = TransferConfig(size=size)
    probs = {w: StyleTransfer(cfg, provider="cpu", threads=1, winograd=w).prepare(
        "examples/content.jpg", "examples/style.jpg") for w in (False, True)}
    ref = TorchLoss(cfg, load_weights(find_model("vgg16"), "vgg16").layers, 1)
    ref.set_targets(probs[False].content, probs[False].styles)
    x = probs[False].initial_image() + np.random.default_rng(0).normal(0, 10, probs[False].shape)
    checks = {str(w): check_torch(p, ref, x) for w, p in probs.items()}
    arms = {"direct": lambda: probs[False].loss_and_grad(x), "winograd": lambda: probs[True].loss_and_grad(x),
            "torch": lambda: ref.loss_and_grad(x)}
    times, walls = {k: [] for k in arms}, {k: [] for k in arms}
    for f in arms.values():
        f()  # warm-up
    with CpuMonitor() as mon:
        for r in range(int(sys.argv[2])):
            for k, f in arms.items():
                c, t = cpu(), time.perf_counter()
                f()
                times[k].append(cpu() - c)
                walls[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out[size] = {"working": list(probs[False].shape[2:]), "cpu_s": times, "wall_s": walls, "median_cpu_s": med,
                 "winograd/torch": med["winograd"] / med["torch"], "direct/torch": med["direct"] / med["torch"],
                 "winograd/direct": med["winograd"] / med["direct"], "contention": mon.result,
                 "torch_check": {k: {kk: v[kk] for kk in ("loss_rel_err", "grad_rel_err")} for k, v in checks.items()}}
    print(size, json.dumps({k: v for k, v in out[size].items() if k not in ("cpu_s", "wall_s")}), flush=True)
json.dump(out, open(sys.argv[3], "w"), indent=1)
