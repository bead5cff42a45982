"""Experiment files, the sweep runner (resume, parallel jobs, torchrun shares), reports and the Compare tab."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from seg.cards import read_card
from seg.experiment_report import build_report, fmt, html_report, write_report
from seg.experiments import load_experiment, parse_experiment, run_experiment, run_one
from seg.runs import ExperimentError, experiment_runs, run_status, runs_signature

REPO = Path(__file__).resolve().parent.parent

#: a 2x2 grid of tiny CNNs on the first 8 images of each split, 2 epochs each
TINY = """
title = "Tiny grid"
question = "Does the flip change anything on eight images?"
evaluate = ["test", "train"]

[base]
model = "cnn"
model_kwargs = { width = 4, stages = 2 }
epochs = 2
limit = 8
precision = "fp32"

[base.semantic]
train_size = "72x56"
color_jitter = 0.0

[grid]
flip_p = [0.5, 0.0]
seed = [0, 1]
"""


# -- experiment files (no data needed) -----------------------------------------------------------


def test_grid_and_groups_expand_into_named_runs(tmp_path):
    text = (
        TINY
        + """
[[group]]
label = "noaug"
set = { crop_fraction = "none", "model_kwargs.width" = 8 }
grid = { seed = [3] }
"""
    )
    exp = parse_experiment(text, "tiny", root=tmp_path)
    names = [r.name for r in exp.runs]
    assert names == ["flip_p=0.5,seed=0", "flip_p=0.5,seed=1", "flip_p=0,seed=0", "flip_p=0,seed=1", "noaug,seed=3"]
    first, extra = exp.runs[0].config, exp.runs[-1].config
    assert first["semantic"]["flip_p"] == 0.5 and first["semantic"]["train_size"] == [72, 56]
    assert first["semantic"]["crop_fraction"] == [0.25, 1.0]  # the default is kept where nothing sets it
    assert extra["semantic"]["crop_fraction"] is None and extra["model_kwargs"] == {"width": 8, "stages": 2}
    assert extra["seed"] == 3
    assert all(r.folder == tmp_path / "tiny" / r.name for r in exp.runs)
    assert "--only" in exp.runs[0].command


def test_a_single_crop_fraction_means_that_fraction_exactly(tmp_path):
    exp = parse_experiment('[base]\nmodel = "cnn"\n[grid]\ncrop_fraction = [0.0625]\n', "one", root=tmp_path)
    assert exp.runs[0].config["semantic"]["crop_fraction"] == [0.0625, 0.0625]


@pytest.mark.parametrize(
    "text, words",
    [
        ("[base]\nmodel = 'cnn'\n[grid]\nflip = [0.5]\n", "unknown setting 'flip'"),
        ("[base]\nmodel = 'nope'\n", "unknown model"),
        ("[base]\nmodel = 'dwt'\n", "instance model"),
        ("[base]\nmodel = 'cnn'\n[grid]\nseed = 3\n", "non-empty list"),
        ("tittle = 'x'\n", "unknown entries"),
        ("evaluate = ['val']\n", "evaluate is a list"),
        ("threads = 0\n", "threads is a whole number"),
        ("[base\n", "not valid TOML"),
        ("[[group]]\nlabel = 'a'\n[[group]]\nlabel = 'a'\n", "two runs would be named"),
        ("[base]\nmodel = 'cnn'\n[grid]\ncrop_fraction = ['big']\n", "crop_fraction is a number"),
    ],
)
def test_bad_files_are_refused_in_plain_words(tmp_path, text, words):
    with pytest.raises(ExperimentError, match=words):
        parse_experiment(text, "bad", root=tmp_path)


def test_the_shipped_experiment_files_parse(tmp_path):
    files = sorted((REPO / "experiments").glob("*.toml"))
    assert {f.stem for f in files} >= {"q1_augmentation", "q2q3_prior", "q5q7_training", "overfit"}
    counts = {f.stem: len(load_experiment(f, tmp_path).runs) for f in files}
    assert counts["q1_augmentation"] == 10  # 2 crops x 2 flips x 2 seeds + no augmentation x 2 seeds
    q1 = load_experiment(REPO / "experiments" / "q1_augmentation.toml", tmp_path)
    assert len({r.config["epochs"] for r in q1.runs}) == 1
    assert q1.threads == 1  # pinned: a run's numbers depend on its thread count
    overfit = load_experiment(REPO / "experiments" / "overfit.toml", tmp_path)
    assert "train" in overfit.evaluate
    assert {r.config["model_kwargs"].get("norm") for r in overfit.runs} == {"batch", "none"}


def test_norm_none_removes_every_batch_norm_and_the_default_is_unchanged():
    from seg.checkpoints import load_checkpoint
    from seg.models import create

    for name, kwargs in (("cnn", {"width": 8}), ("unet", {"base_channels": 8})):
        plain = create(name, **kwargs, norm="none")
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
        assert plain(torch.rand(1, 3, 32, 32)).shape[1] == 9
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in create(name, **kwargs).modules())
    for shipped in ("cnn", "unet"):  # default norm: the shipped weights load key for key
        load_checkpoint(REPO / "checkpoints" / shipped)


# -- a real sweep on a few images -------------------------------------------------------------


def _metrics(card: dict) -> dict:
    return {split: card[f"{split}_metrics"]["miou"] for split in ("val", "test", "train")}


@pytest.fixture(scope="module")
def tiny_sweep(sbd_root, tmp_path_factory):
    """Two runs finished, one stopped after its first epoch, one never started; then the sweep (2 jobs) again."""
    root = tmp_path_factory.mktemp("runs")
    exp = parse_experiment(TINY, "tiny", root=root)
    threads = torch.get_num_threads()
    try:
        for spec in exp.runs[:2]:
            assert run_one(spec, exp.evaluate, threads=1) == "finished"
        stop = threading.Event()

        def stop_after_first_epoch(event: dict) -> None:
            if event["kind"] == "epoch":
                stop.set()

        assert run_one(exp.runs[2], exp.evaluate, 1, stop_after_first_epoch, stop) == "stopped"
        before = {r.name: run_status(r, exp.evaluate) for r in exp.runs}
        stamps = {r.name: r.out.with_suffix(".json").stat().st_mtime_ns for r in exp.runs[:2]}
        signature = runs_signature(root)
        statuses = run_experiment(exp, jobs=2, threads=1, quiet=True)
        # the interrupted run, trained again uninterrupted elsewhere: the reference for an exact resume
        reference = parse_experiment(TINY, "tiny", root=tmp_path_factory.mktemp("reference")).runs[2]
        assert run_one(reference, exp.evaluate, threads=1) == "finished"
    finally:
        torch.set_num_threads(threads)
    return {
        "root": root,
        "exp": exp,
        "before": before,
        "stamps": stamps,
        "statuses": statuses,
        "reference": read_card(reference.out),
        "signature_changed": signature != runs_signature(root),
    }


@pytest.mark.slow
def test_the_sweep_resumes_an_interrupted_run_and_skips_finished_ones(tiny_sweep):
    exp = tiny_sweep["exp"]
    names = [r.name for r in exp.runs]
    assert tiny_sweep["before"] == {names[0]: "finished", names[1]: "finished", names[2]: "resume", names[3]: "new"}
    assert tiny_sweep["statuses"] == dict.fromkeys(names, "finished")
    for spec in exp.runs[:2]:  # finished runs were not touched
        assert spec.out.with_suffix(".json").stat().st_mtime_ns == tiny_sweep["stamps"][spec.name]
    for spec in exp.runs:
        card = read_card(spec.out)
        assert len(card["curve"]) == 2 and card["config"]["semantic"]["flip_p"] == spec.config["semantic"]["flip_p"]
        assert set(_metrics(card)) == {"val", "test", "train"}
        assert card["test_metrics"]["num_images"] == 8 and len(card["test_metrics"]["confusion_matrix"]) == 9
        info = card["experiment"]
        assert info["finished"] and info["threads"] == 1 and info["wall_s"] > 0 and info["cpu_s"] > 0
        assert not spec.out.with_name("model.resume.json").exists()  # a finished run keeps no state
    assert tiny_sweep["signature_changed"]  # what the Compare tab polls to refresh
    resumed = read_card(exp.runs[2].out)
    assert resumed["experiment"]["resumed"] == 1
    # stopped after epoch 1, resumed in another process: the same numbers as one uninterrupted run
    reference = tiny_sweep["reference"]
    for split, value in _metrics(resumed).items():
        assert value == pytest.approx(_metrics(reference)[split], abs=1e-6)
    assert [row["train_loss"] for row in resumed["curve"]] == pytest.approx(
        [row["train_loss"] for row in reference["curve"]], abs=1e-6
    )
    # seeds 0 and 1 are different runs
    assert _metrics(read_card(exp.runs[0].out)) != _metrics(read_card(exp.runs[1].out))
    # a run whose settings changed in the file is refused, not silently reused
    changed = parse_experiment(TINY.replace("epochs = 2", "epochs = 3"), "tiny", root=tiny_sweep["root"])
    assert {run_status(r, changed.evaluate) for r in changed.runs} == {"changed"}


@pytest.mark.slow
def test_the_report_numbers_are_the_cards_numbers(tiny_sweep, tmp_path):
    root = tiny_sweep["root"]
    written = write_report("tiny", root, tmp_path, tmp_path / "tiny.html")
    markdown = (tmp_path / "tiny.md").read_text(encoding="utf-8")
    assert written[0] == tmp_path / "tiny.md"
    for path in written[1:-1]:
        assert path.suffix == ".svg" and path.stat().st_size < 20_000 and path.read_text().startswith("<svg")
        assert f"(tiny/{path.name})" in markdown
    _, records = experiment_runs("tiny", root)
    for record in records:
        card = record.card
        row = next(line for line in markdown.splitlines() if line.startswith(f"| `{record.name}` |") and "/2 |" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        expected = [
            fmt(card[f"{s}_metrics"][k]) for s in ("train", "val", "test") for k in ("miou", "map", "pixel_accuracy")
        ]
        assert cells[3:12] == expected
        assert cells[12] == f"{card['experiment']['wall_s'] / 60:.1f}" and cells[14] == "1"
    # the seed groups' means are the means of the cards
    for flip in ("0.5", "0"):
        vals = [r.card["val_metrics"]["miou"] for r in records if f"flip_p={flip}," in r.name]
        row = next(line for line in markdown.splitlines() if line.startswith(f"| flip_p={flip} | 2 |"))
        assert fmt(sum(vals) / 2) in row
    page = (tmp_path / "tiny.html").read_text(encoding="utf-8")
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inline
    assert not re.search(r"<script[^>]+src=[\"']https?://", page)  # nothing fetched: works offline
    assert html_report("tiny", root).count("Plotly.newPlot") >= 3


def test_a_report_of_an_experiment_never_run_says_so(tmp_path):
    with pytest.raises(ExperimentError, match="no experiment named .nothing. has been run"):
        build_report("nothing", tmp_path)


@pytest.mark.slow
def test_the_compare_tab_lists_the_runs_through_gradio_client(tiny_sweep):
    gr = pytest.importorskip("gradio")
    from seg.modelstore import ModelStore
    from seg.ui import compare
    from seg.ui.devserver import close_app, connect

    store = ModelStore(REPO / "checkpoints")
    with gr.Blocks() as demo:
        compare.build(store, root=tiny_sweep["root"])
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = connect(url)
        listed = client.predict("tiny", api_name="/compare_runs")
        ids = [row[0] for row in listed["data"]]
        assert ids == [f"tiny/{r.name}" for r in tiny_sweep["exp"].runs]
        card = read_card(tiny_sweep["exp"].runs[0].out)
        assert listed["data"][0][4] == f"{card['val_metrics']['miou']:.4f}"
        everything = client.predict("all", api_name="/compare_runs")
        assert {"unet", "cnn", "prior"} <= {row[0] for row in everything["data"]}
        caption = client.predict(f"tiny/{tiny_sweep['exp'].runs[0].name}", api_name="/compare_predictions")
        assert "val mIoU" in caption and "image | truth | prediction" in caption
        assert "No run" in client.predict("tiny/missing", api_name="/compare_predictions")
    finally:
        close_app(demo)


@pytest.mark.slow
def test_torchrun_ranks_share_the_runs(sbd_root, tmp_path):
    pytest.importorskip("torch.distributed.run")
    file = tmp_path / "tiny.toml"
    file.write_text(TINY.replace("epochs = 2", "epochs = 1"), encoding="utf-8")
    env = dict(os.environ, SEG_RUNS_DIR=str(tmp_path / "runs"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29561",
            "-m",
            "seg.experiments",
            "experiment",
            str(file),
            "--quiet",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(rank 0/2)" in done.stdout and "(rank 1/2)" in done.stdout
    manifest = json.loads((tmp_path / "runs" / "tiny" / "experiment.json").read_text())
    assert len(manifest["runs"]) == 4
    for entry in manifest["runs"]:
        card = read_card(tmp_path / "runs" / "tiny" / entry["name"] / "model")
        assert card["experiment"]["finished"] and card["world_size"] == 1  # each rank trained its runs alone


@pytest.mark.slow
def test_sigterm_stops_a_parallel_sweep_and_the_next_one_finishes_it(sbd_root, tmp_path):
    import signal
    import time

    file = tmp_path / "tiny.toml"
    # Epochs of this grid take milliseconds: enough of them that the stop lands while both runs still train.
    file.write_text(TINY.replace("epochs = 2", "epochs = 12"), encoding="utf-8")
    env = dict(os.environ, SEG_RUNS_DIR=str(tmp_path / "runs"), PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "seg.experiments",
        "experiment",
        str(file),
        "--jobs",
        "2",
        "--threads",
        "1",
        "--quiet",
    ]
    sweep = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    deadline = time.time() + 300
    for line in sweep.stdout:
        lines.append(line)
        if ": epoch 1/12" in line or time.time() > deadline:
            break
    sweep.send_signal(signal.SIGTERM)
    rest, _ = sweep.communicate(timeout=300)
    output = "".join(lines) + rest
    assert sweep.returncode == 1, output
    assert "run the same command again to resume" in output
    exp = load_experiment(file, tmp_path / "runs")
    after_stop = [run_status(r, exp.evaluate) for r in exp.runs]
    assert "resume" in after_stop and after_stop.count("finished") < 4
    assert after_stop[2:] == ["new", "new"]  # runs queued behind the stopped ones did not start
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert {run_status(r, exp.evaluate) for r in exp.runs} == {"finished"}
