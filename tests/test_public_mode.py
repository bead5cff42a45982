"""Public mode, two visitors in two browser sessions (Gradio's HTTP queue, as the page calls it):
neither can see, load or overwrite the other's images or checkpoints by name, and one cannot stop
the other's training run. Plus the visitor identity rules without a server.

The app runs in its own process (``tests/test_attack.py``'s sandbox and protocol client). The
training parts need Stanford Background (``SEG_DATA_DIR``) and are skipped without it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from test_attack import SCENE, BrowserSession, launch, listing, make_sandbox, stop_app

HAS_SBD = bool(os.environ.get("SEG_DATA_DIR")) and (Path(os.environ.get("SEG_DATA_DIR", "/")) / "iccv09Data").is_dir()


@pytest.fixture(scope="module")
def public_app():
    base = Path(tempfile.mkdtemp(prefix="seglab-public-"))
    box = make_sandbox(base)
    # Runs long enough to stop one: up to 3 epochs of 64 images per split, 90 s.
    env = {
        "SEG_PUBLIC_MAX_TRAIN_IMAGES": "64",
        "SEG_PUBLIC_MAX_EPOCHS": "3",
        "SEG_PUBLIC_MAX_TRAIN_SECONDS": "90",
        "SEG_PUBLIC_MAX_RUNS": "2",
    }
    app = launch(box, public=True, extra_env=env)
    yield app, box
    stop_app(app)
    shutil.rmtree(base, ignore_errors=True)


class Visitor:
    """One browser session on the public app, with the Label and Train tabs' events at hand."""

    def __init__(self, url: str):
        self.page = BrowserSession(url)
        p = self.page
        self.upload_fn = p.find(trigger=("label-upload", "upload"))
        self.item_fn = p.find(reads="label-item", writes="label-status")
        self.save_fn = p.find(trigger=("label-save", "click"))
        self.download_fn = p.find(trigger=("label-download", "click"))
        self.train_fn = p.find(api_name="train")
        self.stop_fn = p.find(api_name="train_stop")

    def upload(self, path: Path, as_name: str) -> None:
        staged = Path(tempfile.mkdtemp()) / as_name
        shutil.copy(path, staged)
        result = self.page.call(
            self.upload_fn, self.page.values(self.upload_fn, label_upload=[self.page.upload(staged)])
        )
        assert result.ok, result.error

    def open_image(self, name: str):
        return self.page.call(self.item_fn, self.page.values(self.item_fn, label_item=name))

    def save(self):
        return self.page.call(self.save_fn, self.page.defaults(self.save_fn))

    def download(self) -> zipfile.ZipFile:
        result = self.page.call(self.download_fn, [])
        assert result.ok, result.error
        return zipfile.ZipFile(io.BytesIO(self.page.fetch_file(result.outputs[0])))

    def train(self, name: str, limit: int, epochs: int = 1, model: str = "cnn", teacher: str | None = None):
        form = self.page.defaults(self.train_fn)
        form[0], form[1], form[3], form[9], form[11] = model, epochs, 2, limit, name
        if teacher is not None:
            form[16] = teacher  # after the 13 fields and 3 levers
        return self.page.call(self.train_fn, form)

    def segment(self, model: str):
        return self.page.call_named("segment", self.page.upload(SCENE), model)


def _space_of(box, visitor: Visitor) -> Path:
    from seg.visitors import visitor_digest

    return box.visitors / visitor_digest(f"session:{visitor.page.session_hash}")


