"""Deployment settings: which mode, where things live, which limits, from the environment and flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import pytest

from seg.deploy import MB, Deployment, DeploymentError, add_arguments, describe, parse_auth


def test_defaults_are_local_and_closed(tmp_path: Path):
    home = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "c")}
    d = Deployment.from_env(home)
    assert not d.public and d.mode == "local"
    assert d.labels_root == tmp_path / "data" / "seglab"  # the default workspace stays <root>/labels
    assert d.import_roots == () and not d.server_folder_import
    assert d.auth == () and not d.auth_enabled
    assert d.visitor_root == (tmp_path / "c" / "seglab" / "cache" / "visitors").resolve()
    assert (d.visitor_max_images, d.visitor_max_bytes, d.visitor_expiry_s) == (200, 200 * MB, 24 * 3600.0)
    assert (d.public_max_epochs, d.public_max_train_images, d.public_max_train_seconds, d.public_max_runs) == (
        5,
        200,
        600.0,
        1,
    )
    assert not any(p.exists() for p in (d.labels_root, d.visitor_root))  # reading settings creates nothing
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.public = True  # type: ignore[misc]


@pytest.mark.parametrize(
    "env, flag",
    [
        ({"SPACE_ID": "someone/seglab"}, False),
        ({"SEG_PUBLIC": "yes"}, False),
        ({"SEG_PUBLIC": "1"}, False),
        ({}, True),
        ({"SPACE_ID": "x", "SEG_PUBLIC": "0"}, False),
    ],
)
def test_public_mode_switches_on(env: dict, flag: bool, tmp_path: Path):
    env = env | {"SEG_IMPORT_ROOTS": str(tmp_path)}
    d = Deployment.from_env(env, public_flag=flag)
    assert d.public and d.mode == "public"
    assert d.import_roots == () and not d.server_folder_import  # never a server folder in public mode


def test_every_value_comes_from_the_environment(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    env = {
        "SEG_LABEL_DIR": str(tmp_path / "labels"),
        "SEG_IMPORT_ROOTS": f"{a}{os.pathsep}{b}{os.pathsep}{a}",
        "SEG_AUTH": "ann:s3cr:et, bob:pw",
        "SEG_VISITOR_DIR": str(tmp_path / "v"),
        "SEG_VISITOR_MAX_IMAGES": "12",
        "SEG_VISITOR_MAX_MB": "1.5",
        "SEG_VISITOR_EXPIRY_HOURS": "0.5",
        "SEG_MAX_VISITORS": "9",
        "SEG_PUBLIC_MAX_EPOCHS": "2",
        "SEG_PUBLIC_MAX_TRAIN_IMAGES": "30",
        "SEG_PUBLIC_MAX_TRAIN_SECONDS": "90",
        "SEG_PUBLIC_MAX_RUNS": "3",
    }
    d = Deployment.from_env(env)
    assert d.labels_root == (tmp_path / "labels").resolve()
    assert d.import_roots == (a.resolve(), b.resolve()) and d.server_folder_import
    assert d.auth == (("ann", "s3cr:et"), ("bob", "pw"))
    assert d.visitor_root == (tmp_path / "v").resolve()
    assert (d.visitor_max_images, d.visitor_max_bytes, d.visitor_expiry_s, d.max_visitors) == (
        12,
        int(1.5 * MB),
        1800.0,
        9,
    )
    assert (d.public_max_epochs, d.public_max_train_images, d.public_max_train_seconds, d.public_max_runs) == (
        2,
        30,
        90.0,
        3,
    )
    assert "s3cr" not in repr(d) and "s3cr" not in describe(d) and "ann" not in describe(d)


def test_flags_on_the_command_line():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--public", "--auth", "me:pw"])
    d = Deployment.from_args(args, {"SEG_AUTH": "other:x"})
    assert d.public and d.auth == (("me", "pw"),)  # the flag wins over the variable
    assert not Deployment.from_args(parser.parse_args([]), {}).public


@pytest.mark.parametrize(
    "env",
    [
        {"SEG_PUBLIC": "maybe"},
        {"SEG_VISITOR_MAX_IMAGES": "lots"},
        {"SEG_VISITOR_MAX_IMAGES": "0"},
        {"SEG_VISITOR_MAX_MB": "nan"},
        {"SEG_VISITOR_MAX_MB": "-1"},
        {"SEG_VISITOR_EXPIRY_HOURS": "inf"},
        {"SEG_PUBLIC_MAX_RUNS": "0"},
        {"SEG_PUBLIC_MAX_EPOCHS": "1e9"},
        {"SEG_IMPORT_ROOTS": "relative/photos"},
        {"SEG_IMPORT_ROOTS": "/"},
        {"SEG_IMPORT_ROOTS": "~/../.."},
        {"SEG_VISITOR_DIR": "visitors"},
        {"SEG_AUTH": "nopassword"},
        {"SEG_AUTH": ":pw"},
        {"SEG_AUTH": "user:"},
        {"SEG_AUTH": "a:b,,c:d"},
    ],
)
def test_malformed_settings_stop_the_app_with_a_message(env: dict):
    with pytest.raises(DeploymentError) as info:
        Deployment.from_env(env)
    assert next(iter(env)) in str(info.value)  # it names the variable to fix


def test_parse_auth_reports_the_flag_it_came_from():
    assert parse_auth("") == () and parse_auth("  ") == ()
    with pytest.raises(DeploymentError, match="--auth"):
        parse_auth("x", "--auth")


def test_training_is_bounded_only_in_public_mode():
    local = Deployment.from_env({})
    assert local.training_bounds(50, 1000) == local.training_bounds(50, 1000)
    bounds = local.training_bounds(50, 1000)
    assert (bounds.epochs, bounds.images, bounds.seconds, bounds.note) == (50, 1000, None, "")
    public = Deployment.from_env(
        {
            "SPACE_ID": "x",
            "SEG_PUBLIC_MAX_EPOCHS": "3",
            "SEG_PUBLIC_MAX_TRAIN_IMAGES": "40",
            "SEG_PUBLIC_MAX_TRAIN_SECONDS": "120",
        }
    )
    cut = public.training_bounds(50, 1000)
    assert (cut.epochs, cut.images, cut.seconds) == (3, 40, 120.0)
    assert "3 epochs" in cut.note and "40 images" in cut.note
    small = public.training_bounds(2, 10)
    assert (small.epochs, small.images, small.seconds, small.note) == (2, 10, 120.0, "")
    assert public.training_bounds(2).images == 40  # "all images" means the public maximum
