"""The order pytest-xdist's work stealing gets (``conftest.balanced_order``): every test once, the long
module groups spread over the workers' slices and at their fronts, the uncontended test first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from conftest import LEAD_S, SHARED_REFERENCE, balanced_order


@dataclass(eq=False)
class FakeItem:
    nodeid: str
    module: str
    path: Path
    markers: set[str] = field(default_factory=set)

    def get_closest_marker(self, name: str) -> str | None:
        return name if name in self.markers else None


def _module(name: str, count: int, markers: set[str] | None = None) -> list[FakeItem]:
    path = Path("tests") / f"{name}.py"
    return [FakeItem(f"{path}::t{i}", name, path, markers or set()) for i in range(count)]


def _slices(order: list[FakeItem], workers: int) -> list[list[FakeItem]]:
    slices, start, remaining = [], 0, len(order)
    for k in range(workers):
        size = remaining // (workers - k)
        slices.append(order[start : start + size])
        start, remaining = start + size, remaining - size
    return slices


def test_long_groups_start_the_slices_balanced_and_the_uncontended_test_first():
    stop = _module("test_stop", 1, {"uncontended"})
    long_a, long_b, long_c = _module("test_a", 2), _module("test_b", 3), _module("test_c", 1)
    shared = _module(SHARED_REFERENCE[0].removesuffix(".py"), 2) + _module(SHARED_REFERENCE[1].removesuffix(".py"), 2)
    short = [item for k in range(40) for item in _module(f"test_short{k}", 3)]
    items = stop + shared + long_a + long_b + long_c + short
    durations = {item.nodeid: 0.5 for item in short}
    durations |= {long_a[0].nodeid: 30.0, long_a[1].nodeid: 20.0}  # 50 s
    durations |= {item.nodeid: 14.0 for item in long_b}  # 42 s
    durations |= {long_c[0].nodeid: 30.0}
    durations |= {item.nodeid: 15.0 for item in shared}  # 60 s, one group

    order = balanced_order(items, 2, durations, {"test_stop"})

    assert sorted(map(id, order)) == sorted(map(id, items))  # every test exactly once
    first, second = _slices(order, 2)
    assert first[:1] == stop
    # longest first, each to the slice with less long work: shared (60) | a (50), c (30) | b (42)
    assert first[1 : 1 + len(shared) + len(long_c)] == shared + long_c
    lead = second[: second.index(long_a[0])]
    assert all(item in short for item in lead) and sum(durations[item.nodeid] for item in lead) >= LEAD_S
    assert second[len(lead) : len(lead) + len(long_a) + len(long_b)] == long_a + long_b
    # every group stays whole, and the rest of each slice is short tests
    for group in (shared, long_a, long_b, long_c):
        assert any(all(item in part for item in group) for part in (first, second))
    assert all(item in short for item in first[1 + len(shared) + len(long_c) :])


def test_without_durations_every_test_is_kept_once():
    items = _module("test_x", 3) + _module("test_y", 4)
    for workers in (2, 3):
        order = balanced_order(items, workers, {}, set())
        assert sorted(map(id, order)) == sorted(map(id, items))