@pytest.mark.slow
def test_visitors_cannot_see_load_or_overwrite_each_others_images(public_app):
    app, box = public_app
    alice, bob = Visitor(app.url), Visitor(app.url)
    alice.upload(SCENE, "holiday.png")
    assert alice.open_image("holiday").ok
    saved = alice.save()
    assert saved.ok and "Saved" in saved.outputs[2], saved.error
    alice_space = _space_of(box, alice)
    alice_before = listing(alice_space)

    # Bob cannot open Alice's image by its name, and his list never shows it.
    peek = bob.open_image("holiday")
    assert not peek.ok or peek.outputs[1] is None, "Bob loaded an image he never added"
    bob.upload(SCENE, "holiday.png")  # the same name, in his own space
    assert bob.open_image("holiday").ok
    assert bob.save().ok
    bob_space = _space_of(box, bob)
    assert bob_space != alice_space and (bob_space / "workspace" / "val" / "holiday.jpg").is_file()
    assert listing(alice_space) == alice_before, "Bob's upload and save changed nothing of Alice's"

    # Each zip holds its owner's work only.
    alice_zip, bob_zip = alice.download().namelist(), bob.download().namelist()
    assert "workspace/val/holiday.png" in alice_zip and "workspace/val/holiday.png" in bob_zip
    assert not set(alice_zip) & {n for n in bob_zip if n.startswith("checkpoints/")}


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SBD, reason="training needs Stanford Background (set SEG_DATA_DIR)")
def test_visitors_cannot_use_or_overwrite_each_others_checkpoints(public_app):
    app, box = public_app
    alice, bob = Visitor(app.url), Visitor(app.url)
    trained = alice.train("mine", limit=2)
    assert trained.ok, trained.error
    status, _bar, _loss, _metric, _samples, info = trained.outputs
    assert info["status"] == "done" and info["checkpoint"] == "mine", info
    assert "/" not in status.replace("</", ""), "no server path in the status"
    weights = _space_of(box, alice) / "checkpoints" / "mine.safetensors"
    assert weights.is_file() and not (box.checkpoints / "mine.safetensors").exists(), "shipped folder untouched"
    assert alice.segment("mine").ok, "Alice uses her checkpoint by name"

    refused = bob.segment("mine")
    assert not refused.ok and "no such checkpoint" in refused.error
    not_his = bob.train("taught", limit=2, teacher="mine")
    assert not not_his.ok and "Choose a listed model to learn from" in not_his.error, "nor as a teacher"
    taught = alice.train("taught", limit=2, teacher="mine")  # her own model teaches her next one
    assert taught.ok and taught.outputs[-1]["config"]["semantic"]["distill_from"] == "mine", taught.error
    # Her zip holds the cards with names where the server's folders were (data, her space, the teacher's).
    card_text = alice.download().read("checkpoints/taught.json").decode()
    on_disk = json.loads((_space_of(box, alice) / "checkpoints" / "taught.json").read_text())
    config = on_disk["config"]
    server_paths = [config["data_dir"], config["out"], config["semantic"]["distill_from"]]
    assert all(Path(p).is_absolute() for p in server_paths), "the server's copy keeps its paths"
    assert not any(p in card_text for p in server_paths) and str(box.visitors) not in card_text
    card = json.loads(card_text)
    assert card["config"]["out"] == "taught" and card["config"]["semantic"]["distill_from"] == "mine"
    assert card["config"]["data_dir"] == "iccv09Data" and card["val_metrics"] == on_disk["val_metrics"]
    stamp = weights.stat().st_mtime_ns
    again = bob.train("mine", limit=2)  # the same name: his own folder, never hers
    assert again.ok, again.error
    assert weights.stat().st_mtime_ns == stamp, "Bob's run did not overwrite Alice's checkpoint"
    assert (_space_of(box, bob) / "checkpoints" / "mine.safetensors").is_file()
    shipped = bob.train("tiny-unet", limit=2)
    assert not shipped.ok and "exists already" in shipped.error, "a shipped name cannot be reused"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SBD, reason="training needs Stanford Background (set SEG_DATA_DIR)")
def test_one_visitor_cannot_stop_anothers_run(public_app):
    app, _box = public_app
    alice, bob = Visitor(app.url), Visitor(app.url)
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.setdefault("run", alice.train("long", limit=64, epochs=3, model="cnn"))
    )
    runner.start()
    time.sleep(5)  # the run is under way (data loaded, steps going); 3 epochs of 32 CNN steps outlast the test
    refused = bob.page.call(bob.stop_fn, [])
    assert not refused.ok and "no training run going" in refused.error
    time.sleep(2)
    assert runner.is_alive(), "Alice's run went on after Bob's stop"
    asked = time.monotonic()
    stopped = alice.page.call(alice.stop_fn, [])
    assert stopped.ok and "Stopping" in stopped.outputs[0]
    runner.join(120)
    result = outcome["run"]
    assert result.ok, result.error
    assert result.outputs[-1]["status"] == "stopped"
    print(f"\nstop -> run ended (incl. validating the partial epoch): {time.monotonic() - asked:.1f} s")


def test_visitor_key_is_the_session_or_the_hugging_face_login():
    from seg.ui.pickers import acting_as, current_visitor_key, oauth_username

    class Request:
        def __init__(self, session_hash, session=None):
            self.session_hash = session_hash
            self._session = session

        @property
        def session(self):
            if self._session is None:
                raise AssertionError("SessionMiddleware must be installed")
            return self._session

    assert oauth_username(Request("abc")) is None
    logged_in = Request("abc", {"oauth_info": {"userinfo": {"preferred_username": "ada"}, "expires_at": 4e9}})
    assert oauth_username(logged_in) == "ada"
    expired = Request("abc", {"oauth_info": {"userinfo": {"preferred_username": "ada"}, "expires_at": 1.0}})
    assert oauth_username(expired) is None
    assert current_visitor_key() is None, "outside an event nobody is asking"
    with acting_as("session:xyz"):
        assert current_visitor_key() == "session:xyz"


@pytest.mark.slow
def test_public_page_has_no_path_inputs(public_app):
    """No textbox of the public page takes a folder: the Label tab has no workspace box or server import,
    the Train tab no workspace argument."""
    app, _box = public_app
    page = BrowserSession(app.url)
    elem_ids = {c.get("props", {}).get("elem_id") for c in page.components.values()}
    assert "label-workspace" not in elem_ids and "label-new-name" not in elem_ids and "train-workspace" not in elem_ids
    labels = [
        str(c.get("props", {}).get("label") or "") for c in page.components.values() if c.get("type") == "textbox"
    ]
    assert not [text for text in labels if "folder" in text.lower() or "path" in text.lower()], labels
    train = page.deps[page.find(api_name="train")]
    assert len(train["inputs"]) == 19, "the form's 13 fields, 3 levers and 3 distillation settings: no workspace"
    kinds = [page.components[i]["type"] for i in train["inputs"][-6:]]
    assert kinds == ["slider"] * 3 + ["dropdown", "slider", "slider"], "the teacher is picked from a list"
