"""What programmatic clients see: the ``/models`` endpoint and model pickers whose API type follows the store.

Gradio computes an app's API schema once, so a dropdown's choices in it would stay those of
start-up and a checkpoint trained later would be refused by its validation. ``ModelChoice``
is a dropdown whose API type is a plain checkpoint name (the handler checks it against the
store at call time, with a clear message), and ``/models`` lists what the store holds now.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from seg.modelstore import ModelStore
from seg.ui.style import model_colour

#: Where clients learn the valid names (repeated in every model parameter's description).
NAMES_HINT = "checkpoint name(s) as listed by the /models endpoint"

class ModelChoice(gr.Dropdown):
    """A model dropdown for the UI whose API accepts any current checkpoint name.

    The page shows the store's choices (refreshed on tab switches); the API schema says "string"
    instead of freezing the start-up list, and unknown names are reported by the handler.
    """

    is_template = True  # rendered by the browser as the ordinary dropdown

    def api_info(self) -> dict[str, Any]:
        text = {"type": "string", "description": NAMES_HINT}
        return {"type": "array", "items": text, "description": NAMES_HINT} if self.multiselect else text

    def preprocess(self, payload: Any) -> Any:
        """The name(s) as sent: validity is the store's business, checked when the handler runs."""
        if payload is None or not self.multiselect:
            return payload
        return list(payload) if isinstance(payload, (list, tuple)) else [payload]
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

def _scalars(metrics: Any) -> dict[str, Any]:
    """A card's metrics without the bulky parts (per-class tables, matrices, curves)."""
    if not isinstance(metrics, dict):
        return {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}

def model_listing(store: ModelStore) -> dict[str, Any]:
    """The checkpoints as the store sees them now (rescanned), for ``/models``."""
    store.refresh()
    models = []
    for name in store.names(None):
        try:
            card = store.card(name)
        except KeyError:  # removed between the listing and now
            continue
        models.append(
            {
                "name": name,
                "task": str(card.get("task", "semantic")),
                "architecture": card.get("architecture"),
                "classes": card.get("classes") or (["pedestrian"] if card.get("task") == "instances" else []),
                "palette": card.get("palette") or [],
                "params": card.get("params"),
                "val_metrics": _scalars(card.get("val_metrics")),
                "test_metrics": _scalars(card.get("test_metrics")),
                "colour": model_colour(name),
            }
        )
    unavailable = [{"name": n, "reason": r} for n, r in store.unavailable().items()]
    return {"models": models, "unavailable": unavailable}

def build_api(store: ModelStore) -> None:
    """API-only endpoints (no components); call inside the app's ``gr.Blocks``."""

    def models() -> dict:
        """Every usable checkpoint now (name, task, classes, palette, card metrics, colour) and the
        unavailable ones with the reason; checkpoints trained after start-up appear here."""
        return model_listing(store)

    gr.api(models, api_name="models", concurrency_limit=None)
