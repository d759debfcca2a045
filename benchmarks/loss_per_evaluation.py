"""Loss after each 20 evaluations of the engine's optimiser choices, one thread each, on the bundled pair.

Counts evaluations, not seconds: on a shared machine only those compare.

    python -m benchmarks.loss_per_evaluation SIZE ITERATIONS
"""
import json, sys
from engine import StyleTransfer, TransferConfig
size, its = int(sys.argv[1]), int(sys.argv[2])
out = {}
for name, kw in [("seed loop, noise", dict(optimizer_mode="seed", init="noise")),
                 ("continuous, noise", dict(optimizer_mode="continuous", init="noise")),
                 ("continuous, content", dict(optimizer_mode="continuous", init="content"))]:
    config = TransferConfig(size=size, iterations=its, save_every=0, **kw)
    r = StyleTransfer(config, provider="cpu", threads=1).run("examples/content.jpg", "examples/style.jpg")
    out[name] = [(it.evaluations, it.loss) for it in r.iterations]
    print(name, ["%.3g" % l for _, l in out[name]], flush=True)
print(json.dumps(out))
