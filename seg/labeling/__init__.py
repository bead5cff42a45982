"""Labeling workspace: model-assisted mask labeling whose output trains directly.

Importable without gradio; ``seg.ui.label`` is the dashboard tab on top of it.
"""

from seg.labeling.names import UnsafePathError, safe_join, sanitize_name
from seg.labeling.workspace import (
    Item,
    LoadedItem,
    Problem,
    SaveResult,
    ScanReport,
    Workspace,
    WorkspaceError,
    default_workspace,
)

__all__ = [
    "Item",
    "LoadedItem",
    "Problem",
    "SaveResult",
    "ScanReport",
    "UnsafePathError",
    "Workspace",
    "WorkspaceError",
    "default_workspace",
    "safe_join",
    "sanitize_name",
]
