"""The serving contract on the shipped checkpoints: under the runtime chosen on this CPU, each keeps
eager fp32's val answers (semantic: mIoU within ``MIOU_TOLERANCE`` and ``PIXEL_AGREEMENT`` of pixels;
instances: mask AP within ``MASK_AP_TOLERANCE``, counts within ``COUNT_TOLERANCE``).

The first run on a machine exports, quantises and calibrates every shipped model (minutes); later runs
read the choice and re-check agreement.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from seg import runtime
from seg.config import REPO_ROOT
from seg.inference import MIOU_TOLERANCE, PIXEL_AGREEMENT, Predictor, semantic_agreement
from seg.runtime import EAGER, MIN_SPEEDUP, RuntimeChoice

SHIPPED = REPO_ROOT / "checkpoints"


def at_checked_threads(request, spec: runtime.ServingSpec) -> None:
    """Serve at the thread count the shipped int8 parameters of these weights passed the contract at,
    as the test of those parameters does (a test worker otherwise has one thread). The runtime chosen
    can depend on it: the shipped Mask R-CNN's int8 graph keeps the contract at 2 threads but not at 1
    (its parameters record both), and at 1 a slower backend is chosen after every int8 one is checked."""
    params = runtime.read_int8_params(spec.key, runtime.int8_recipe(spec))
    if params is not None and params["agreement"]["threads"] <= (os.cpu_count() or 1):
        threads_for_this_test(request, params["agreement"]["threads"])


def threads_for_this_test(request, threads: int) -> None:
    """torch's thread count set to ``threads`` until the test ends."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    request.addfinalizer(lambda: torch.set_num_threads(before))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dwt", "maskrcnn"])
def test_shipped_instance_model_keeps_the_contract_under_the_chosen_runtime(
    request, serving_cache, pennfudan_root, name
):
    pytest.importorskip("openvino")
    from seg.instances.data import ids_for_split
    from seg.instances.inference import (
        COUNT_TOLERANCE,
        MASK_AP_TOLERANCE,
        InstancePredictor,
        instance_agreement,
    )

    eager = InstancePredictor.from_checkpoint(SHIPPED / name, runtime="eager")
    at_checked_threads(request, eager.serving_spec())
    served = InstancePredictor(eager.model, eager.card, runtime="auto", source=SHIPPED / name)
    choice = served.runtime
    assert EAGER in choice.timings_ms
    if choice.backend == EAGER:
        return
    assert choice.agreement[choice.label]["passed"]
    ids = ids_for_split(pennfudan_root, "val")
    if choice.measured_now:  # the calibration just ran the val split through the files now served
        metrics = choice.agreement[choice.label]
    else:  # a recorded choice: check the served files against eager again
        reference = served.eager_val_results(pennfudan_root, ids)  # eager's, as the calibration measured it
        metrics = instance_agreement(reference, served.val_results(pennfudan_root, ids)).metrics
    assert metrics["images"] == len(ids)
    assert abs(metrics["mask_ap"] - metrics["reference_mask_ap"]) <= MASK_AP_TOLERANCE
    assert metrics["max_count_difference"] <= COUNT_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ensemble", "resunet", "unet", "cnn"])  # longest first
def test_shipped_semantic_model_keeps_the_contract_under_the_chosen_runtime(request, serving_cache, sbd_root, name):
    pytest.importorskip("openvino")
    from seg.data.sbd import load_semantic_split

    eager = Predictor.from_checkpoint(SHIPPED / name, device="cpu", runtime="eager")
    at_checked_threads(request, eager.serving_spec())
    served = Predictor(eager.model, eager.card, eager.device, runtime="auto", source=SHIPPED / name)
    choice: RuntimeChoice = served.runtime
    assert choice.timings_ms and EAGER in choice.timings_ms
    if choice.backend == EAGER:
        return
    assert choice.agreement[choice.label]["passed"]
    assert choice.speedup >= MIN_SPEEDUP
    val = load_semantic_split(sbd_root, "val", size=served.input_size)
    if choice.measured_now:  # the calibration just ran the val split through the files now served
        metrics = choice.agreement[choice.label]
    else:  # a recorded choice: check the served files against eager again

        def logits(predictor: Predictor) -> torch.Tensor:
            batches = [val.images[i : i + 16].float() / 255 for i in range(0, len(val), 16)]
            return torch.cat([predictor.predict_logits_batch(batch) for batch in batches])

        metrics = semantic_agreement(logits(eager), logits(served), val.masks, len(served.classes)).metrics
    assert metrics["images"] == len(val)
    assert abs(metrics["miou"] - metrics["reference_miou"]) <= MIOU_TOLERANCE
    assert metrics["pixel_agreement"] >= PIXEL_AGREEMENT


#: The shipped checkpoints whose OpenVINO int8 export ships its parameters (``checkpoints/int8/``).
WITH_INT8_PARAMS = ["cnn", "unet", "resunet", "ensemble", "dwt", "maskrcnn"]


@pytest.mark.slow
@pytest.mark.parametrize("name", WITH_INT8_PARAMS)
def test_shipped_int8_parameters_rebuild_the_checked_graph_without_the_dataset(request, monkeypatch, tmp_path, name):
    """Where neither training images nor val are at hand (a Space without the dataset), each of these
    checkpoints is served by the very int8 graph that passed the contract on val when its parameters were
    made: rebuilt from them, and chosen on that record when it is the fastest, at a thread count where it
    passed (each count a 2-core machine may use is on the record)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from seg.instances.inference import InstancePredictor

    monkeypatch.setenv("SEG_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    if json.loads((SHIPPED / f"{name}.json").read_text())["task"] == "instances":
        predictor = InstancePredictor.from_checkpoint(SHIPPED / name, runtime="eager")
    else:
        predictor = Predictor.from_checkpoint(SHIPPED / name, device="cpu", runtime="eager")
    spec = predictor.serving_spec()
    assert spec.calibration_inputs() is None and spec.agreement(predictor.model) is None
    params = runtime.read_int8_params(spec.key, runtime.int8_recipe(spec))
    remake = f"seglab export --checkpoint {name} --int8-params checkpoints/int8"
    assert params, f"checkpoints/int8 has no parameters for these weights: {remake}"
    recorded = params["agreement"]["metrics"]
    assert params["agreement"]["passed"] and recorded["passed"] and recorded["images"] >= 25
    assert params["agreement"]["context"] == json.loads(json.dumps(spec.context))
    assert {"1", "2"} <= set(params["agreement"]["by_threads"]), remake + " --threads N, for N = 1 and 2"
    threads_for_this_test(request, params["agreement"]["threads"])  # the count its passing check was made at

    # fastest on record: checked on its recorded agreement, chosen, and built from the shipped ranges
    monkeypatch.setattr(
        runtime, "time_interleaved", lambda functions, **k: {b: 1.0 if b == "openvino-int8" else 5.0 for b in functions}
    )
    choice = runtime.calibrate(predictor.model, spec, "openvino")
    assert choice.backend == "openvino-int8", choice
    assert "shipped parameters" in choice.agreement["openvino-int8"]["reason"]
    digests = runtime.served_int8_digests(spec)
    assert digests == {part: p["digest"] for part, p in params["parts"].items()}
    served = runtime.build_serving(predictor.model, spec, "openvino-int8")
    example = spec.example_inputs()[0]
    with torch.inference_mode():
        shapes = [t.shape[1:] for t in runtime.flatten_tensors(served(*example))]  # a detector's counts may differ
        assert shapes == [t.shape[1:] for t in runtime.flatten_tensors(predictor.model(*example))]
