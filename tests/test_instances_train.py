"""End to end on a few real images: train 1 epoch through the CLI, reload, evaluate, predict; Mask R-CNN."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seg.checkpoints import load_checkpoint
from seg.cli import main
from seg.instances.data import ids_for_split, load_sample
from seg.instances.ensemble import combine
from seg.instances.inference import FILL_SCALE_OPTIONS, TTA_OPTIONS, InstancePredictor, params_from_card
from seg.instances.task import make_task
from seg.instances.tune import TUNE_MIN_GAIN
from seg.io import save_instance_png
from seg.models import create
from seg.models.encoders import EncoderWeightsError

REPORT_KEYS = {"mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "count_error", "mean_best_iou", "num_images"}


def train_dwt(data, out, flags: str, init_from=None) -> int:
    """``seglab train --model dwt`` for one quiet epoch with ``flags`` (space-separated) added; the exit code."""
    extra = ["--init-from", str(init_from)] if init_from is not None else []
    command = ["train", "--model", "dwt", "--data", str(data), "--out", str(out), "--epochs", "1", "--quiet"]
    return main([*command, *flags.split(), *extra])


@pytest.fixture(scope="module")
def dwt_checkpoint(pennfudan_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "dwt"
    code = train_dwt(pennfudan_root, out, "--inst-max-images 6 --inst-val-images 3 --arch base_channels=8")
    assert code == 0
    return out


def test_dwt_one_epoch_writes_a_usable_checkpoint(dwt_checkpoint):
    model, card = load_checkpoint(dwt_checkpoint)
    assert card["architecture"] == "dwt" and card["task"] == "instances"
    assert card["energy_edges"][:3] == [0, 1, 2] and card["work_height"] == 224
    assert card["encoder_init"].startswith("random") and card["pretrained"] is False
    assert set(card["val_metrics"]["postprocess"]) == {
        "cut_level",
        "min_size",
        "fg_threshold",
        "min_seed",
        "alternatives",
    }
    assert card["curve"][0]["epoch"] == 1 and np.isfinite(card["curve"][0]["train_loss"])
    assert dwt_checkpoint.with_suffix(".safetensors").stat().st_size < 2_000_000  # fp16, tiny model


def test_predictor_works_at_the_original_size(dwt_checkpoint, pennfudan_root):
    sample = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0])
    predictor = InstancePredictor.from_checkpoint(dwt_checkpoint)
    result = predictor.predict(sample.image)
    assert result.instances.shape == sample.instances.shape and result.instances.dtype == np.int32
    assert result.energy.shape == sample.instances.shape and result.foreground.max() <= 1.0
    assert len(result.scores) == len(result.boxes) == result.instances.max()
    baseline = InstancePredictor.from_checkpoint(dwt_checkpoint, method="components").predict(sample.image)
    assert baseline.instances.shape == sample.instances.shape


def test_eval_and_predict_commands(dwt_checkpoint, pennfudan_root, tmp_path, capsys):
    out_json = tmp_path / "metrics.json"
    assert (
        main(
            [
                "eval-instances",
                "--checkpoint",
                str(dwt_checkpoint),
                "--data",
                str(pennfudan_root),
                "--split",
                "test",
                "--limit",
                "4",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    metrics = json.loads(out_json.read_text())
    assert REPORT_KEYS <= set(metrics) and metrics["num_images"] == 4
    image_id = ids_for_split(pennfudan_root, "test")[0]
    image = pennfudan_root / "PNGImages" / f"{image_id}.png"
    assert (
        main(["predict-instances", "--checkpoint", str(dwt_checkpoint), str(image), "--out", str(tmp_path / "pred")])
        == 0
    )
    with Image.open(tmp_path / "pred" / f"{image_id}_instances.png") as png:
        assert png.size == Image.open(image).size and png.mode == "L"
        ids = np.asarray(png)
    record = json.loads((tmp_path / "pred" / f"{image_id}_instances.json").read_text())
    assert len(record["instances"]) == ids.max()
    assert all(0 <= i["score"] <= 1 and len(i["box_xyxy"]) == 4 for i in record["instances"])
    # the shared commands read the card's task: predict and eval serve instance checkpoints as well
    assert main(["predict", "--checkpoint", str(dwt_checkpoint), str(image), "--out", str(tmp_path / "p2")]) == 0
    assert json.loads((tmp_path / "p2" / f"{image_id}_instances.json").read_text())["instances"] == record["instances"]
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(dwt_checkpoint),
                "--data",
                str(pennfudan_root),
                "--split",
                "test",
                "--limit",
                "4",
                "--json",
                str(tmp_path / "m2.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m2.json").read_text())["mask_ap"] == metrics["mask_ap"]


def test_instance_png_goes_16_bit_past_255(tmp_path):
    ids = np.arange(300 * 4, dtype=np.int32).reshape(30, 40) % 300
    save_instance_png(tmp_path / "many.png", ids)
    with Image.open(tmp_path / "many.png") as png:
        assert png.mode.startswith("I") and np.array_equal(np.asarray(png).astype(np.int32), ids)


@pytest.mark.slow
def test_maskrcnn_trains_validates_and_round_trips(pennfudan_root, tmp_path):
    torch.manual_seed(0)
    model = create("maskrcnn", num_classes=2)
    task = make_task("maskrcnn", pennfudan_root, max_images=2, val_images=1)
    batch = next(iter(task.train_batches(1)))
    assert all(t["masks"].shape[0] == len(t["boxes"]) for t in batch["targets"])
    model.train()
    loss = task.train_step(model, batch, torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.body.conv1.weight.grad is not None
    metrics = task.validate(model, torch.device("cpu"))
    assert REPORT_KEYS <= set(metrics) and "score" in metrics
    from seg.checkpoints import save_checkpoint

    stem = save_checkpoint(tmp_path / "mrcnn", model, {"task": "instances", "work_height": 320})
    assert stem.with_suffix(".safetensors").stat().st_size < 15_000_000  # fits the shared budget
    predictor = InstancePredictor.from_checkpoint(stem)
    rgb = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0]).image
    result = predictor.predict(rgb)
    assert predictor.detector and result.instances.shape == rgb.shape[:2]
    assert len(result.scores) == result.instances.max()


def test_mask_rcnn_views_are_mirrored_and_rescaled_back_onto_the_image(pennfudan_root):
    """Each test-time view's masks land on the image: the mirrored view of an image is the plain view
    of its mirror, flipped back; a 1.25x view is resized back and leaves the model's own size alone.
    With mirroring, the prediction of a mirrored image is the mirror of the prediction."""
    from seg.config import REPO_ROOT
    from seg.instances.inference import detector_views
    from seg.runtime import DeferredServing

    stem = REPO_ROOT / "checkpoints" / "maskrcnn"
    predictor = InstancePredictor.from_checkpoint(stem, flip=True, scales=(1.0,))
    rgb = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0]).image
    mirror = np.ascontiguousarray(rgb[:, ::-1])
    views = detector_views(predictor.serving, rgb, True, (1.0, 1.25))
    assert len(views) == 4 and all(masks.shape == (len(scores), *rgb.shape[:2]) for scores, masks in views)
    assert predictor.model.transform.min_size == (320,) and predictor.model.transform.max_size == 560
    assert len(views[0][0]) > 0 and not np.array_equal(views[0][1], views[2][1][: len(views[0][1])])
    ((mirror_scores, mirror_masks),) = detector_views(predictor.serving, mirror, False, (1.0,))
    np.testing.assert_allclose(views[1][0], mirror_scores, atol=1e-3)
    assert np.mean((views[1][1] > 0.5) == (mirror_masks[:, :, ::-1] > 0.5)) > 0.999
    result, of_mirror = predictor.predict(rgb), predictor.predict(mirror)
    assert result.num_instances == of_mirror.num_instances > 0
    np.testing.assert_allclose(np.sort(result.scores), np.sort(of_mirror.scores), atol=1e-3)
    assert np.mean((result.instances > 0) == (of_mirror.instances[:, ::-1] > 0)) > 0.999
    # the dashboard's serving wrapper (eager until a backend is ready) gives the same views
    deferred = detector_views(DeferredServing(predictor.serving), rgb, True, (1.0, 1.25))
    for (scores, masks), (wrapped_scores, wrapped_masks) in zip(views, deferred):
        np.testing.assert_array_equal(scores, wrapped_scores)
        np.testing.assert_array_equal(masks, wrapped_masks)
    # tta=False for one call is a predictor without test-time views
    plain = InstancePredictor.from_checkpoint(stem, flip=False, scales=(1.0,)).predict(rgb)
    np.testing.assert_array_equal(predictor.predict(rgb, tta=False).instances, plain.instances)
    assert not np.array_equal(result.all_scores, plain.all_scores)


def test_a_mask_rcnn_cuts_its_soft_masks_where_its_card_says(pennfudan_root):
    from seg.config import REPO_ROOT
    from seg.instances.inference import MASK_THRESHOLD, detector_views

    base = InstancePredictor.from_checkpoint(REPO_ROOT / "checkpoints" / "maskrcnn", flip=False, scales=(1.0,))
    rgb = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0]).image
    ((scores, soft),) = detector_views(base.serving, rgb, False, (1.0,))
    assert (
        InstancePredictor(base.model, {k: v for k, v in base.card.items() if k != "mask_threshold"}).mask_threshold
        == MASK_THRESHOLD
    )
    for cut in (0.3, 0.7):
        predictor = InstancePredictor(base.model, base.card | {"mask_threshold": cut}, flip=False, scales=(1.0,))
        result = predictor.predict(rgb)
        np.testing.assert_array_equal(result.all_masks, soft > cut)
        np.testing.assert_array_equal(result.all_scores, scores)
    assert (soft > 0.3).sum() > (soft > 0.7).sum()


def test_dwt_work_height_sets_the_training_and_card_height(pennfudan_root):
    from seg.cli import build_parser

    args = build_parser().parse_args(["train", "--model", "dwt", "--out", "x", "--inst-work-height", "160"])
    assert args.work_height == 160
    task = make_task("dwt", pennfudan_root, max_images=2, val_images=1, work_height=160)
    assert {s.image.shape[0] for s in task.train + task.val} == {160}
    assert task.card_info()["work_height"] == 160  # what InstancePredictor resizes to
    batch = next(iter(task.train_batches(1)))
    assert batch["levels"].max() > 0 and batch["images"].shape[-2:] == (224, 224)  # default crop, padded
    with pytest.raises(ValueError, match="DWT setting"):
        make_task("maskrcnn", pennfudan_root, max_images=1, val_images=1, work_height=160)


def test_dwt_fg_balance_reaches_the_training_loss_and_the_card(pennfudan_root):
    from seg.cli import build_parser

    args = build_parser().parse_args(["train", "--model", "dwt", "--out", "x", "--inst-fg-balance", "1.5"])
    assert args.fg_balance == 1.5
    plain = make_task("dwt", pennfudan_root, max_images=2, val_images=1)
    balanced = make_task("dwt", pennfudan_root, max_images=2, val_images=1, fg_balance=1.5)
    assert plain.card_info()["loss"]["fg_balance"] == 0.0 and balanced.card_info()["loss"]["fg_balance"] == 1.5
    torch.manual_seed(0)
    model = create("dwt", num_classes=2, base_channels=4).eval()
    batch = next(iter(plain.train_batches(1)))
    # same batch, same weights: the balanced loss adds a positive term, the plain one is unchanged
    with torch.no_grad():
        assert float(balanced.train_step(model, batch, torch.device("cpu"))) > float(
            plain.train_step(model, batch, torch.device("cpu"))
        )
    with pytest.raises(ValueError, match="DWT loss setting"):
        make_task("maskrcnn", pennfudan_root, max_images=1, val_images=1, fg_balance=1.0)


def test_copy_paste_reaches_the_batches_of_both_tasks_and_their_cards(pennfudan_root):
    from seg.cli import build_parser
    from seg.training import InstanceOptions

    args = build_parser().parse_args(["train", "--model", "maskrcnn", "--out", "x", "--inst-copy-paste", "0.5"])
    assert args.copy_paste == 0.5
    with pytest.raises(ValueError, match="--inst-copy-paste"):
        InstanceOptions(copy_paste=1.5)
    plain = make_task("dwt", pennfudan_root, max_images=6, val_images=1)
    again = make_task("dwt", pennfudan_root, max_images=6, val_images=1, copy_paste=0.0)
    pasted = make_task("dwt", pennfudan_root, max_images=6, val_images=1, copy_paste=1.0)
    assert plain.card_info()["copy_paste"] == 0.0 and pasted.card_info()["copy_paste"] == 1.0
    first = [next(iter(t.train_batches(1))) for t in (plain, again, pasted)]
    assert torch.equal(first[0]["images"], first[1]["images"])  # off: the same draws as before it existed
    count = [sum(int(ids.max()) for ids in b["instances"]) for b in first]
    assert count[2] > count[0]  # every crop got pedestrians from another image
    for ids, levels in zip(first[2]["instances"], first[2]["levels"]):
        assert torch.all(levels[ids == 0] == 0) and torch.all(levels[ids > 0] >= 0)
    detector = make_task("maskrcnn", pennfudan_root, max_images=4, val_images=1, copy_paste=1.0)
    assert detector.card_info()["copy_paste"] == 1.0
    batch = next(iter(detector.train_batches(1)))
    for target in batch["targets"]:
        masks, boxes = target["masks"].bool(), target["boxes"]
        assert len(masks) == len(boxes) >= 1 and masks.flatten(1).sum(1).min() >= 100  # slivers dropped
        for mask, box in zip(masks, boxes):  # each box is its mask's, after the paste covered some pixels
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_paste_shrink_reaches_the_batches_and_the_card_and_needs_copy_paste(pennfudan_root):
    from seg.cli import build_parser
    from seg.training import InstanceOptions

    argv = ["train", "--model", "dwt", "--out", "x", "--inst-copy-paste", "0.5", "--inst-paste-shrink", "0.3"]
    assert build_parser().parse_args(argv).paste_shrink == 0.3
    with pytest.raises(ValueError, match="--inst-paste-shrink"):
        InstanceOptions(paste_shrink=0.0)
    with pytest.raises(ValueError, match="--inst-copy-paste"):
        make_task("dwt", pennfudan_root, max_images=2, val_images=1, paste_shrink=0.5)
    same = make_task("dwt", pennfudan_root, max_images=6, val_images=1, copy_paste=1.0)
    shrunk = make_task("dwt", pennfudan_root, max_images=6, val_images=1, copy_paste=1.0, paste_shrink=0.3)
    assert same.card_info()["copy_paste_shrink"] == 1.0 and shrunk.card_info()["copy_paste_shrink"] == 0.3
    first = [next(iter(t.train_batches(1))) for t in (same, shrunk)]
    assert not torch.equal(first[0]["instances"], first[1]["instances"])
    for ids, levels in zip(first[1]["instances"], first[1]["levels"]):
        assert torch.all(levels[ids == 0] == 0) and int(ids.max()) >= 1


def test_dwt_direction_head_trains_beside_the_energy_and_inference_never_runs_it(
    pennfudan_root, dwt_checkpoint, tmp_path, capsys
):
    from seg.checkpoints import warm_start

    torch.manual_seed(0)
    model = create("dwt", num_classes=2, base_channels=4, direction_head=True).train()
    x = torch.rand(2, 3, 64, 48)
    out = model(x)
    assert model.direction_logits.shape == (2, 2, 64, 48) and out.shape[:2] == (2, 2 + model.energy_levels)
    plain = create("dwt", num_classes=2, base_channels=4).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("direction_head.")})
    model.eval().direction_logits = None
    assert torch.equal(model(x), plain(x)) and model.direction_logits is None, "inference is the two-head DWT's"

    plain_task = make_task("dwt", pennfudan_root, max_images=2, val_images=1)
    task = make_task("dwt", pennfudan_root, max_images=2, val_images=1, direction=1.0)
    assert task.card_info()["loss"]["direction"] == 1.0 and plain_task.card_info()["loss"]["direction"] == 0.0
    batch = next(iter(task.train_batches(1)))
    assert batch["distance"].shape == batch["instances"].shape and "distance" not in next(
        iter(plain_task.train_batches(1))
    )
    model.train()
    with torch.no_grad():  # same batch, same weights: the direction term is added on top of the plain loss
        with_direction = float(task.train_step(model, batch, torch.device("cpu")))
        assert model.direction_logits is None, "the step takes the head's output: no graph held past it"
        assert with_direction > float(plain_task.train_step(plain.train(), batch, torch.device("cpu")))

    flags = "--inst-max-images 2 --inst-val-images 1 --arch base_channels=8"
    assert train_dwt(pennfudan_root, tmp_path / "dir", flags + " --inst-direction 1") == 0
    card = json.loads((tmp_path / "dir.json").read_text())
    assert card["arch_kwargs"]["direction_head"] is True and card["config"]["instances"]["direction"] == 1.0
    trained, _ = load_checkpoint(tmp_path / "dir")
    assert trained.direction_head is not None
    assert InstancePredictor(trained, card).predict(np.zeros((120, 90, 3), np.uint8)).instances.shape == (120, 90)
    # warm restarts may drop the head or add a fresh one, and the card says which
    plain8 = create("dwt", num_classes=2, base_channels=8)
    assert "direction heads are dropped" in warm_start(plain8, tmp_path / "dir")["loaded"]
    with_head = create("dwt", num_classes=2, base_channels=8, direction_head=True)
    assert "direction heads start fresh" in warm_start(with_head, dwt_checkpoint)["loaded"]
    # members with and without the head combine into one ensemble, which has none
    ensemble_card = combine([tmp_path / "dir", dwt_checkpoint], tmp_path / "both")
    assert "direction_head" not in ensemble_card["arch_kwargs"]
    ensemble, _ = load_checkpoint(tmp_path / "both")
    assert all(member.direction_head is None for member in ensemble.members)

    with pytest.raises(ValueError, match="DWT loss setting"):
        make_task("maskrcnn", pennfudan_root, max_images=1, val_images=1, direction=1.0)
    assert main(["train", "--model", "unet", "--out", "x", "--inst-direction", "1"]) == 2
    assert "--inst-direction applies to instance models only" in capsys.readouterr().err
    assert main(["train", "--model", "dwt", "--out", "x", "--inst-direction", "-1"]) == 2
    assert "--inst-direction must be 0 or more" in capsys.readouterr().err


def test_dwt_foreground_gate_feeds_the_energy_head_and_keeps_its_architecture(pennfudan_root, dwt_checkpoint, tmp_path):
    from seg.checkpoints import warm_start

    torch.manual_seed(0)
    gated = create("dwt", num_classes=2, base_channels=4, fg_gate=True).eval()
    plain = create("dwt", num_classes=2, base_channels=4).eval()
    assert gated.energy_head[0][0].in_channels == plain.energy_head[0][0].in_channels + 1
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        before = gated(x)
        gated.fg_head[-1].bias.copy_(torch.tensor([-20.0, 20.0]))  # foreground everywhere: the gate opens
        after = gated(x)
        plain_before = plain(x)
        plain.fg_head[-1].bias.copy_(torch.tensor([-20.0, 20.0]))
        plain_after = plain(x)
    assert not torch.allclose(before[:, 2:], after[:, 2:]), "the gated energy reads the foreground head"
    assert torch.equal(plain_before[:, 2:], plain_after[:, 2:]), "the plain energy does not"
    gated.train()
    gated(torch.rand(2, 3, 48, 64))[:, 2:].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in gated.fg_head.parameters()), "the gate is detached"
    concat = create("dwt", num_classes=2, base_channels=4, fg_gate="concat").eval()
    with torch.no_grad():
        gated.fg_head[-1].bias.zero_()  # a gate that is not all open
        # the same weights, the features not gated: another energy, the same foreground
        concat.load_state_dict(gated.state_dict())
        assert torch.equal(concat(x)[:, :2], gated.eval()(x)[:, :2])
        assert not torch.allclose(concat(x)[:, 2:], gated(x)[:, 2:])
    with pytest.raises(ValueError, match="fg_gate is one of"):
        create("dwt", num_classes=2, fg_gate="sometimes")
    with pytest.raises(ValueError, match="fg_gate is one of"):
        create("dwt", num_classes=2, fg_gate=[1])

    flags = "--inst-max-images 2 --inst-val-images 1 --arch base_channels=8 --arch fg_gate=true"
    assert train_dwt(pennfudan_root, tmp_path / "gated", flags) == 0
    card = json.loads((tmp_path / "gated.json").read_text())
    assert card["arch_kwargs"]["fg_gate"] is True
    trained, _ = load_checkpoint(tmp_path / "gated")
    assert trained.fg_gate
    assert InstancePredictor(trained, card).predict(np.zeros((120, 90, 3), np.uint8)).instances.shape == (120, 90)
    # a plain DWT's energy head does not fit a gated one: said, not a shape error from deep inside torch
    with pytest.raises(ValueError, match="use the --arch values on its card"):
        warm_start(create("dwt", num_classes=2, base_channels=8, fg_gate=True), dwt_checkpoint)
    assert (
        "warm restart"
        in warm_start(create("dwt", num_classes=2, base_channels=8, fg_gate=True), tmp_path / "gated")["loaded"]
    )
    with pytest.raises(ValueError, match="architecture or energy levels differ"):
        combine([tmp_path / "gated", dwt_checkpoint], tmp_path / "mixed")


def test_maskrcnn_backbone_from_a_local_file(tmp_path):
    from torchvision.models import resnet18

    state = {k: v for k, v in resnet18().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "r18.pth")  # the official torchvision file's format
    model = create("maskrcnn", encoder_init=str(tmp_path / "r18.pth"))
    assert torch.equal(model.backbone.body.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.backbone.body.layer3[0].bn1.running_var, state["layer3.0.bn1.running_var"])
    with pytest.raises(EncoderWeightsError, match="not found"):
        create("maskrcnn", encoder_init=str(tmp_path / "missing.pth"))
    torch.save({"not": "a tensor", "obj": object}, tmp_path / "bad.pth")
    with pytest.raises(EncoderWeightsError):
        create("maskrcnn", encoder_init=str(tmp_path / "bad.pth"))


def test_coco_init_refuses_other_backbones():
    with pytest.raises(ValueError, match="resnet50"):
        create("maskrcnn", encoder_init="coco")


@pytest.mark.slow
def test_tune_writes_postprocess_into_the_card(dwt_checkpoint, pennfudan_root):
    assert (
        main(["tune-instances", "--checkpoint", str(dwt_checkpoint), "--data", str(pennfudan_root), "--limit", "3"])
        == 0
    )
    card = json.loads(dwt_checkpoint.with_suffix(".json").read_text())
    assert set(card["postprocess"]) == {"cut_level", "min_size", "fg_threshold", "min_seed", "alternatives"}
    assert card["postprocess_tuning"]["num_images"] == 3
    predictor = InstancePredictor.from_checkpoint(dwt_checkpoint)
    assert predictor.params.min_seed == card["postprocess"]["min_seed"]
    assert predictor.params.alternatives is card["postprocess"]["alternatives"]
    older = {k: v for k, v in card["postprocess"].items() if k != "alternatives"}  # a card from before them
    assert params_from_card({"postprocess": older}).alternatives is False
    # tta auto compared every setting and kept the best; the predictor follows the card
    compared = card["postprocess_tuning"]["compared"]
    assert set(compared) == {"none", "flip", "scales", "flip+scales"}
    # then the enlarged alternative pass, kept only if it raised val mask AP
    tuning = card["postprocess_tuning"]
    assert set(tuning["alternative_scales_compared"]) == {"none", "1.5x"}
    assert card["alternative_scales"] == tuning["alternative_scales"] and card["alternative_scales"] in ([], [1.5])
    assert (card["alternative_scales"] == [1.5]) == (
        tuning["alternative_scales_compared"]["1.5x"] > tuning["alternative_scales_compared"]["none"] + TUNE_MIN_GAIN
    )
    assert predictor.alternative_scales == tuple(card["alternative_scales"])
    # before them, the enlarged passes that fill the partition: the cheapest within TUNE_MIN_GAIN of the
    # best val mask AP of the partition alone
    fills = tuning["fill_scales_compared"]
    assert list(fills) == ["none"] + ["+".join(f"{s:g}x" for s in option) for option in FILL_SCALE_OPTIONS]
    chosen = "+".join(f"{s:g}x" for s in card["fill_scales"]) or "none"
    assert card["fill_scales"] == tuning["fill_scales"] == card["val_metrics"]["fill_scales"]
    assert fills[chosen] >= max(fills.values()) - TUNE_MIN_GAIN
    assert all(fills[name] < max(fills.values()) - TUNE_MIN_GAIN for name in list(fills)[: list(fills).index(chosen)])
    assert predictor.fill_scales == tuple(card["fill_scales"])
    best = card["postprocess_tuning"]["tta"]
    assert TTA_OPTIONS[best] == (card["tta_flip"], tuple(card["tta_scales"]))
    # the cheapest setting within TUNE_MIN_GAIN of the best: a dearer one must earn its time
    best_ap = max(c["mask_ap"] for c in compared.values())
    order = list(TTA_OPTIONS)
    assert compared[best]["mask_ap"] >= best_ap - TUNE_MIN_GAIN
    assert all(compared[name]["mask_ap"] < best_ap - TUNE_MIN_GAIN for name in order[: order.index(best)])
    assert predictor.flip is card["tta_flip"] and predictor.scales == tuple(card["tta_scales"])
    assert InstancePredictor.from_checkpoint(dwt_checkpoint, flip=not card["tta_flip"]).flip is not card["tta_flip"]
    assert InstancePredictor.from_checkpoint(dwt_checkpoint, scales=(1.0, 1.5)).scales == (1.0, 1.5)
    # tta=False for one call is the same as a predictor without test-time augmentation
    rgb = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0]).image
    plain = InstancePredictor.from_checkpoint(dwt_checkpoint, flip=False, scales=(1.0,)).predict(rgb)
    with_tta = InstancePredictor.from_checkpoint(dwt_checkpoint, flip=True, scales=(1.0, 1.25))
    np.testing.assert_array_equal(with_tta.predict(rgb, tta=False).foreground, plain.foreground)
    assert not np.array_equal(with_tta.predict(rgb).foreground, plain.foreground)


def test_scale_tta_averages_an_enlarged_pass_in_working_pixels():
    from seg.instances.inference import dwt_heads

    torch.manual_seed(0)
    model = create("dwt", num_classes=2, base_channels=8, depth=2).eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        fg, energy = dwt_heads(model, x, scales=(1.0, 1.5))
        plain_fg, plain_energy = dwt_heads(model, x)
        big = torch.nn.functional.interpolate(x, size=(48, 72), mode="bilinear", align_corners=False)
        big_fg, big_energy = dwt_heads(model, big)
        back = torch.nn.functional.interpolate(
            torch.cat([big_fg, big_energy / 1.5], 1), size=(32, 48), mode="bilinear", align_corners=False
        )
    assert fg.shape == energy.shape == (1, 1, 32, 48)
    torch.testing.assert_close(fg, (plain_fg + back[:, :1]) / 2)
    torch.testing.assert_close(energy, (plain_energy + back[:, 1:]) / 2)  # levels are px: 1.5x deeper -> / 1.5


def test_a_pass_in_strips_keeps_each_strips_share_and_matches_the_whole_pass():
    """A fill pass runs the enlarged image as vertical strips with some context past each share: for a
    network that looks at each pixel alone the stitched maps are the whole pass's; for a U-Net they
    differ only near the seams, where a strip's context ends."""
    from seg.instances.inference import MAX_STRIP_WIDTH, STRIP_OVERLAP, dwt_pass, strip_inputs
    from seg.instances.targets import ENERGY_EDGES

    torch.manual_seed(0)
    x = torch.rand(1, 3, 40, 100)
    per_pixel = torch.nn.Conv2d(3, 2 + len(ENERGY_EDGES), 1).eval()
    model = create("dwt", num_classes=2, base_channels=8, depth=2).eval()
    with torch.inference_mode():
        for flip in (False, True):
            whole = dwt_pass(per_pixel, x, flip, 2.0)
            for strips in (2, 3):
                torch.testing.assert_close(dwt_pass(per_pixel, x, flip, 2.0, strips), whole)
        fg, energy = dwt_pass(model, x, False, 2.0, strips=2)
        whole_fg, whole_energy = dwt_pass(model, x, False, 2.0)
    assert fg.shape == energy.shape == (1, 1, 40, 100)
    # away from the seam (x = 50 here, 100 in the enlarged image) a strip saw what the whole pass saw
    far = [c for c in range(100) if abs(2 * c - 100) > STRIP_OVERLAP]
    torch.testing.assert_close(fg[..., far], whole_fg[..., far], atol=1e-4, rtol=0)
    torch.testing.assert_close(energy[..., far], whole_energy[..., far], atol=1e-3, rtol=0)
    # a very wide image gets more strips, none wider than the bound plus its context
    wide = torch.rand(1, 3, 20, 1000)
    pieces = strip_inputs(wide, 2.0, 2)
    assert len(pieces) == -(-2000 // MAX_STRIP_WIDTH) > 2
    assert all(piece.shape[-1] <= MAX_STRIP_WIDTH + 2 * STRIP_OVERLAP for piece, _ in pieces)
    assert sum(keep.stop - keep.start for _, keep in pieces) == 2000
    with torch.inference_mode():
        torch.testing.assert_close(dwt_pass(per_pixel, wide, False, 2.0, 2), dwt_pass(per_pixel, wide, False, 2.0))


def test_a_panorama_runs_at_a_capped_width_and_comes_back_at_its_own_size(monkeypatch):
    from seg.instances.inference import MAX_WORK_ASPECT, _work_batch, dwt_work_size

    assert dwt_work_size(300, 450, 288) == (288, 432)  # a usual photo: the working height, aspect kept
    assert dwt_work_size(40, 1024, 288) == (45, round(MAX_WORK_ASPECT * 288))  # not 288 x 7373
    model = create("dwt", num_classes=2, base_channels=8, depth=2).eval()
    predictor = InstancePredictor(model, {"work_height": 288, "fill_scales": [2.0]})
    rgb = np.random.default_rng(0).integers(0, 256, (40, 1024, 3), dtype=np.uint8)
    assert _work_batch(model, rgb, 288).shape[-1] == round(MAX_WORK_ASPECT * 288)
    import seg.instances.inference as inference

    used = []
    real_partition = inference.partition
    monkeypatch.setattr(
        inference,
        "partition",
        lambda fg, energy, params, fills: (used.append(params), real_partition(fg, energy, params, fills))[1],
    )
    result = predictor.predict(rgb)
    assert result.instances.shape == rgb.shape[:2] and len(result.scores) == result.instances.max()
    # its minimum sizes are scaled from the height it ran at (45 px), not from the working height
    assert used == [predictor.params.scaled((40 / 45) ** 2)]


def test_flip_tta_averages_the_mirrored_pass():
    from seg.instances.inference import dwt_heads
    from seg.instances.models import split_outputs

    torch.manual_seed(0)
    model = create("dwt", num_classes=2, base_channels=8, depth=2).eval()
    x = torch.rand(1, 3, 32, 64)  # at the padding's multiples: the network sees it as it is
    with torch.inference_mode():
        fg, energy = dwt_heads(model, x, flip=True)
        plain_fg, plain_energy = dwt_heads(model, x)
        mirrored_fg, mirrored_energy = dwt_heads(model, x.flip(-1))
        torch.testing.assert_close(fg, (plain_fg + mirrored_fg.flip(-1)) / 2)
        # the expected energy is linear in the level probabilities, so it averages the same way
        torch.testing.assert_close(energy, (plain_energy + mirrored_energy.flip(-1)) / 2)
        logits = model(x)
        torch.testing.assert_close(plain_fg, split_outputs(logits)[0].softmax(1)[:, 1:2])
        assert not torch.allclose(fg, plain_fg)  # an untrained net is not mirror-symmetric


def test_dwt_body_from_a_semantic_checkpoint(pennfudan_root, tmp_path):
    from seg.checkpoints import save_checkpoint

    torch.manual_seed(1)
    semantic = create("unet", num_classes=9, base_channels=8, depth=2)
    save_checkpoint(tmp_path / "sbd-unet", semantic, {"task": "semantic", "encoder_init": "random initialisation"})
    out = tmp_path / "dwt"
    assert (
        train_dwt(
            pennfudan_root,
            out,
            "--inst-max-images 2 --inst-val-images 1 --arch base_channels=8 --arch depth=2 --lr 0",
            init_from=tmp_path / "sbd-unet",
        )
        == 0
    )
    model, card = load_checkpoint(out)
    assert card["init_from"]["checkpoint"] == "sbd-unet" and card["init_from"]["architecture"] == "unet"
    assert "body" in card["init_from"]["loaded"] and card["pretrained"] is False
    assert "no ImageNet or COCO" in card["encoder_init"]
    reference, _ = load_checkpoint(tmp_path / "sbd-unet")  # fp16 round trip, as the DWT's body went
    body = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("head."):
            assert key not in body
        elif value.is_floating_point() and "running" not in key and "num_batches" not in key:
            torch.testing.assert_close(body[key], value, atol=2e-3, rtol=0)  # lr 0: weights kept
    # a warm restart of that DWT carries the epoch count on (the results table shows earlier+new)
    again = tmp_path / "dwt2"
    assert (
        train_dwt(
            pennfudan_root,
            again,
            "--inst-max-images 2 --inst-val-images 1 --arch base_channels=8 --arch depth=2",
            init_from=out,
        )
        == 0
    )
    restarted = load_checkpoint(again)[1]
    lineage = restarted["init_from"]
    assert lineage["loaded"].startswith("all weights") and lineage["total_epochs"] == 1
    # its card says where the weights first came from, not "random": the body from sbd-unet
    assert restarted["encoder_init"].endswith("; then continued from checkpoint 'dwt'")
    assert "'sbd-unet' checkpoint" in restarted["encoder_init"] and "no ImageNet or COCO" in restarted["encoder_init"]
    from seg.instances.ensemble import _init_summary

    assert (
        _init_summary(restarted) == "body from this project's stanford-background 'sbd-unet' checkpoint, "
        "then 1 warm restart(s)"
    )
    # a body of another width does not fit: refused with the reason, nothing loaded silently
    assert (
        train_dwt(
            pennfudan_root,
            tmp_path / "x",
            "--inst-max-images 2 --arch base_channels=16",
            init_from=tmp_path / "sbd-unet",
        )
        == 1
    )


@pytest.mark.slow
def test_ensemble_averages_its_members_and_round_trips(tmp_path, pennfudan_root):
    from seg.checkpoints import save_checkpoint
    from seg.instances.ensemble import combine
    from seg.instances.inference import dwt_heads

    card = {"task": "instances", "work_height": 224, "energy_edges": list(range(12))}
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create("dwt", num_classes=2, base_channels=8, depth=2)
        save_checkpoint(tmp_path / f"m{seed}", model, dict(card, command=f"seed {seed}"))
        paths.append(tmp_path / f"m{seed}")
    combined = combine(paths, tmp_path / "ens")
    assert combined["architecture"] == "dwt_ensemble" and combined["arch_kwargs"]["members"] == 2
    assert [m["command"] for m in combined["members"]] == ["seed 0", "seed 1"]
    ensemble, _ = load_checkpoint(tmp_path / "ens")
    members = [load_checkpoint(p)[0] for p in paths]
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        fg, energy = dwt_heads(ensemble, x)
        parts = [dwt_heads(m, x) for m in members]
    # the foreground probability and the expected energy are the members' means
    torch.testing.assert_close(fg, (parts[0][0] + parts[1][0]) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(energy, (parts[0][1] + parts[1][1]) / 2, atol=1e-4, rtol=0)
    sample = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0])
    result = InstancePredictor.from_checkpoint(tmp_path / "ens").predict(sample.image)
    assert result.instances.shape == sample.instances.shape
    assert (
        main(
            [
                "tune-instances",
                "--checkpoint",
                str(tmp_path / "ens"),
                "--data",
                str(pennfudan_root),
                "--limit",
                "2",
                "--tta",
                "none",
            ]
        )
        == 0
    )
    # members of different widths, or a semantic checkpoint, are refused with the reason
    torch.manual_seed(2)
    save_checkpoint(tmp_path / "wide", create("dwt", num_classes=2, base_channels=16, depth=2), card)
    with pytest.raises(ValueError, match="differ"):
        combine([paths[0], tmp_path / "wide"], tmp_path / "bad")
    save_checkpoint(tmp_path / "sem", create("unet", num_classes=9, base_channels=8, depth=2), {"task": "semantic"})
    assert main(["ensemble-instances", str(paths[0]), str(tmp_path / "sem"), "--out", str(tmp_path / "bad")]) == 1


