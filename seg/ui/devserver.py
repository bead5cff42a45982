"""Launch the dashboard in-process on a free port, and make tiny checkpoints to serve.

Used by the app tests, the browser tests and the bench, so all three start the app the
same way. Tiny checkpoints are untrained but real (saved and loaded by ``seg.checkpoints``)
so the tests exercise the whole path in seconds.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

from seg.classes import SBD_CLASSES, SBD_PALETTE


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> float:
    """Poll ``url`` until it answers 200; returns seconds waited."""
    start = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def connect(url: str, **kwargs):
    """A ``gradio_client.Client`` for ``url``; certificate checks only where TLS is in play.

    gradio_client builds a new certificate-verifying SSL context for every upload, call and
    download, even over plain http (~35 ms each on a 2-core CPU, >100 ms per ``/segment``
    call); for an ``http://`` URL there is nothing to verify, so it is turned off.
    """
    from gradio_client import Client

    kwargs.setdefault("verbose", False)
    kwargs.setdefault("ssl_verify", not url.startswith("http://"))
    return Client(url, **kwargs)


def launch_background(checkpoint_dir: str | Path | None = None, host: str = "127.0.0.1", port: int | None = None):
    """Build and launch the app without blocking; returns (demo, url). Close with ``close_app(demo)``."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from seg.ui.app import build_app, launch_kwargs

    demo = build_app(checkpoint_dir)
    port = port or free_port(host)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        max_file_size="50mb",
        **launch_kwargs(),
    )
    url = f"http://{host}:{port}/"
    wait_http(url)
    return demo, url


def close_app(demo: Any, wait_s: float = 30.0) -> None:
    """Close an app and wait until its server has shut down and deleted its cached files.

    Gradio's ``close`` waits 5 s for the server thread. A page still connected (its event stream stays
    open) holds the server up longer, and its clean-up then runs later, deleting the files it cached:
    Gradio names a cached file by its content, so a newer app in the same process that has since cached
    the same picture loses it. Open connections get one second here, then the clean-up runs at once.
    """
    server = getattr(demo, "server", None)
    if server is not None and getattr(server, "config", None) is not None:
        server.config.timeout_graceful_shutdown = 1
    demo.close()
    thread = getattr(server, "thread", None)
    if thread is not None:
        thread.join(wait_s)


def _fake_metrics(seed: int) -> dict:
    """Plausible card metrics (the shapes a trained card has) for UI tests."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = len(SBD_CLASSES)
    cm = rng.integers(0, 50, (c, c)) + np.eye(c, dtype=int) * 400
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    ap = np.clip(iou + 0.05, 0, 1)
    return {
        "miou": float(iou.mean()),
        "map": float(ap.mean()),
        "pixel_accuracy": float(np.trace(cm) / cm.sum()),
        "iou": iou.round(4).tolist(),
        "ap": ap.round(4).tolist(),
        "per_class": {n: {"iou": float(iou[i]), "ap": float(ap[i])} for i, n in enumerate(SBD_CLASSES)},
        "confusion_matrix": cm.tolist(),
    }


def make_tiny_checkpoints(directory: str | Path, broken: bool = True, instances: bool = True) -> list[str]:
    """Write small untrained checkpoints (cnn, unet, prior, dwt) plus, with ``broken``, a corrupt one.

    Returns the names written. The broken one (``broken``) has a card but garbage weights,
    to check that the app lists it as unavailable with a reason.
    """
    import torch

    from seg.checkpoints import save_checkpoint
    from seg.models import create

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    base = {
        "task": "semantic",
        "classes": list(SBD_CLASSES),
        "palette": [list(c) for c in SBD_PALETTE],
        "input_size": {"width": 288, "height": 224},
        "encoder_init": "random initialisation",
    }
    specs = [
        ("tiny-cnn", "cnn", {"width": 8, "stages": 2}),
        ("tiny-unet", "unet", {"base_channels": 8, "depth": 2}),
        ("tiny-prior", "prior", {}),
    ]
    names = []
    for k, (name, arch, kwargs) in enumerate(specs):
        model = create(arch, num_classes=len(SBD_CLASSES), **kwargs)
        save_checkpoint(directory / name, model, dict(base, val_metrics=_fake_metrics(k)))
        names.append(name)
    if instances:
        dwt = create("dwt", num_classes=2, backbone="unet", base_channels=8, depth=2)
        save_checkpoint(directory / "tiny-dwt", dwt, {"task": "instances", "classes": ["background", "pedestrian"]})
        names.append("tiny-dwt")
    if broken:
        card = dict(
            base, architecture="unet", arch_kwargs={"num_classes": 9, "base_channels": 8, "depth": 2}, name="broken"
        )
        (directory / "broken.json").write_text(json.dumps(card))
        (directory / "broken.safetensors").write_bytes(b"not a safetensors file")
        (directory / "missing.json").write_text(json.dumps(dict(card, name="missing")))  # no weights file
    return names
