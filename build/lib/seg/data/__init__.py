"""Datasets: Stanford Background (semantic) and, in seg.instances, Penn-Fudan."""