def test_a_member_taken_out_of_an_ensemble_trains_on_and_recombines(tmp_path, pennfudan_root, dwt_checkpoint):
    from seg.instances.ensemble import combine

    combine([dwt_checkpoint, dwt_checkpoint], tmp_path / "pair")
    ensemble, _ = load_checkpoint(tmp_path / "pair")
    assert main(["ensemble-instances", str(tmp_path / "pair"), "--take", "1", "--out", str(tmp_path / "m1")]) == 0
    member, card = load_checkpoint(tmp_path / "m1")
    taken = ensemble.members[1].state_dict()
    assert all(torch.equal(v, taken[k]) for k, v in member.state_dict().items())  # its weights, unchanged
    original = load_checkpoint(dwt_checkpoint)[1]
    assert card["architecture"] == "dwt" and card["pretrained"] is False
    assert card["encoder_init"] == original["encoder_init"]  # where the member's weights first came from
    assert card["init_from"]["architecture"] == "dwt_ensemble" and card["init_from"]["checkpoint"] == "pair"
    assert card["init_from"]["command"] == original["command"] and "--take 1" in card["command"]
    # trained further, its lineage leads back through the ensemble; the new ensemble says so
    assert (
        train_dwt(
            pennfudan_root,
            tmp_path / "m1b",
            "--inst-max-images 2 --inst-val-images 1 --arch base_channels=8 --inst-copy-paste 1",
            init_from=tmp_path / "m1",
        )
        == 0
    )
    again = combine([tmp_path / "m1b", dwt_checkpoint], tmp_path / "pair2")
    assert again["encoder_init"].startswith("members: 1x a member of this project's 'pair' DWT ensemble, then 1 warm")
    assert load_checkpoint(tmp_path / "m1b")[1]["copy_paste"] == 1.0
    for bad in ([str(tmp_path / "pair"), "--take", "2"], [str(tmp_path / "pair"), str(dwt_checkpoint), "--take", "0"]):
        assert main(["ensemble-instances", *bad, "--out", str(tmp_path / "x")]) == 1
    assert main(["ensemble-instances", str(dwt_checkpoint), "--take", "0", "--out", str(tmp_path / "x")]) == 1


