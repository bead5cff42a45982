"""One undo/redo history over every tool that changes a label.

Each edit is recorded as the rectangle it changed and that rectangle's pixels before and
after, so a history of large images stays small, and undo/redo swap rectangles back.
The history only needs the label before and after an edit, so every tool (brush, polygon,
box, scribbles, fills, a model's prefill) goes through the same ``commit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class _Edit:
    top: int
    left: int
    before: np.ndarray
    after: np.ndarray | None  # None: recorded by ``push``, the result is known only once undone
    shape: tuple[int, ...]
    tool: str


@dataclass
class History:
    """Undo/redo over a label's edits, at most ``limit`` deep.

    ``commit(before, after, tool)`` after each edit (an edit that changes nothing is not
    recorded); ``undo(current)`` / ``redo(current)`` return the label to show, or None when
    there is nothing to undo / redo. A new edit after an undo drops the redo steps, as in
    every editor.

    ``push(label)`` before an edit and ``pop()`` to take it back are the older, one-way form;
    they share the same history (a pushed state can be undone and then redone too).
    """

    limit: int = 50
    _undo: list[_Edit] = field(default_factory=list)
    _redo: list[_Edit] = field(default_factory=list)

    def commit(self, before: np.ndarray, after: np.ndarray, tool: str = "edit") -> np.ndarray:
        """Record the edit ``before`` -> ``after`` and return ``after``."""
        before, after = np.asarray(before), np.asarray(after)
        if before.shape != after.shape:  # another image: nothing to undo into
            self.clear()
            return after
        changed = before != after
        if not changed.any():
            return after
        rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        self._undo.append(
            _Edit(
                int(top),
                int(left),
                before[top:bottom, left:right].copy(),
                after[top:bottom, left:right].copy(),
                before.shape,
                tool,
            )
        )
        del self._undo[: max(0, len(self._undo) - self.limit)]
        self._redo.clear()
        return after

    def push(self, label: np.ndarray, tool: str = "edit") -> None:
        """Record the state before an edit whose result is not known yet."""
        label = np.asarray(label)
        self._undo.append(_Edit(0, 0, label.copy(), None, label.shape, tool))
        del self._undo[: max(0, len(self._undo) - self.limit)]
        self._redo.clear()

    def pop(self, current: np.ndarray | None = None) -> np.ndarray | None:
        """The state before the latest edit, forgetting that edit (nothing to redo); None when empty.

        A committed edit keeps only the rectangle it changed, so taking it back this way needs
        ``current`` (the label now); a pushed one does not.
        """
        if not self._undo:
            return None
        edit = self._undo[-1]
        if edit.after is not None and (current is None or np.shape(current) != edit.shape):
            raise ValueError("the latest edit was committed: take it back with undo(current)")
        self._undo.pop()
        if edit.after is None:
            return edit.before.copy()
        out = np.array(current, copy=True)
        h, w = edit.before.shape[:2]
        out[edit.top : edit.top + h, edit.left : edit.left + w] = edit.before
        return out

    def undo(self, current: np.ndarray) -> np.ndarray | None:
        """The label before the latest edit (None when there is none)."""
        return self._step(current, self._undo, self._redo, backwards=True)

    def redo(self, current: np.ndarray) -> np.ndarray | None:
        """The label after the latest undone edit (None when there is none)."""
        return self._step(current, self._redo, self._undo, backwards=False)

    def _step(
        self, current: np.ndarray, source: list[_Edit], target: list[_Edit], backwards: bool
    ) -> np.ndarray | None:
        if not source:
            return None
        edit = source[-1]
        if np.shape(current) != edit.shape:
            self.clear()
            return None
        source.pop()
        if edit.after is None:  # pushed: the state to redo to is the one being left now
            edit = _Edit(0, 0, edit.before, np.array(current, copy=True), edit.shape, edit.tool)
        out = np.array(current, copy=True)
        h, w = edit.before.shape[:2]
        out[edit.top : edit.top + h, edit.left : edit.left + w] = edit.before if backwards else edit.after
        target.append(edit)
        return out

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def next_undo(self) -> str | None:
        """Name of the tool whose edit ``undo`` would take back (for a button's tooltip)."""
        return self._undo[-1].tool if self._undo else None

    @property
    def next_redo(self) -> str | None:
        return self._redo[-1].tool if self._redo else None

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    def __len__(self) -> int:
        """Edits that can be undone."""
        return len(self._undo)
