"""Images from visitors (uploads, pasted images, API payloads) decoded for the tabs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from seg.io import ImageLoadError, load_image

#: Longest side of an image the dashboard works on; bigger uploads are downscaled
#: before inference and display (CPU latency and browser payload stay bounded).
WORK_MAX_SIDE = 1024


def read_image(source: Any, what: str = "image") -> np.ndarray:
    """Decode an upload (file path, bytes, array) with ``seg.io.load_image``; user errors -> ``gr.Error``.

    Downscales to ``WORK_MAX_SIDE`` so a huge upload costs the same as a normal one.
    """
    if source is None or (isinstance(source, str) and not source):
        raise gr.Error(f"Upload an {what} or pick an example first.")
    if isinstance(source, dict):  # gr.File / ImageData payloads from the API
        source = source.get("path") or source.get("name")
    try:
        return load_image(source, max_side=WORK_MAX_SIDE)
    except ImageLoadError as err:
        message = str(err)
        if isinstance(source, (str, Path)):  # never show server-side temp paths
            message = message.replace(str(source), Path(source).name)
        raise gr.Error(f"Cannot read the {what}: {message}") from None
    except MemoryError:
        raise gr.Error(f"The {what} is too large to process.") from None