def test_predictor_ranks_alternatives_after_the_partition(dwt_checkpoint, pennfudan_root):
    from dataclasses import replace

    from seg.instances.postprocess import ALTERNATIVE_SCORE_SCALE

    rgb = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0]).image
    base = InstancePredictor.from_checkpoint(dwt_checkpoint)
    # a low threshold, so that even a 1-epoch network yields a partition and alternatives to rank
    params = replace(base.params, fg_threshold=0.2, min_size=50, alternatives=False)
    plain = InstancePredictor(base.model, base.card, params=params).predict(rgb, tta=False)
    ranker = InstancePredictor(base.model, base.card, params=replace(params, alternatives=True))
    shown = ranker.predict(rgb, tta=False)  # what the dashboard and predict-instances ask for
    assert shown.all_masks is None and np.array_equal(shown.instances, plain.instances)
    counts = []
    for alternative_scales in ([], [1.5]):  # alternatives of the main pass; then also those of a 1.5x pass
        ranker.alternative_scales = tuple(alternative_scales)
        ranked = ranker.predict(rgb, tta=False, candidates=True)
        np.testing.assert_array_equal(ranked.instances, plain.instances)  # the id map stays the partition
        masks, scores, boxes = ranked.candidates()
        n = plain.num_instances
        assert len(masks) == len(scores) == len(boxes) >= n
        np.testing.assert_array_equal(masks[:n], plain.candidates()[0])
        np.testing.assert_array_equal(scores[:n], plain.scores)
        assert (scores[n:] <= ALTERNATIVE_SCORE_SCALE).all()
        counts.append(len(masks))
    assert counts[1] >= counts[0]


