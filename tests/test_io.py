"""Untrusted images: every odd input decodes or fails with a clear ImageLoadError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from seg.io import ImageLoadError, atomic_write_bytes, load_image, read_label_png, save_label_png


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_modes_become_rgb_uint8():
    gray = Image.fromarray(np.full((10, 12), 100, np.uint8), "L")
    assert load_image(_png_bytes(gray)).shape == (10, 12, 3)
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent -> white background
    assert load_image(_png_bytes(rgba))[0, 0].tolist() == [255, 255, 255]
    deep = Image.fromarray(np.full((6, 6), 65535, np.uint16))
    out = load_image(_png_bytes(deep))
    assert out.dtype == np.uint8 and out[0, 0, 0] == 255
    assert load_image(np.zeros((5, 5, 3), np.float32)).dtype == np.uint8


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    data = _png_bytes(img, format="JPEG", exif=exif.tobytes())
    assert load_image(data).shape[:2] == (40, 20)


def test_large_images_are_downscaled():
    big = Image.new("RGB", (4000, 1000))
    assert max(load_image(_png_bytes(big), max_side=1000).shape[:2]) == 1000


@pytest.mark.parametrize(
    "payload,match",
    [
        (b"", "corrupt|readable|no image|empty"),
        (b"hello, not an image", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "corrupt|readable"),
    ],
)
def test_garbage_is_a_clear_error(payload, match):
    with pytest.raises(ImageLoadError, match=match):
        load_image(payload)


def test_truncated_jpeg_and_missing_file(tmp_path):
    data = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)), format="JPEG")
    with pytest.raises(ImageLoadError):
        load_image(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError):
        load_image(None)


def test_label_png_round_trip_and_atomic_write(tmp_path):
    label = np.arange(12, dtype=np.uint8).reshape(3, 4) % 9
    save_label_png(tmp_path / "l.png", label, [(i, i, i) for i in range(9)])
    np.testing.assert_array_equal(read_label_png(tmp_path / "l.png"), label)
    atomic_write_bytes(tmp_path / "f.bin", b"abc")
    assert (tmp_path / "f.bin").read_bytes() == b"abc"
    assert not list(tmp_path.glob(".f.bin.*"))  # no temp files left behind
