"""Predict at scale: inputs from files, folders and globs; outputs equal to one-by-one
prediction; unreadable files reported without stopping; resume; and two processes sharding
one folder so that every image is written exactly once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg.batch_predict import PredictReport, expand_inputs, predict_inputs, shard_from_env
from seg.config import REPO_ROOT
from seg.inference import Predictor
from seg.io import read_label_png

UNET = REPO_ROOT / "checkpoints" / "unet"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, sbd_root) -> Path:
    """Nine real images in two subfolders (two share a file name), one corrupt file, one text file."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    sources = sorted((sbd_root / "images").glob("*.jpg"))[:9]
    for i, source in enumerate(sources):
        target = folder / ("a" if i < 5 else "b") / source.name
        if i == 5:  # larger than the model's input, and a PNG
            Image.open(source).resize((640, 480)).save(target.with_suffix(".png"))
        else:
            shutil.copy(source, target)
    shutil.copy(sources[0], folder / "b" / sources[0].name)  # same name in another subfolder
    (folder / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def unet() -> Predictor:
    return Predictor.from_checkpoint(UNET, device="cpu", runtime="eager")


def test_expand_inputs_files_folders_globs_and_problems(image_folder):
    jobs, problems = expand_inputs([image_folder])
    names = [j.name for j in jobs]
    assert len(jobs) == 11 and names == sorted(names)  # 10 images + the broken one; never notes.txt
    assert any(n.startswith("a/") for n in names) and any(n.startswith("b/") for n in names)
    assert problems == []
    first = sorted((image_folder / "a").glob("*.jpg"))[0]
    jobs, problems = expand_inputs(
        [first, str(image_folder / "b" / "*.jpg"), image_folder / "missing.jpg", str(image_folder / "nothing-*.png")]
    )
    assert first.stem in [j.name for j in jobs] and len(jobs) == 1 + 3  # the file and b/*.jpg but its twin
    # b/ holds a copy named like a/'s first image: the second one with that output name is a problem
    assert [p for p in problems if "same output name" in p[1]]
    assert {p[0] for p in problems} >= {str(image_folder / "missing.jpg"), str(image_folder / "nothing-*.png")}


def test_outputs_equal_one_by_one_prediction_and_failures_are_reported(image_folder, tmp_path, unet):
    out = tmp_path / "out"
    report = predict_inputs(
        UNET,
        [image_folder, image_folder / "missing.jpg"],
        out,
        workers=1,
        batch_size=4,
        predictor=unet,
        progress=False,
        rank=0,
        world=1,
    )
    assert isinstance(report, PredictReport)
    assert len(report.written) == 10 and report.total == 12
    failed = dict(report.failures)
    assert set(failed) == {str(image_folder / "a" / "broken.jpg"), str(image_folder / "missing.jpg")}
    assert all(reason and "Traceback" not in reason for reason in failed.values())
    for job_source in report.written:
        source = Path(job_source)
        written = out / source.parent.name / f"{source.stem}.png"
        image = np.asarray(Image.open(source).convert("RGB"))
        expected = unet.predict(image).label
        with Image.open(written) as png:
            assert png.mode == "P" and png.getpalette()[:3] == list(unet.palette[0])
        np.testing.assert_array_equal(read_label_png(written), expected)
    again = predict_inputs(
        UNET, [image_folder], out, resume=True, workers=0, predictor=unet, progress=False, rank=0, world=1
    )
    assert again.written == [] and len(again.skipped_existing) == 10 and len(again.failures) == 1
    assert "10 already there" in again.summary() and "broken.jpg" in again.summary()


def test_the_command_writes_every_readable_image_and_exits_1_naming_the_rest(image_folder, tmp_path, capsys):
    """``seglab predict`` on a folder with a corrupt file: every other image is written, the corrupt one is
    named, and the exit status says that something was left out (a script cannot miss it)."""
    from seg.cli import main

    out = tmp_path / "cli"
    args = ["predict", "--checkpoint", str(UNET), str(image_folder), "--out", str(out), "--runtime", "eager"]
    assert main([*args, "--workers", "1"]) == 1
    printed = capsys.readouterr().out
    assert "10 written" in printed and "1 failed" in printed and "broken.jpg" in printed
    assert len(list(out.rglob("*.png"))) == 10
    fine = ["predict", "--checkpoint", str(UNET), str(image_folder / "b"), "--out", str(tmp_path / "b")]
    assert main([*fine, "--runtime", "eager", "--workers", "1"]) == 0  # nothing left out: 0
    assert "0 failed" in capsys.readouterr().out


def test_under_torchrun_a_share_with_a_failure_still_exits_0(image_folder, tmp_path, capsys, monkeypatch):
    """torchrun stops every process once one exits non-zero, so a rank whose share held the corrupt file
    names it and exits 0 (the other rank may still be writing); only a share with nothing written fails."""
    from seg.cli import main

    out = tmp_path / "ranks"
    args = ["predict", "--checkpoint", str(UNET), str(image_folder), "--out", str(out), "--runtime", "eager"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    printed = ""
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main([*args, "--workers", "1"]) == 0
        printed += capsys.readouterr().out
    assert printed.count("1 failed") == 1 and "broken.jpg" in printed
    assert len(list(out.rglob("*.png"))) == 10
    monkeypatch.setenv("RANK", "0")
    only_broken = ["predict", "--checkpoint", str(UNET), str(image_folder / "a" / "broken.jpg"), "--out", str(out)]
    assert main([*only_broken, "--runtime", "eager"]) == 1


def test_probabilities_on_request(image_folder, tmp_path, unet):
    source = sorted((image_folder / "a").glob("*.jpg"))[0]
    report = predict_inputs(UNET, [source], tmp_path, probs=True, workers=0, predictor=unet, progress=False)
    probs = np.load(tmp_path / f"{source.stem}.probs.npy")
    assert report.written and probs.shape[0] == len(unet.classes)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-2)


def test_shard_from_env(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert shard_from_env() == (1, 3)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError):
        shard_from_env()


SHARD_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from seg.batch_predict import predict_inputs
report = predict_inputs(sys.argv[1], [sys.argv[2]], sys.argv[3], runtime="eager", workers=1, progress=False)
print(json.dumps({"rank": report.rank, "world": report.world, "written": report.written,
                  "failures": [f[0] for f in report.failures]}))
"""


@pytest.mark.slow
def test_two_processes_write_every_image_exactly_once(image_folder, tmp_path):
    out = tmp_path / "sharded"
    processes = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            OMP_NUM_THREADS="1",
            PYTHONPATH=str(REPO_ROOT),
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", SHARD_SCRIPT, str(UNET), str(image_folder), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
            )
        )
    reports = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sorted(r["rank"] for r in reports) == [0, 1] and all(r["world"] == 2 for r in reports)
    written = [w for r in reports for w in r["written"]]
    assert len(written) == len(set(written)) == 10  # nobody wrote an image twice
    assert all(r["written"] for r in reports)  # both did a share
    assert sum(len(r["failures"]) for r in reports) == 1  # the broken file, reported once
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    jobs, _ = expand_inputs([image_folder])
    assert pngs == sorted(f"{j.name}.png" for j in jobs if "broken" not in j.name)


@pytest.mark.slow
def test_instance_checkpoints_write_id_pngs_and_json(pennfudan_root, tmp_path):
    from seg.instances.inference import InstancePredictor

    sources = sorted((pennfudan_root / "PNGImages").glob("*.png"))[:2]
    predictor = InstancePredictor.from_checkpoint(REPO_ROOT / "checkpoints" / "maskrcnn", runtime="eager")
    report = predict_inputs(
        REPO_ROOT / "checkpoints" / "maskrcnn", sources, tmp_path, workers=1, predictor=predictor, progress=False
    )
    assert len(report.written) == 2 and not report.failures
    for source in sources:
        record = json.loads((tmp_path / f"{source.stem}_instances.json").read_text())
        ids = np.asarray(Image.open(tmp_path / f"{source.stem}_instances.png"))
        expected = predictor.predict(np.asarray(Image.open(source).convert("RGB")))
        np.testing.assert_array_equal(ids, expected.instances)
        assert len(record["instances"]) == expected.num_instances
        assert record["width"] == ids.shape[1] and record["method"] == "maskrcnn"
        assert [i["area"] for i in record["instances"]] == [
            int((ids == k + 1).sum()) for k in range(expected.num_instances)
        ]
    assert torch.get_num_threads() >= 1
