"""SegLab: semantic and instance segmentation workbench (core package, no UI imports)."""

__version__ = "0.1.0"