@pytest.mark.slow
def test_predictor_fills_the_partition_from_an_enlarged_pass_unless_tta_is_off(pennfudan_root):
    """The shipped DWT with a 2x fill pass: the small pedestrians it adds come after the partition's
    own instances, on pixels the partition left empty, at most at ``FILL_SCORE_SCALE``."""
    from seg.config import REPO_ROOT
    from seg.instances.postprocess import FILL_SCORE_SCALE

    base = InstancePredictor.from_checkpoint(REPO_ROOT / "checkpoints" / "dwt")
    plain_predictor = InstancePredictor(base.model, base.card | {"fill_scales": []}, params=base.params)
    filler = InstancePredictor(base.model, base.card | {"fill_scales": [2.0]}, params=base.params)
    assert filler.fill_scales == (2.0,) and plain_predictor.fill_scales == ()
    overridden = InstancePredictor(base.model, base.card | {"fill_scales": [2.0]}, params=base.params, fill_scales=())
    assert overridden.fill_scales == ()  # what ``eval --tta NAME`` asks for: those views alone
    added = 0
    for image_id in ids_for_split(pennfudan_root, "val")[:8]:
        rgb = load_sample(pennfudan_root, image_id).image
        plain, filled = plain_predictor.predict(rgb), filler.predict(rgb)
        n = plain.num_instances
        kept = plain.instances > 0
        np.testing.assert_array_equal(filled.instances[kept], plain.instances[kept])  # the partition stays
        np.testing.assert_array_equal(filled.scores[:n], plain.scores)
        assert (filled.scores[n:] <= FILL_SCORE_SCALE).all() and len(filled.boxes) == filled.num_instances
        if filled.num_instances > n and not added:  # tta=False skips the fill pass with the others
            quick = filler.predict(rgb, tta=False)
            np.testing.assert_array_equal(quick.instances, plain_predictor.predict(rgb, tta=False).instances)
        added += filled.num_instances - n
    assert added > 0  # small pedestrians the working height missed, on some of these images


