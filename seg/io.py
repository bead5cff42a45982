"""Reading untrusted images and writing files atomically.

Uploads may be huge, corrupt, grayscale, RGBA, 16-bit, palette, CMYK, EXIF-rotated
or not images at all. ``load_image`` turns all of them into an RGB uint8 array or
raises ``ImageLoadError`` with a message fit to show a user.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from seg.classes import flat_palette

#: Refuse images with more pixels than this outright (decompression-bomb guard).
MAX_PIXELS = 64_000_000
#: Default longest side after loading; larger images are downscaled (aspect kept).
DEFAULT_MAX_SIDE = 2048
#: Refuse files larger than this many bytes before even decoding.
MAX_BYTES = 50 * 1024 * 1024


class ImageLoadError(ValueError):
    """The input is not a usable image; ``str(err)`` is a user-facing explanation."""


def _open(source) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(_array_to_uint8(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > MAX_BYTES:
            raise ImageLoadError(f"file is {len(data) / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB")
        return Image.open(io.BytesIO(data))
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"no such file: {path.name}")
    size = path.stat().st_size
    if size == 0:
        raise ImageLoadError(f"{path.name} is empty")
    if size > MAX_BYTES:
        raise ImageLoadError(f"{path.name} is {size / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB")
    return Image.open(path)


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit / float arrays to uint8; keep uint8 as is."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.nan_to_num(arr.astype(np.float64))
        if finite.max(initial=0) <= 1.0:
            finite = finite * 255.0
        return np.clip(finite, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535 if arr.max(initial=0) > 255 else 255
        return (arr.astype(np.float64) * (255.0 / top)).round().clip(0, 255).astype(np.uint8)
    raise ImageLoadError(f"unsupported array type {arr.dtype}")


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            arr = _array_to_uint8(arr)
        else:
            arr = arr.astype(np.float64) / max(65535 if arr.max(initial=0) > 255 else 255, 1) * 255
            arr = arr.round().clip(0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def check_rgb(image: object) -> np.ndarray:
    """``image`` itself when it is what the predictors take, an (H, W, 3) uint8 RGB array with pixels;
    otherwise a ValueError that says what it is. A float or 16-bit array would be scaled as if it were
    8-bit and answered wrongly without a word; ``load_image`` converts any of them."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an (H,W,3) uint8 RGB image (numpy array), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(
            f"expected an (H,W,3) uint8 RGB image, got {image.shape} {image.dtype} (seg.io.load_image converts)"
        )
    return image


def load_image(source, max_side: int | None = DEFAULT_MAX_SIDE) -> np.ndarray:
    """Decode any image-like input to an (H, W, 3) uint8 RGB array.

    EXIF orientation is applied, alpha is composited on white, 16-bit data is scaled,
    and images whose longest side exceeds ``max_side`` are downscaled.
    """
    if source is None:
        raise ImageLoadError("no image was given")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(source)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageLoadError(f"image is {w}x{h} ({w * h / 1e6:.0f} MP); the limit is {MAX_PIXELS / 1e6:.0f} MP")
            if w < 1 or h < 1:
                raise ImageLoadError("image has no pixels")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if max_side and max(w, h) > max_side:
                img.draft("RGB", (max_side, max_side))  # cheap JPEG downscale while decoding
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(img)
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"not a readable image ({type(err).__name__}: {err})") from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as err:
        raise ImageLoadError(f"the image file is corrupt or truncated ({err})") from None
    h, w = rgb.shape[:2]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    return np.array(rgb, dtype=np.uint8, order="C", copy=True)  # writable, owned by the caller


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once at import: os.umask is process-wide, so probing it later from a server thread would race.
_FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; keep the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def label_to_png_image(label: np.ndarray, palette: list[tuple[int, int, int]]) -> Image.Image:
    """Palette ('P' mode) image whose pixel values are the class ids."""
    arr = np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"label must be 2-D, got shape {arr.shape}")
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise ValueError("class ids must be in 0..255 for a palette PNG")
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(flat_palette(palette))
    return img


def save_label_png(path: str | Path, label: np.ndarray, palette: list[tuple[int, int, int]]) -> None:
    atomic_write_bytes(path, encode_png(label_to_png_image(label, palette)))


def read_label_png(path: str | Path) -> np.ndarray:
    """Class ids from a palette or greyscale PNG (never the palette colours)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16", "1"):
            raise ValueError(f"{Path(path).name}: label PNG must hold class ids (mode P or L), got {img.mode}")
        return np.asarray(img).astype(np.uint8)


def iter_images(paths: list[str], failures: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(path, RGB at full size) for each readable image; unreadable ones are reported on stderr
    and appended to ``failures`` so a batch command carries on (the predict commands use this)."""
    for path in paths:
        try:
            yield path, load_image(path, max_side=None)
        except ImageLoadError as err:
            print(f"skip {path}: {err}", file=sys.stderr)
            failures.append(path)


def save_instance_png(path: Path, instances: np.ndarray) -> None:
    """8-bit greyscale ids, or 16-bit when there are more than 255 instances (atomic write)."""
    if instances.max(initial=0) > 65535:
        raise ValueError("more than 65535 instances cannot be stored in a 16-bit PNG")
    if instances.max(initial=0) > 255:
        img = Image.fromarray(instances.astype(np.uint16))  # mode I;16
    else:
        img = Image.fromarray(instances.astype(np.uint8), mode="L")
    atomic_write_bytes(path, encode_png(img))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (archives and checkpoints are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
