"""The split rule shared by every dataset: a hash of the image id, never a shuffle.

An image's split depends only on its own id, so adding or removing images never
moves another image between splits.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def hash_fraction(image_id: str) -> float:
    """A number in [0, 1) that depends only on the id (first 8 bytes of its SHA-1)."""
    digest = hashlib.sha1(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(image_id: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """``train`` if hash < f_train, ``val`` if < f_train + f_val, else ``test``."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    h = hash_fraction(image_id)
    if h < fractions[0]:
        return "train"
    if h < fractions[0] + fractions[1]:
        return "val"
    return "test"