def test_eval_ranks_alternatives_as_the_card_says_or_the_partition_alone(dwt_checkpoint, pennfudan_root, tmp_path):
    import shutil

    card = json.loads(dwt_checkpoint.with_suffix(".json").read_text())
    stems = {}
    for alternatives in (False, True):  # two copies of the checkpoint; low threshold so a 1-epoch net finds people
        stem = tmp_path / f"dwt-{alternatives}"
        shutil.copy(dwt_checkpoint.with_suffix(".safetensors"), stem.with_suffix(".safetensors"))
        post = {"cut_level": 2, "min_size": 100, "fg_threshold": 0.2, "min_seed": 0, "alternatives": alternatives}
        stem.with_suffix(".json").write_text(
            json.dumps(card | {"postprocess": post, "alternative_scales": [], "tta_flip": False, "tta_scales": [1.0]})
        )
        stems[alternatives] = stem

    def evaluate(stem, *extra):
        out = tmp_path / f"{stem.name}{'-'.join(extra)}.json"
        assert (
            main(
                [
                    "eval-instances",
                    "--checkpoint",
                    str(stem),
                    "--data",
                    str(pennfudan_root),
                    "--split",
                    "val",
                    "--limit",
                    "3",
                    "--json",
                    str(out),
                    *extra,
                ]
            )
            == 0
        )
        return json.loads(out.read_text())

    plain, partition, ranked = (
        evaluate(stems[False]),
        evaluate(stems[True], "--candidates", "partition"),
        evaluate(stems[True]),
    )
    assert partition["candidates"] == "partition" and ranked["candidates"] == "card"
    assert partition["postprocess"]["alternatives"] is True
    for key in REPORT_KEYS - {"checkpoint"}:  # the partition alone is the card without alternatives
        assert partition.get(key) == plain.get(key), key
    # alternatives score below 0.5: counting and best IoU only ever see the partition
    assert ranked["count_error"] == partition["count_error"] and ranked["mean_best_iou"] == partition["mean_best_iou"]


