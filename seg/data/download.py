"""``python -m seg download sbd|pennfudan``: fetch, verify and unpack an official archive.

The archives' own SHA-256 could not be pinned (they were out of reach when this was
written), so integrity is checked on the unpacked content: the SHA-256 of sentinel
files (the same ones the project's data README lists) and the expected file counts.
Pass ``--sha256`` to pin the archive itself. Offline, it fails at once with a message
that names the URL and the folder to put the files in by hand.
"""

from __future__ import annotations

import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from seg.config import DATASET_FOLDERS, data_root
from seg.io import sha256_file


class DownloadError(RuntimeError):
    """Download, verification or unpacking failed; the message says what to do instead."""


@dataclass(frozen=True)
class DatasetSource:
    name: str
    url: str
    archive: str
    folder: str
    #: relative path -> sha256 of files that must be in the unpacked folder
    sentinels: dict[str, str]
    #: (glob, minimum count) of files expected after unpacking
    min_counts: tuple[tuple[str, int], ...]


SOURCES = {
    "sbd": DatasetSource(
        "sbd",
        "http://dags.stanford.edu/data/iccv09Data.tar.gz",
        "iccv09Data.tar.gz",
        DATASET_FOLDERS["sbd"],
        {
            "images/0000051.jpg": "5d1704ca99c5f44e901e912c8a09071e2ecc13fae31cf1b5759c6bd75f386f4a",
            "labels/0000051.regions.txt": "da5c9c165c4c732b45f6b13f20fd3259041d6ad12871f6090c116060d834af33",
        },
        (("images/*.jpg", 715), ("labels/*.regions.txt", 715)),
    ),
    "pennfudan": DatasetSource(
        "pennfudan",
        "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip",
        "PennFudanPed.zip",
        DATASET_FOLDERS["pennfudan"],
        {
            "PNGImages/FudanPed00001.png": "130e9f9121b88ab69105f1685ce17625e97d0ef590adb9b9f076f62fc08b3343",
            "PedMasks/FudanPed00001_mask.png": "21ce5211d6745a43c0d1a31d2574810bb592971e1207b0b4a0b22e350daa6671",
        },
        (("PNGImages/*.png", 170), ("PedMasks/*_mask.png", 170)),
    ),
}


def _manual_hint(src: DatasetSource, root: Path) -> str:
    return (
        f"Download {src.url} by hand and unpack it so that {root / src.folder} exists "
        f"(or set SEG_DATA_DIR to the folder that holds {src.folder}/)."
    )


def _fetch(src: DatasetSource, dest: Path, timeout: float, root: Path) -> None:
    """torchvision's ``download_url`` (redirects, progress bar), bounded by ``timeout`` per socket wait."""
    from torchvision.datasets.utils import download_url

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        download_url(src.url, str(dest.parent), dest.name)
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, RuntimeError) as err:
        dest.unlink(missing_ok=True)
        raise DownloadError(f"could not download {src.url}: {err}. {_manual_hint(src, root)}") from None
    finally:
        socket.setdefaulttimeout(previous)


def _safe_extract(archive: Path, target: Path) -> None:
    """Unpack refusing absolute paths, '..' and links that leave ``target``.

    Zip archives go through torchvision's ``extract_archive`` (``zipfile`` drops absolute and
    '..' parts itself); tar archives use tarfile's ``data`` filter, which torchvision's helper
    does not apply."""
    target.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".zip":
        from torchvision.datasets.utils import extract_archive

        extract_archive(str(archive), str(target))
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(target, filter="data")


def verify(folder: Path, src: DatasetSource) -> None:
    for rel, expected in src.sentinels.items():
        path = folder / rel
        if not path.is_file():
            raise DownloadError(f"{folder} is incomplete: {rel} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise DownloadError(f"checksum mismatch for {rel}: {actual} != {expected}")
    for pattern, minimum in src.min_counts:
        count = len(list(folder.glob(pattern)))
        if count < minimum:
            raise DownloadError(f"{folder} has {count} files matching {pattern}, expected {minimum}")


def download(name: str, root: str | Path | None = None, timeout: float = 15.0, sha256: str | None = None) -> Path:
    """Fetch, check and unpack dataset ``name`` into the data root; returns its folder."""
    if name not in SOURCES:
        raise DownloadError(f"unknown dataset {name!r}; choose from {sorted(SOURCES)}")
    src = SOURCES[name]
    root = Path(root).expanduser() if root else data_root()
    folder = root / src.folder
    if folder.is_dir():
        try:
            verify(folder, src)
            return folder
        except DownloadError:
            pass  # incomplete: fetch again
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = Path(tmp) / src.archive
        _fetch(src, archive, timeout, root)
        if sha256 and sha256_file(archive) != sha256.lower():
            raise DownloadError(f"{src.archive} does not match the SHA-256 you gave")
        unpack = Path(tmp) / "unpacked"
        _safe_extract(archive, unpack)
        found = next((p for p in unpack.rglob(src.folder) if p.is_dir()), None)
        if found is None:
            raise DownloadError(f"{src.archive} has no {src.folder}/ folder")
        verify(found, src)
        if folder.exists():
            shutil.rmtree(folder)
        found.replace(folder)
    return folder
