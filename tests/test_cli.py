"""Command line: help for every subcommand, offline download, results table."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from seg.cli import build_parser, main
from seg.report import END, START, readme_block, results_markdown, update_readme


@pytest.mark.parametrize("command", ["train", "eval", "predict", "download", "results-table", "quantize"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.slow
def test_download_offline_fails_fast_and_says_what_to_do(tmp_path):
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "seg", "download", "sbd", "--root", str(tmp_path), "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 0:
        pytest.skip("the network is reachable: the archive downloaded")
    assert "iccv09Data.tar.gz" in proc.stderr  # names the URL
    assert str(tmp_path / "iccv09Data") in proc.stderr  # and the folder to fill by hand
    assert time.time() - start < 90
    assert not any(p.name.startswith(".download") for p in tmp_path.iterdir())  # temp folder cleaned up


def test_download_verifies_an_existing_folder(tmp_path, sbd_root):
    from seg.data.download import SOURCES, DownloadError, verify

    verify_target = tmp_path / "iccv09Data"
    (verify_target / "images").mkdir(parents=True)
    (verify_target / "labels").mkdir()
    (verify_target / "images" / "0000051.jpg").write_bytes((sbd_root / "images" / "0000051.jpg").read_bytes())
    (verify_target / "labels" / "0000051.regions.txt").write_bytes(b"0 0\n")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        verify(verify_target, SOURCES["sbd"])


def test_results_table_is_generated_from_cards(tmp_path):
    from seg.checkpoints import save_checkpoint
    from seg.models import create

    save_checkpoint(
        tmp_path / "m",
        create("cnn", width=4),
        {
            "task": "semantic",
            "encoder_init": "random",
            "val_metrics": {"miou": 0.5, "map": 0.25, "pixel_accuracy": 0.75},
        },
    )
    table = results_markdown(tmp_path)
    assert "| m | cnn | random |" in table and "| 0.500 / – | 0.250 / – | 0.750 / – |" in table  # val / test
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\nrest\n")
    assert update_readme(readme, tmp_path) is True
    assert readme_block(readme) == table and readme.read_text().endswith("rest\n")
    assert update_readme(readme, tmp_path) is False


def test_project_readme_table_matches_the_shipped_cards():
    from pathlib import Path

    readme = Path(__file__).resolve().parent.parent / "README.md"
    assert readme_block(readme) == results_markdown(), "run: python -m seg results-table --write README.md"


def test_unknown_model_is_refused(capsys):
    assert main(["train", "--model", "nope", "--out", "x"]) == 2


@pytest.mark.slow
def test_quantize_re_measures_a_semantic_checkpoint_on_val(tmp_path, sbd_root):
    import json

    from seg.checkpoints import save_checkpoint
    from seg.evaluate import evaluate_semantic_checkpoint
    from seg.models import create

    before = {"miou": 0.5, "map": 0.25, "pixel_accuracy": 0.75, "val_loss": 1.0, "score": 0.5}
    save_checkpoint(
        tmp_path / "m",
        create("cnn", width=8),
        {"task": "semantic", "encoder_init": "random", "val_metrics": before, "command": "train it"},
    )
    assert (
        main(["quantize", "--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / "q"), "--data", str(sbd_root)])
        == 0
    )
    card = json.loads((tmp_path / "q.json").read_text())
    assert card["weights_dtype"].startswith("int8") and card["name"] == "q" and card["command"] == "train it"
    assert card["quantized_from"]["weights_dtype"] == "float16"
    assert card["quantized_from"]["bytes"] == (tmp_path / "m.safetensors").stat().st_size
    assert card["val_metrics_before_quantization"] == before
    fresh = evaluate_semantic_checkpoint(tmp_path / "q", sbd_root, "val")
    assert card["val_metrics"]["miou"] == pytest.approx(fresh["miou"]) == pytest.approx(card["val_metrics"]["score"])
    assert "val_loss" not in card["val_metrics"]  # not re-measured: only in the "before" record


def test_a_wrong_output_path_is_said_before_any_work(tmp_path, capsys, monkeypatch):
    """``--out`` that is a file, ``--json`` that is a folder, ``--record`` of part of a split: refused at
    once, with the flag named, before a model is loaded or a split evaluated (no traceback after minutes)."""
    import seg.cli

    image = tmp_path / "a.png"
    image.write_bytes(b"not read")
    loaded = []
    monkeypatch.setattr(seg.cli, "_readable_checkpoint", lambda args: loaded.append(args) or None)
    assert main(["predict", "--checkpoint", "unet", str(image), "--out", str(image)]) == 2
    assert f"--out {image} is a file, not a folder" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", "unet", str(image), "--out", str(image / "sub")]) == 2
    assert "cannot be made" in capsys.readouterr().err
    assert not loaded

    monkeypatch.setattr(seg.cli, "resolve_checkpoint", lambda *a: pytest.fail("evaluated before refusing"))
    assert main(["eval", "--checkpoint", "unet", "--json", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "unet", "--record", "--limit", "3"]) == 2
    assert "--record measures the whole split; drop --limit" in capsys.readouterr().err


def test_results_table_says_what_is_wrong_with_its_paths(tmp_path, capsys):
    plain = tmp_path / "plain.md"
    plain.write_text("no results block here\n")
    assert main(["results-table", "--write", str(tmp_path / "missing.md")]) == 1
    assert "No such file or directory" in capsys.readouterr().err
    assert main(["results-table", "--write", str(tmp_path)]) == 1
    assert "Is a directory" in capsys.readouterr().err
    assert main(["results-table", "--write", str(plain)]) == 1
    assert "has no <!-- results:start -->" in capsys.readouterr().err
    assert plain.read_text() == "no results block here\n"
    assert main(["results-table", "--checkpoints", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
