#!/usr/bin/env python3
"""Benchmark one loss+gradient evaluation: the same as `nst bench`.

    python scripts/bench.py                                # 128, 256, 512 px; vs PyTorch when installed
    python scripts/bench.py --sizes 128,256,512,1024 --repeats 5 --no-torch
    pip install -e '.[bench]'                              # the PyTorch comparison (CPU build of torch)

Results: benchmarks/results/<date>-<cpu|cuda>.json and .md (see --out-dir).
"""
import sys

from engine.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]], prog_name="bench.py")
