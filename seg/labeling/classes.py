"""A workspace's classes: names and colours, and the only ways they may change.

A saved mask stores class *ids*, so the list may grow (a new class gets the next id) and a
class may be renamed or recoloured (its id stays), but nothing is ever removed or
reordered: that would silently give existing masks other classes.

``classes.txt`` holds one class a line, ``name #rrggbb``; a line without a colour (older
workspaces) gets the project's default colour for its id, as before.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from seg.classes import palette_for
from seg.data.sbd import parse_class_table

Colour = tuple[int, int, int]

#: Class ids are stored in 8-bit PNGs.
MAX_CLASSES = 255
MAX_CLASS_NAME_LENGTH = 64
#: Characters a class name may not hold: they separate fields in classes.txt, CVAT's labelmap and the CLI.
FORBIDDEN_IN_NAMES = ":,#"
_HEX = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")


class ClassListError(ValueError):
    """A class list or a change to it is not allowed; the message is user-facing."""


def parse_colour(text: str) -> Colour:
    """``#rrggbb`` (or ``rrggbb``, ``#rgb``) -> (r, g, b)."""
    match = _HEX.fullmatch(str(text).strip())
    if not match:
        raise ClassListError(f"{str(text).strip()[:20]!r} is not a colour; write it as #rrggbb, e.g. #ff8800")
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def format_colour(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def check_class_name(raw: object) -> str:
    """A new class name, stripped; ``ClassListError`` saying what is wrong with it."""
    if not isinstance(raw, str) or not raw.strip():
        raise ClassListError("A class needs a name.")
    name = unicodedata.normalize("NFC", raw.strip())
    if len(name) > MAX_CLASS_NAME_LENGTH:
        raise ClassListError(f"A class name can be at most {MAX_CLASS_NAME_LENGTH} characters long.")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ClassListError("A class name cannot hold control characters or line breaks.")
    bad = sorted({ch for ch in name if ch in FORBIDDEN_IN_NAMES})
    if bad:
        raise ClassListError(f"A class name cannot contain {' '.join(repr(c) for c in bad)}.")
    return name


@dataclass(frozen=True)
class ClassList:
    """Class names and their colours; index = class id."""

    names: tuple[str, ...]
    colours: tuple[Colour, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise ClassListError("A workspace needs at least one class.")
        if len(self.names) > MAX_CLASSES:
            raise ClassListError(f"A workspace can have at most {MAX_CLASSES} classes.")
        if len(self.colours) != len(self.names):
            raise ClassListError(f"{len(self.names)} classes but {len(self.colours)} colours.")
        for colour in self.colours:
            if len(colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
                raise ClassListError(f"{colour!r} is not an (r, g, b) colour.")

    # -- making ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, names: Sequence[str], colours: Sequence[Colour | str] | None = None) -> ClassList:
        """A new list from user input: names checked and unique, colours distinct (missing ones
        get the default colours not taken yet)."""
        checked = [check_class_name(n) for n in names]
        _check_unique(checked)
        given = [parse_colour(c) if isinstance(c, str) else tuple(c) for c in (colours or [])]
        if len(given) > len(checked):
            raise ClassListError(f"{len(given)} colours for {len(checked)} classes.")
        full = _fill_colours(given, len(checked))
        _check_distinct(full)
        return cls(tuple(checked), tuple(full))

    @classmethod
    def parse(cls, text: str) -> ClassList:
        """The contents of a ``classes.txt`` (lenient: old files' names are kept as they are), read by
        the same parser as training's (``seg.data.sbd.parse_class_table``)."""
        table = parse_class_table(text)
        defaults = palette_for(len(table))
        return cls(tuple(name for name, _ in table), tuple(c or d for (_, c), d in zip(table, defaults)))

    def to_text(self) -> str:
        """``classes.txt``: ``name #rrggbb`` per line."""
        return "".join(f"{name} {format_colour(colour)}\n" for name, colour in zip(self.names, self.colours))

    # -- changing (each returns a new list) ---------------------------------------------------------
    def index(self, name_or_id: str | int) -> int:
        """The id of a class given by name (case-insensitive) or by id."""
        if isinstance(name_or_id, int) or (
            isinstance(name_or_id, str) and name_or_id.strip().isdigit() and name_or_id.strip() not in self.names
        ):
            idx = int(name_or_id)
            if not 0 <= idx < len(self.names):
                raise ClassListError(f"There is no class {idx}; ids go from 0 to {len(self.names) - 1}.")
            return idx
        wanted = str(name_or_id).strip().casefold()
        for idx, name in enumerate(self.names):
            if name.casefold() == wanted:
                return idx
        raise ClassListError(f"There is no class named {str(name_or_id).strip()[:64]!r}.")

    def added(self, name: str, colour: Colour | str | None = None) -> ClassList:
        """The list with a new class at the next id."""
        name = check_class_name(name)
        _check_unique([*self.names, name])
        if len(self.names) >= MAX_CLASSES:
            raise ClassListError(f"A workspace can have at most {MAX_CLASSES} classes.")
        if colour is None:
            new = _fill_colours(list(self.colours), len(self.names) + 1)[-1]
        else:
            new = parse_colour(colour) if isinstance(colour, str) else tuple(colour)
            _check_distinct([*self.colours, new])
        return ClassList((*self.names, name), (*self.colours, new))

    def renamed(self, name_or_id: str | int, new_name: str) -> ClassList:
        """The list with one class renamed; its id and colour stay."""
        idx = self.index(name_or_id)
        new_name = check_class_name(new_name)
        names = list(self.names)
        names[idx] = new_name
        _check_unique(names)
        return ClassList(tuple(names), self.colours)

    def recoloured(self, name_or_id: str | int, colour: Colour | str) -> ClassList:
        idx = self.index(name_or_id)
        colours = list(self.colours)
        colours[idx] = parse_colour(colour) if isinstance(colour, str) else tuple(colour)
        _check_distinct(colours)
        return ClassList(self.names, tuple(colours))

    def check_replaces(self, old: ClassList) -> None:
        """Refuse a list that would give saved masks other classes: fewer classes than before."""
        if len(self.names) < len(old.names):
            raise ClassListError(
                f"Classes cannot be removed (saved masks use ids 0 to {len(old.names) - 1}); "
                f"rename a class you no longer need instead."
            )

    def legend(self) -> list[tuple[int, str, str]]:
        """(id, name, #rrggbb) per class: what a legend or a swatch row shows."""
        return [(i, n, format_colour(c)) for i, (n, c) in enumerate(zip(self.names, self.colours))]


def _check_unique(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name.casefold() in seen:
            raise ClassListError(f"There are two classes named {name!r}; class names must differ.")
        seen.add(name.casefold())


def _check_distinct(colours: Sequence[Colour]) -> None:
    seen: set[Colour] = set()
    for colour in colours:
        if tuple(colour) in seen:
            raise ClassListError(f"Two classes share the colour {format_colour(colour)}; each needs its own.")
        seen.add(tuple(colour))


def _fill_colours(given: list[Colour], count: int) -> list[Colour]:
    """``given`` followed by default colours (in id order) that no class uses yet, up to ``count``."""
    out = list(given)
    taken = set(out)
    candidates = iter(palette_for(count + len(given) + 1))
    while len(out) < count:
        colour = next(candidates)
        if colour not in taken:
            out.append(colour)
            taken.add(colour)
    return out