@pytest.mark.slow
def test_tune_chooses_mask_rcnn_proposals_and_views_on_val_and_the_model_keeps_them(pennfudan_root, tmp_path):
    """``tune-instances`` on a Mask R-CNN: the fewest proposals within ``TUNE_MIN_GAIN`` of the best val
    mask AP, recorded in ``arch_kwargs`` so every loader builds the model with it; then, with them,
    the cheapest test-time augmentation within ``TUNE_MIN_GAIN`` of the best, recorded as the DWT's
    is; then where the soft masks are cut, moved from 0.5 only for a gain over ``TUNE_MIN_GAIN``; the
    training's val metrics stay on the card; ``--tta NAME`` tries that setting alone."""
    import shutil

    from seg.config import REPO_ROOT
    from seg.instances.inference import proposal_count
    from seg.instances.tune import MASK_THRESHOLD_OPTIONS, PROPOSAL_OPTIONS

    stem = tmp_path / "maskrcnn"
    for suffix in (".json", ".safetensors"):
        shutil.copy(REPO_ROOT / "checkpoints" / f"maskrcnn{suffix}", stem.with_suffix(suffix))
    card = json.loads(stem.with_suffix(".json").read_text())
    card["arch_kwargs"].pop("test_proposals", None)  # as trained: torchvision's 1,000
    for key in ("tta_flip", "tta_scales", "mask_threshold"):
        card.pop(key, None)
    stem.with_suffix(".json").write_text(json.dumps(card))
    assert proposal_count(load_checkpoint(stem)[0]) == 1000
    flags = ["--checkpoint", str(stem), "--data", str(pennfudan_root), "--limit", "3"]
    assert main(["tune-instances", *flags]) == 0
    tuned = json.loads(stem.with_suffix(".json").read_text())
    tuning, chosen = tuned["postprocess_tuning"], tuned["arch_kwargs"]["test_proposals"]
    assert tuning["num_images"] == 3 and tuning["test_proposals"] == chosen
    compared = {int(n): c["mask_ap"] for n, c in tuning["compared"].items()}
    assert sorted(compared) == sorted(PROPOSAL_OPTIONS)
    best = max(compared.values())
    assert compared[chosen] >= best - TUNE_MIN_GAIN
    assert all(compared[n] < best - TUNE_MIN_GAIN for n in PROPOSAL_OPTIONS if n < chosen)
    # the views, with the chosen proposals: "none" is the proposals' own result
    views = {name: c["mask_ap"] for name, c in tuning["tta_compared"].items()}
    assert list(views) == list(TTA_OPTIONS) and views["none"] == compared[chosen]
    view, order, best_view = tuning["tta"], list(TTA_OPTIONS), max(views.values())
    assert views[view] >= best_view - TUNE_MIN_GAIN
    assert all(views[n] < best_view - TUNE_MIN_GAIN for n in order[: order.index(view)])
    assert (tuned["tta_flip"], tuple(tuned["tta_scales"])) == TTA_OPTIONS[view]
    assert tuned["training_val_metrics"] == card.get("training_val_metrics", card["val_metrics"])  # kept once
    # the mask cut, with those views: 0.5 is the views' own result
    cuts = {float(t): c["mask_ap"] for t, c in tuning["mask_threshold_compared"].items()}
    assert sorted(cuts) == sorted(MASK_THRESHOLD_OPTIONS) and cuts[0.5] == views[view]
    cut = tuned["mask_threshold"]
    assert tuning["mask_threshold"] == cut == tuned["val_metrics"]["mask_threshold"]
    if cut == 0.5:
        assert max(cuts.values()) <= cuts[0.5] + TUNE_MIN_GAIN
    else:
        assert cuts[cut] == max(cuts.values()) > cuts[0.5] + TUNE_MIN_GAIN
    assert tuned["val_metrics"]["mask_ap"] == cuts[cut] and tuned["val_metrics"]["test_proposals"] == chosen
    assert tuned["val_metrics"]["tta"] == view
    model, _ = load_checkpoint(stem)
    assert proposal_count(model) == chosen
    predictor = InstancePredictor.from_checkpoint(stem)
    assert proposal_count(predictor.model) == chosen
    assert (predictor.flip, predictor.scales) == TTA_OPTIONS[view] and predictor.mask_threshold == cut
    # a fixed setting is the only one tried
    assert main(["tune-instances", *flags, "--tta", "flip"]) == 0
    fixed = json.loads(stem.with_suffix(".json").read_text())
    assert list(fixed["postprocess_tuning"]["tta_compared"]) == ["flip"]
    assert (fixed["tta_flip"], fixed["tta_scales"]) == (True, [1.0])


