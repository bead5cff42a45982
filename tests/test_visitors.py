"""Visitor spaces: isolation by hashed key, quotas, expiry, the zip download, and run ownership."""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seg.deploy import MB, Deployment
from seg.labeling.names import UnsafePathError
from seg.labeling.workspace import WorkspaceError, is_workspace
from seg.visitors import (
    LAST_USED_FILE,
    QuotaExceeded,
    RunRefused,
    RunSlots,
    ServerFull,
    VisitorError,
    VisitorRegistry,
    visitor_digest,
    visitor_key,
)

H, W = 96, 128


def scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    img[: H // 2] = (90, 140, 230)
    img[H // 2 :] = (50, 130, 40)
    return np.clip(img.astype(int) + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


class Clock:
    """A settable wall clock, so expiry is tested without sleeping."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def tree(base: Path) -> list[str]:
    out = []
    for folder, dirs, files in os.walk(base):
        rel = Path(folder).relative_to(base)
        out += [str(rel / n) for n in dirs + files]
    return sorted(out)


@pytest.fixture()
def registry(tmp_path: Path) -> VisitorRegistry:
    return VisitorRegistry(tmp_path / "visitors", max_images=5, max_bytes=5 * MB, expiry_s=3600, clock=Clock())


def test_keys_are_hashed_and_never_used_as_paths(registry: VisitorRegistry, tmp_path: Path):
    hostile = ["../../etc", "/proc/self", "~", "x\x01y", "a" * 500, "session:abc", "user:alice", "..", "C:\\x"]
    before = tree(tmp_path)
    spaces = [registry.space(k) for k in hostile]
    assert len({s.root for s in spaces}) == len(hostile)
    for space in spaces:
        assert space.root.parent == registry.root and len(space.digest) == 32
        assert is_workspace(space.workspace.root) and space.checkpoints.is_dir()
    made = set(tree(tmp_path)) - set(before)
    assert all(p.startswith("visitors") for p in made)  # nothing outside the visitor root
    for bad in ("", "x\x00y", "k" * 513, None, 7):
        with pytest.raises(VisitorError):
            registry.space(bad)
    assert visitor_key("abc") == "session:abc" and visitor_key("abc", "alice") == "user:alice"
    assert visitor_key(None, " bob ") == "user:bob"
    with pytest.raises(VisitorError, match="reload"):
        visitor_key(None, None)
    # A key that spells another visitor's digest is hashed again: it cannot reach that folder.
    alice = registry.space("user:alice")
    assert registry.space(alice.digest).root != alice.root


def test_two_visitors_cannot_see_each_others_work(registry: VisitorRegistry):
    alice, bob = registry.space("session:alice"), registry.space("session:bob")
    name, _ = alice.workspace.import_image(scene(1), name="holiday.jpg")
    alice.workspace.save(name, np.full((H, W), 2, np.uint8))
    (alice.checkpoints / "mine.json").write_text("{}")
    assert bob.workspace.names() == [] and list(bob.checkpoints.iterdir()) == []
    for attempt in (name, f"../{alice.digest}/workspace/val/{name}", "../../" + name):
        with pytest.raises((WorkspaceError, UnsafePathError)):
            bob.workspace.load(attempt)
        with pytest.raises((WorkspaceError, UnsafePathError)):
            bob.workspace.save(attempt, np.zeros((H, W), np.uint8))
    # Bob importing the same picture under the same name gets his own copy, not Alice's.
    assert bob.workspace.import_image(scene(1), name="holiday.jpg") == ("holiday", True)
    bob.workspace.save("holiday", np.full((H, W), 5, np.uint8))
    assert np.all(alice.workspace.load(name).label == 2) and np.all(bob.workspace.load("holiday").label == 5)
    with zipfile.ZipFile(io.BytesIO(bob.zip_bytes())) as archive:
        names = archive.namelist()
    assert "checkpoints/mine.json" not in names and all(alice.digest not in n for n in names)
    assert registry.space("session:alice").workspace is alice.workspace  # one object per visitor


def test_quota_on_images_and_bytes_refuses_before_writing(tmp_path: Path):
    registry = VisitorRegistry(tmp_path / "v", max_images=2, max_bytes=10 * MB, clock=Clock())
    space = registry.space("session:q")
    space.workspace.import_image(scene(1), name="a")
    space.workspace.import_image(scene(2), name="b")
    before = tree(space.root)
    with pytest.raises(QuotaExceeded, match="most allowed here is 2") as info:
        space.workspace.import_image(scene(3), name="c")
    assert isinstance(info.value, WorkspaceError)  # the Label tab's refusal handling catches it
    assert str(tmp_path) not in str(info.value)
    assert tree(space.root) == before and space.workspace.names() == ["a", "b"]
    # Bytes: just above what is used now, so the next save (two PNGs) does not fit.
    tight = VisitorRegistry(tmp_path / "v", max_images=2, max_bytes=space.usage().bytes + 10, clock=Clock())
    same = tight.space("session:q")
    with pytest.raises(QuotaExceeded, match="space is full"):
        same.workspace.save("a", np.full((H, W), 3, np.uint8))
    assert same.workspace.versions("a") == [] and same.workspace.progress() == (0, 2)
    with pytest.raises(QuotaExceeded):
        same.check_room(new_bytes=100)
    same.check_room()  # nothing new: fits


def test_concurrent_imports_of_one_visitor_cannot_overshoot_the_quota(tmp_path: Path):
    registry = VisitorRegistry(tmp_path / "v", max_images=4, max_bytes=50 * MB, clock=Clock())
    outcomes: list[str] = []
    barrier = threading.Barrier(10)

    def work(i: int) -> None:
        barrier.wait()
        try:
            registry.space("session:busy").workspace.import_image(scene(10 + i), name=f"img{i}")
            outcomes.append("added")
        except QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["added"] * 4 + ["refused"] * 6
    assert len(registry.space("session:busy").workspace.names()) == 4
    assert len(registry.digests()) == 1  # ten threads, one space


def test_expiry_sweeps_idle_spaces_and_keeps_busy_ones(tmp_path: Path):
    clock = Clock()
    registry = VisitorRegistry(tmp_path / "v", expiry_s=3600, clock=clock)
    idle, active, training = (registry.space(f"session:{k}") for k in ("idle", "active", "training"))
    idle.workspace.import_image(scene(1), name="x")
    clock.now += 3000
    registry.space("session:active")  # a request touches the space
    clock.now += 1000
    assert registry.sweep(keep={training.digest}) == [idle.digest]
    assert not idle.root.exists() and active.root.is_dir() and training.root.is_dir()
    assert sorted(registry.digests()) == sorted([active.digest, training.digest])
    # The idle visitor comes back: a fresh, empty space.
    again = registry.space("session:idle")
    assert again.workspace.names() == [] and (again.root / LAST_USED_FILE).is_file()
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".trash-")]
    # Foreign entries in the visitor root are never touched by the sweep.
    (registry.root / "README").write_text("operator's note")
    clock.now += 10_000
    registry.sweep()
    assert (registry.root / "README").is_file()


def test_registry_is_bounded_and_a_visitor_can_delete_their_space(tmp_path: Path):
    clock = Clock()
    registry = VisitorRegistry(tmp_path / "v", max_visitors=2, expiry_s=60, clock=clock)
    registry.space("session:1")
    registry.space("session:2")
    with pytest.raises(ServerFull):
        registry.space("session:3")
    registry.space("session:1")  # existing visitors keep working
    clock.now += 120  # both idle past the expiry: room is made by sweeping them
    assert registry.space("session:3").workspace.names() == []
    assert registry.existing("session:never") is None and not (registry.root / visitor_digest("session:never")).exists()
    assert registry.delete("session:3") and registry.existing("session:3") is None


def test_zip_holds_the_visitors_work_only(registry: VisitorRegistry):
    space = registry.space("session:zip")
    name, _ = space.workspace.import_image(scene(4), name="street")
    space.workspace.save(name, np.full((H, W), 1, np.uint8))
    (space.checkpoints / "model.json").write_text('{"architecture": "unet"}')
    (space.checkpoints / ".model.json.abc.tmp").write_text("half")
    os.symlink("/etc/hostname", space.checkpoints / "link.json")
    data = space.zip_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        assert archive.testzip() is None
        label = archive.read(f"workspace/val/{name}.png")
    assert {
        f"workspace/val/{name}.jpg",
        "workspace/classes.txt",
        "workspace/manifest.sqlite3",
        "checkpoints/model.json",
    } <= names
    assert "checkpoints/link.json" not in names and "checkpoints/.model.json.abc.tmp" not in names
    assert label == (space.workspace.root / "val" / f"{name}.png").read_bytes()
    assert space.checkpoint_stem("../../evil name").parent == space.checkpoints


def test_registry_from_deployment(tmp_path: Path):
    settings = Deployment.from_env(
        {
            "SPACE_ID": "x",
            "SEG_VISITOR_DIR": str(tmp_path / "vis"),
            "SEG_VISITOR_MAX_IMAGES": "3",
            "SEG_PUBLIC_MAX_RUNS": "2",
        }
    )
    registry = VisitorRegistry.from_deployment(settings)
    assert registry.root == (tmp_path / "vis").resolve() and registry.max_images == 3
    slots = RunSlots.from_deployment(settings)
    assert slots.limit == 2 and slots.max_seconds == settings.public_max_train_seconds


def test_only_the_owner_stops_a_run_and_one_run_at_a_time():
    slots = RunSlots(limit=1, max_seconds=60)
    claim = slots.claim("session:alice", "unet on my labels")
    assert claim.owner == visitor_digest("session:alice") and "alice" not in claim.owner
    assert not claim.overdue() and claim.overdue(claim.started + 61)
    with pytest.raises(RunRefused, match="already going"):
        slots.claim("session:bob")
    with pytest.raises(RunRefused, match="already have"):
        slots.claim("session:alice")
    with pytest.raises(RunRefused, match="Only the visitor who started"):
        slots.check_stop("session:bob", claim.run_id)
    with pytest.raises(RunRefused, match="no training run"):
        slots.check_stop("session:bob")
    assert not slots.may_stop("session:bob", claim.run_id) and not slots.may_stop("session:bob", "made-up")
    assert slots.check_stop("session:alice") is claim and slots.may_stop("session:alice", claim.run_id)
    assert slots.owners() == {claim.owner} and slots.claimed_by("session:alice") is claim
    slots.release(claim)
    slots.release(claim)  # idempotent
    with slots.running("session:bob") as bobs:
        assert slots.active() == [bobs]
    assert slots.active() == []


def test_run_limit_holds_under_concurrent_claims():
    slots = RunSlots(limit=2)
    won: list[str] = []
    barrier = threading.Barrier(12)

    def claim(i: int) -> None:
        barrier.wait()
        try:
            slots.claim(f"session:{i}")
            won.append(str(i))
        except RunRefused:
            pass

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(won) == 2 and len(slots.active()) == 2


def test_cards_in_the_zip_name_folders_without_the_servers_paths(registry: VisitorRegistry):
    space = registry.space("session:paths")
    out, data = space.checkpoints / "mine", "/srv/seglab/data/iccv09Data"
    card = {
        "architecture": "unet",
        "config": {"data_dir": data, "out": str(out), "crop_fraction": [0.5, 1.0], "semantic": {"distill_from": None}},
        "command": f"seglab train --model unet --data-dir {data} --out {out} --crop-fraction 0.5,1.0 --arch a/b",
        "init_from": {"checkpoint": str(space.checkpoints / "first") + "/", "loaded": "all weights"},
        "val_metrics": {"miou": 0.5},
        "url": "https://example.org/a/b",
    }
    (space.checkpoints / "mine.json").write_text(json.dumps(card))
    (space.checkpoints / "broken.json").write_text(f'{{"out": "{out}", ')  # not JSON: cleaned as text
    with zipfile.ZipFile(io.BytesIO(space.zip_bytes())) as archive:
        text, broken = archive.read("checkpoints/mine.json").decode(), archive.read("checkpoints/broken.json").decode()
    assert str(registry.root) not in text + broken and "/srv" not in text
    assert broken == '{"out": "mine", '
    assert json.loads(text) == card | {
        "config": {
            "data_dir": "iccv09Data",
            "out": "mine",
            "crop_fraction": [0.5, 1.0],
            "semantic": {"distill_from": None},
        },
        "command": "seglab train --model unet --data-dir iccv09Data --out mine --crop-fraction 0.5,1.0 --arch a/b",
        "init_from": {"checkpoint": "first", "loaded": "all weights"},
    }
    assert json.loads((space.checkpoints / "mine.json").read_text()) == card, "the server's copy keeps its paths"
