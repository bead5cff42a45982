"""The Gradio dashboard: one module per tab, small shared modules by concern, assembly in ``app``.

The tabs and ``seg.ui.app`` need gradio; ``import seg.ui`` itself does not (its names import lazily), and
the core ``seg`` package never imports the UI.
"""

from __future__ import annotations

import gc

#: what the dashboard imports beyond the core (the ``app`` extra)
APP_PACKAGES = ("gradio", "gradio_client", "plotly")


def build_app(checkpoint_dir=None):  # re-exported lazily so `import seg.ui` stays cheap
    """See ``seg.ui.app.build_app``."""
    from seg.ui.app import build_app as _build

    return _build(checkpoint_dir)


def main(argv: list[str] | None = None) -> None:
    """``seglab-app``: ``seg.ui.app.main`` with the garbage collector paused while gradio, torch and the tabs
    load, as ``python app.py`` does (``seg.ui.app.main`` freezes what they made and turns it back on)."""
    gc.disable()
    try:
        from seg.ui.app import main as _main
    except ModuleNotFoundError as err:
        if err.name not in APP_PACKAGES:
            raise
        raise SystemExit(f"seglab-app: the dashboard needs {err.name}: pip install 'seglab[app]'") from None
    _main(argv)
