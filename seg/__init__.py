"""SegLab: semantic and instance segmentation workbench (core package, no UI imports)."""

import os

# PyTorch's OpenMP workers spin for about 300,000 pause loops (several milliseconds) after every
# parallel operation, on the cores that a serving runtime (OpenVINO, ONNX Runtime) needs next: a
# U-Net served by OpenVINO int8 took 18 ms per call instead of 14 (docs/experiments.md, "OpenMP's
# spin"). A shorter spin leaves eager PyTorch and training as fast (within noise). libgomp reads it
# when torch loads, so it applies when seg is imported first (app.py, the seglab command); a value
# already set is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

__version__ = "0.1.0"