def test_the_eager_reference_is_computed_once_since_a_given_time(dwt_checkpoint, pennfudan_root, monkeypatch, tmp_path):
    """Tests started together share eager's val results through the cache: ``since`` recomputes
    only a copy written before it (``math.inf``: always), and no bound reads any copy."""
    import math
    import time

    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path))
    predictor = InstancePredictor.from_checkpoint(dwt_checkpoint, runtime="eager")
    ids = ids_for_split(pennfudan_root, "val")[:2]
    computed = []
    scored = InstancePredictor.val_results
    monkeypatch.setattr(InstancePredictor, "val_results", lambda self, *a: computed.append(1) or scored(self, *a))

    def reference(**kwargs) -> tuple:
        result = predictor.eager_val_results(pennfudan_root, ids, **kwargs)
        return result["mask_ap"], result["counts"], len(computed)

    started = time.time()
    first = reference(since=started)  # no copy yet
    assert first[2] == 1 and len(first[1]) == 2
    assert reference(since=started) == first  # written after the start: read, not recomputed
    assert reference() == first
    assert reference(since=time.time() + 60) == (*first[:2], 2)  # a copy older than the bound is recomputed
    assert reference(since=math.inf) == (*first[:2], 3)


def test_tune_keeps_the_fewest_fill_members_within_the_gain_of_all_of_them(pennfudan_root):
    from dataclasses import replace

    from seg.instances.data import load_instance_split
    from seg.instances.models import DWTEnsemble, build_dwt
    from seg.instances.postprocess import PostprocessParams
    from seg.instances.task import DWTValidation
    from seg.instances.tune import TUNE_MIN_GAIN, _fill_members

    torch.manual_seed(0)
    model = DWTEnsemble([build_dwt(base_channels=4, depth=2) for _ in range(3)]).eval()
    validation = DWTValidation(load_instance_split(pennfudan_root, "val", 96, 2))
    maps, _ = validation.maps(model, torch.device("cpu"))
    params = PostprocessParams(fg_threshold=0.3, alternatives=False)
    members, compared, filled = _fill_members(validation, maps, model, torch.device("cpu"), (2.0,), params)
    assert list(compared) == ["0", "1", "2", "0+1", "0+2", "1+2", "0+1+2"]
    # every member's fills together are the ensemble's own
    whole = validation.with_passes(maps, model, torch.device("cpu"), (2.0,), "fills")
    assert validation.evaluate(whole, replace(params))["mask_ap"] == pytest.approx(compared["0+1+2"], abs=1e-6)
    chosen = "+".join(str(i) for i in members) or "0+1+2"
    # the chosen members' fills, made from each member's alone, are what those members run together give
    together = DWTEnsemble([model.members[i] for i in members or range(3)]).eval()
    expected = whole if not members else validation.with_passes(maps, together, torch.device("cpu"), (2.0,), "fills")
    for got, want in zip(filled, expected):
        for a, b in zip(got.fills[0], want.fills[0]):
            np.testing.assert_allclose(a, b, atol=1e-5)
    best = max(compared.values())
    assert compared[chosen] >= best - TUNE_MIN_GAIN
    # no cheaper choice was within the gain: every smaller subset is below it
    assert all(ap < best - TUNE_MIN_GAIN for name, ap in compared.items() if name.count("+") < chosen.count("+"))
    assert len(filled) == len(maps) and all(len(m.fills) == 1 for m in filled)
