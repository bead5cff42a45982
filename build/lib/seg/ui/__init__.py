"""The Gradio dashboard: one module per tab, small shared modules by concern, assembly in ``app``.

Importing ``seg.ui`` needs gradio; the core ``seg`` package never imports it.
"""

from __future__ import annotations


def build_app(checkpoint_dir=None):  # re-exported lazily so `import seg.ui` stays cheap
    """See ``seg.ui.app.build_app``."""
    from seg.ui.app import build_app as _build

    return _build(checkpoint_dir)
