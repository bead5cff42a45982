"""Errors for people: real failures of the core turned into plain sentences; expected ones logged quietly."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from seg.errors import UserError, clean, is_expected, log_error, register_expected, user_message
from seg.io import MAX_PIXELS, ImageLoadError, load_image
from seg.labeling.names import UnsafePathError
from seg.labeling.workspace import LabelsRoot, Workspace, WorkspaceError
from seg.visitors import RunRefused, RunSlots, VisitorRegistry

RAW_WORDS = ("Error", "Warning", "Exception", "Traceback", "DOS attack", "long long", "Errno", "frame #")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: what a decompression bomb looks like
    to the decoder before it allocates anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def plain(message: str, *forbidden: str) -> None:
    assert message and message[0].isupper() and message[-1] in ".!?…", message
    for word in RAW_WORDS + forbidden:
        assert word not in message, (word, message)


def caught(fn, *args, **kwargs) -> BaseException:
    try:
        fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - the point is to look at whatever it raises
        return err
    raise AssertionError("expected an exception")


def test_oversized_images_are_told_the_pixel_limit(tmp_path: Path):
    limit = f"{MAX_PIXELS / 1e6:.0f} megapixels"
    # Beyond PIL's own bomb limit: PIL warns (raised as an error) before our check can run.
    bomb = caught(load_image, png_header(20_000, 20_000))
    assert isinstance(bomb, ImageLoadError) and "ecompression" in str(bomb)  # the raw text a person must not see
    message = user_message(bomb)
    plain(message, "ecompression", "bomb")
    assert limit in message and "400 megapixels" in message
    # PIL's warning band (its limit up to twice it) reads the same.
    warned = caught(load_image, png_header(10_000, 10_000))
    assert "ecompression" in str(warned)
    message = user_message(warned)
    plain(message, "ecompression", "bomb")
    assert limit in message and "100 megapixels" in message
    # Between our limit and PIL's: our own check.
    large = caught(load_image, png_header(9_000, 8_000))
    message = user_message(large)
    plain(message)
    assert limit in message and "9000x8000" in message


def test_unreadable_and_truncated_images(tmp_path: Path):
    path = tmp_path / "secret-folder" / "holiday.png"
    path.parent.mkdir()
    path.write_bytes(b"this is no image at all")
    for err in (
        caught(load_image, str(path)),
        caught(load_image, b"\xff\xd8\xff\xe0 truncated jpeg"),
        caught(load_image, b""),
    ):
        assert isinstance(err, ImageLoadError) and is_expected(err)
        plain(user_message(err), str(tmp_path), "secret-folder", "cannot identify")


def test_huge_numbers_from_a_form_are_not_shown_as_library_text():
    for err in (
        caught(torch.manual_seed, 2**80),
        caught(torch.zeros, 2**70),
        caught(np.uint8, 300),
        caught(int, float("inf")),
        caught(int, float("nan")),
    ):
        assert is_expected(err), repr(err)
        message = user_message(err)
        plain(message, "unpack", "c10", "/")
        assert "number" in message


def test_workspace_refusals_keep_their_words_but_lose_server_paths(tmp_path: Path):
    foreign = tmp_path / "server" / "bin"
    foreign.mkdir(parents=True)
    (foreign / "test").write_text("x")
    ws = Workspace(tmp_path / "server" / "ws")
    refusals = [
        caught(Workspace, foreign),
        caught(ws.load, "x" * 5000),
        caught(ws.check_trainable),
        caught(LabelsRoot(tmp_path / "labels").create, "/etc/passwd"),
        caught(ws.import_folder, "/etc", import_roots=[tmp_path / "server"]),
        caught(RunSlots().check_stop, "session:x"),
    ]
    for err in refusals:
        assert isinstance(err, (WorkspaceError, UnsafePathError, RunRefused)) and is_expected(err)
        message = user_message(err)
        plain(message, str(tmp_path), "/server/")
        assert len(message) <= 301
    assert "neither empty nor a labeling workspace" in user_message(refusals[0])


def test_quota_refusal_reads_as_a_sentence(tmp_path: Path):
    space = VisitorRegistry(tmp_path / "v", max_images=1).space("session:q")
    space.workspace.import_image(np.zeros((8, 8, 3), np.uint8), name="one")
    err = caught(space.workspace.import_image, np.ones((8, 8, 3), np.uint8), name="two")
    plain(user_message(err), str(tmp_path))
    assert "most allowed here is 1" in user_message(err)


def test_clean_strips_paths_class_names_and_errno():
    text = (
        "cannot open /tmp/gradio/4f1c/photo.png: [Errno 2] No such file or directory: '/srv/app/x.png'; "
        "see C:\\Users\\bob\\a.png or ~/.ssh/id_rsa (PIL.UnidentifiedImageError: bad); train/ and val/, 1/2"
    )
    out = clean(text)
    assert out.startswith("Cannot open photo.png: No such file or directory: 'x.png'")
    for gone in ("/tmp", "/srv", "Users", ".ssh", "Errno", "UnidentifiedImageError", "PIL."):
        assert gone not in out
    assert "a.png" in out and "id_rsa" in out and "train/ and val/, 1/2" in out
    assert len(clean("word " * 1000)) <= 301 and clean("") == "" and clean("done!") == "Done!"


def test_unexpected_errors_get_a_generic_sentence_and_a_logged_traceback(caplog: pytest.LogCaptureFixture):
    log = logging.getLogger("seg.test_errors")
    bug = caught(lambda: {}["missing"])
    with caplog.at_level(logging.INFO, logger="seg.test_errors"):
        message = log_error(log, bug, "saving the mask")
        refused = log_error(log, UserError("Pick an image first"), "saving the mask")
    plain(message, "missing", "Key")
    assert "saving the mask" in message and refused == "Pick an image first."
    bug_record, user_record = caplog.records
    assert bug_record.levelno == logging.ERROR and bug_record.exc_info is not None
    assert "KeyError" in caplog.text and "Traceback" in caplog.text  # the operator gets the details
    assert user_record.levelno == logging.INFO and user_record.exc_info is None
    assert "Pick an image first" in user_record.getMessage()


def test_register_expected_for_types_defined_above_the_core():
    class Unavailable(KeyError):
        def __str__(self) -> str:
            return "the model unet is not available: its weights are missing"

    err = Unavailable("unet")
    assert not is_expected(err) and "Something went wrong" in user_message(err)
    register_expected(Unavailable)
    assert is_expected(err) and user_message(err) == "The model unet is not available: its weights are missing."
