"""Serving runtimes: the choice of runtime, the fallback to eager PyTorch when a package is
missing, exact fp32 backends, the recorded calibration, and (slow) the agreement contract of
every shipped model under the runtime its calibration chose, re-measured here."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch

from seg import runtime
from seg.config import REPO_ROOT
from seg.inference import Predictor, semantic_agreement
from seg.runtime import EAGER, candidate_backends, resolve_runtime, serving_module

SHIPPED = REPO_ROOT / "checkpoints"


@pytest.fixture(scope="module")
def unet_parts():
    from seg.checkpoints import load_checkpoint

    return load_checkpoint(SHIPPED / "unet")


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``import module`` fail as if the package were not installed."""
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def test_batch_norms_after_convolutions_fold_into_them_for_serving():
    from torch import nn

    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    head = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4))  # no convolution before it: stays
    model = nn.Sequential(block, head)
    for norm in (block[1], head[1]):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.rand(2, 3, 16, 20)
    with torch.inference_mode():
        before = model(x)
        runtime.fold_batch_norms(model)
        after = model(x)
    assert isinstance(block[1], nn.Identity) and isinstance(head[1], nn.BatchNorm2d)
    assert torch.allclose(before, after, atol=1e-5)
    training = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    runtime.fold_batch_norms(training)  # a model in training mode keeps its statistics live
    assert isinstance(training[1], nn.BatchNorm2d)


def test_resolve_runtime_order_and_names(monkeypatch):
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    assert resolve_runtime(None) == "eager"
    assert resolve_runtime(None, default="auto") == "auto"
    monkeypatch.setenv(runtime.RUNTIME_ENV, "OpenVINO")
    assert resolve_runtime(None, default="auto") == "openvino"
    assert resolve_runtime("onnx") == "onnx"  # an explicit request wins over the environment
    assert resolve_runtime("openvino-int8") == "openvino-int8"
    with pytest.raises(ValueError, match="unknown runtime"):
        resolve_runtime("tensorrt")


def test_missing_packages_fall_back_to_eager(monkeypatch, unet_parts):
    model, card = unet_parts
    _hide(monkeypatch, "openvino", "onnxruntime")
    assert candidate_backends("auto") == [EAGER]
    predictor = Predictor(model, card, torch.device("cpu"), runtime="auto")
    assert predictor.backend == EAGER and "not installed" in predictor.runtime.reason
    assert predictor.serving is predictor.model
    assert predictor.predict(np.zeros((40, 60, 3), np.uint8)).label.shape == (40, 60)
    onnx_only = Predictor(model, card, torch.device("cpu"), runtime="openvino-int8")
    assert onnx_only.backend == EAGER


def test_without_the_onnx_exporter_package_both_families_fall_back(monkeypatch, unet_parts):
    """ONNX Runtime and OpenVINO both serve files exported through ``torch.onnx``, which needs ``onnx``."""
    model, card = unet_parts
    _hide(monkeypatch, "onnx")
    assert candidate_backends("auto") == [EAGER] and candidate_backends("openvino-int8") == [EAGER]
    predictor = Predictor(model, card, torch.device("cpu"), runtime="auto")
    assert predictor.backend == EAGER and "onnx not installed" in predictor.runtime.reason


def test_finding_the_backends_imports_none_of_their_packages():
    """A model's first request lists the backends it may use; importing ``onnx`` for that took most
    of a second of the dashboard's cold start, and a recorded choice never needs it."""
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    code = (
        "import sys; from seg.runtime import candidate_backends; backends = candidate_backends('auto'); "
        "print(len(backends), *sorted(m for m in ('onnx', 'onnxruntime', 'openvino', 'nncf') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    count, *imported = out.stdout.split()
    assert int(count) > 1 and imported == []


def test_one_missing_family_leaves_the_other(monkeypatch):
    pytest.importorskip("onnxruntime")
    _hide(monkeypatch, "openvino")
    backends = candidate_backends("auto")
    assert backends[0] == EAGER and backends[1:] and all(b.startswith("onnx-") for b in backends[1:])
    assert candidate_backends("openvino") == [EAGER]


def test_bf16_is_a_candidate_only_with_native_bf16(monkeypatch):
    pytest.importorskip("openvino")
    from seg import hardware

    plain = hardware.CpuFeatures("test cpu", 2, ("avx2", "avx512f"))
    monkeypatch.setattr(runtime, "cpu_features", lambda: plain)
    assert "openvino-bf16" not in candidate_backends("openvino")
    monkeypatch.setattr(runtime, "cpu_features", lambda: hardware.CpuFeatures("t", 2, ("avx512_bf16",)))
    assert "openvino-bf16" in candidate_backends("openvino")


def test_a_gpu_device_is_always_served_eager(unet_parts):
    model, _ = unet_parts
    served, choice = serving_module(
        model, lambda: pytest.fail("no spec is needed on a GPU"), "auto", torch.device("meta")
    )
    assert served is model and choice.backend == EAGER


@pytest.mark.parametrize("backend", ["onnx-fp32", "openvino-fp32"])
def test_fp32_backends_reproduce_eager(sbd_root, unet_parts, backend):
    pytest.importorskip("onnxruntime" if backend.startswith("onnx") else "openvino")
    model, card = unet_parts
    eager = Predictor(model, card, torch.device("cpu"), runtime="eager")
    served = Predictor(model, card, torch.device("cpu"), runtime=backend)
    assert served.backend == backend and served.serving is not served.model
    from seg.data.sbd import load_semantic_split

    val = load_semantic_split(sbd_root, "val", size=eager.input_size, limit=8)
    ref, out = eager.predict_probs_batch(val.images), served.predict_probs_batch(val.images)
    assert torch.allclose(ref, out, atol=1e-4)
    result = semantic_agreement(ref.log(), out.log(), val.masks, len(eager.classes))
    assert result.passed and result.metrics["pixel_agreement"] > 0.999
    image = np.asarray(val.images[0].permute(1, 2, 0)).copy()
    np.testing.assert_array_equal(eager.predict(image).label, served.predict(image).label)


@pytest.mark.parametrize("backend", ["onnx-fp32", "openvino-fp32"])
def test_a_global_context_block_exports_and_serves_like_eager(backend):
    pytest.importorskip("onnxruntime" if backend.startswith("onnx") else "openvino")
    from seg.classes import SBD_CLASSES, SBD_PALETTE
    from seg.models import create

    torch.manual_seed(0)
    model = create("unet", num_classes=len(SBD_CLASSES), base_channels=4, depth=3, context=True).eval()
    torch.nn.init.normal_(model.context.expand.weight, std=0.5)  # as if trained: not an identity
    card = {"task": "semantic", "classes": list(SBD_CLASSES), "palette": [list(c) for c in SBD_PALETTE]}
    card |= {"architecture": "unet", "input_size": {"width": 96, "height": 64}}
    eager = Predictor(model, card, torch.device("cpu"), runtime="eager")
    served = Predictor(model, card, torch.device("cpu"), runtime=backend)
    assert served.backend == backend and served.serving is not served.model
    images = torch.rand(3, 3, 64, 96)
    assert torch.allclose(eager.predict_probs_batch(images), served.predict_probs_batch(images), atol=1e-4)


class _TinySegmenter(torch.nn.Module):
    """A two-layer conv net: fast enough to export, time and serve within a test."""

    def __init__(self, out_channels: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, out_channels, 3, padding=1),
        )
        with torch.no_grad():
            self.body[1].running_mean.uniform_(-0.2, 0.2)
            self.body[1].running_var.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _tiny_spec(model: torch.nn.Module) -> runtime.ServingSpec:
    generator = torch.Generator().manual_seed(1)
    example = torch.rand(1, 3, 32, 48, generator=generator)
    return runtime.ServingSpec(runtime.weights_key(model), {"": (0,)}, lambda: [(example,)])


def test_without_val_data_only_an_exact_backend_is_chosen_and_the_choice_is_recorded(monkeypatch, tmp_path, unet_parts):
    pytest.importorskip("openvino")
    monkeypatch.setenv("SEG_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    model, card = unet_parts
    # a predictor without its dataset: no training images for int8, no val split for the contract
    spec = Predictor(model, card, torch.device("cpu"), runtime="eager").serving_spec()
    assert spec.calibration_inputs() is None and spec.agreement(model) is None
    assert spec.example_inputs()[0][0].shape == (1, 3, card["input_size"]["height"], card["input_size"]["width"])
    # the choice itself, on a tiny model with such a spec (the same code path, seconds instead of a U-Net's export)
    tiny = _TinySegmenter()
    served, choice = serving_module(tiny, _tiny_spec(tiny), "openvino", torch.device("cpu"))
    assert choice.backend in (EAGER, "openvino-fp32", "openvino-bf16")
    assert "openvino-int8" not in choice.timings_ms  # no training images: nothing to calibrate int8 on
    assert set(choice.timings_ms) >= {EAGER, "openvino-fp32"}
    for backend, check in choice.agreement.items():
        assert check["passed"] == (check["max_relative_difference"] <= runtime.EXACT_TOLERANCE), backend
    record = json.loads(open(choice.record).read())
    assert record["backend"] == choice.backend and record["cpu"] and "measured_now" not in record
    # a second start reads the record instead of measuring again
    monkeypatch.setattr(runtime, "calibrate", lambda *a, **k: pytest.fail("calibrated twice"))
    again, again_choice = serving_module(tiny, _tiny_spec(tiny), "openvino", torch.device("cpu"))
    assert again_choice.backend == choice.backend and again_choice.timings_ms == choice.timings_ms
    assert choice.measured_now and not again_choice.measured_now  # what the shipped-model tests rely on


def _tiny_calibration(monkeypatch, tmp_path, fastest: str, checked: list | None = None) -> tuple:
    """(model, its four calibration calls, its spec) for a calibration where ``fastest`` times fastest and
    every candidate checked passes (and is appended to ``checked``)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    tiny = _TinySegmenter()
    calls = [(torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(i)),) for i in range(4)]

    def agreement(module):
        if checked is not None:
            checked.append(module)
        return runtime.Agreement(True, {}, "")

    spec = runtime.ServingSpec(
        runtime.weights_key(tiny), {"": (0,)}, lambda: calls[:1], lambda: calls, agreement=agreement
    )
    monkeypatch.setattr(runtime, "MIN_SPEEDUP", 0.0)  # a tiny model gains nothing: check whatever is fastest
    monkeypatch.setattr(
        runtime, "time_interleaved", lambda functions, **k: {n: 10.0 if n == fastest else 20.0 for n in functions}
    )
    return tiny, calls, spec


def test_int8_is_timed_as_a_one_image_draft_and_quantised_in_full_only_to_be_checked(monkeypatch, tmp_path):
    """A cold calibration quantises each int8 backend on one image to time it; the candidate that comes
    up for the agreement check is quantised on every calibration image first, and no draft file is left."""
    checked: list[runtime.RuntimePart] = []
    tiny, calls, spec = _tiny_calibration(monkeypatch, tmp_path, "openvino-int8", checked)
    quantised: list[int] = []
    real = runtime._quantise_openvino

    def counting(onnx_path, calibration, out, *recipe):  # how many images each quantisation was calibrated on
        quantised.append(len(calibration))
        real(onnx_path, calibration, out, *recipe)

    monkeypatch.setattr(runtime, "_quantise_openvino", counting)
    choice = runtime.calibrate(tiny, spec, "openvino")
    assert choice.backend == "openvino-int8" and len(checked) == 1
    assert quantised == [1, len(calls)], "a one-image draft to time, then the full quantisation to check and serve"
    folder = runtime.export_dir(spec.key)
    assert not list(folder.glob("*draft*")) and list(folder.glob("*-openvino-int8-*.xml"))
    # served from the record afterwards: the full files are loaded, nothing is quantised again
    served, again = serving_module(tiny, spec, "openvino", torch.device("cpu"))
    assert again.backend == "openvino-int8" and quantised == [1, len(calls)]
    with torch.inference_mode():
        assert served(calls[0][0]).shape == tiny(calls[0][0]).shape


@pytest.mark.parametrize("fastest", ["openvino-fp32", "openvino-int8"])
def test_every_images_int8_inputs_are_gathered_only_for_a_draft_that_is_checked(monkeypatch, tmp_path, fastest):
    """A draft is quantised on one image's inputs, so only that image's are gathered to time it (a part's
    inputs cost a forward pass of the whole model each); every image's only when the draft comes up for
    its check, and not at all when another candidate wins."""
    tiny, calls, spec = _tiny_calibration(monkeypatch, tmp_path, fastest)
    gathered: list[int] = []
    real = runtime._calibration_inputs

    def counting(model, of, images=None):  # how many images each gathering covers
        inputs = real(model, of, images)
        gathered.append(len(next(iter(inputs.values()))))
        return inputs

    monkeypatch.setattr(runtime, "_calibration_inputs", counting)
    choice = runtime.calibrate(tiny, spec, "openvino")
    assert choice.backend == fastest
    assert gathered == ([1, len(calls)] if fastest == "openvino-int8" else [1])


def test_calibration_inputs_of_a_whole_model_are_its_calls_without_a_forward():
    tiny = _TinySegmenter()
    calls = [(torch.rand(1, 3, 32, 48),) for _ in range(3)]
    forwards: list[int] = []
    tiny.register_forward_pre_hook(lambda module, args: forwards.append(1))
    whole = runtime.ServingSpec("k", {"": (0,)}, lambda: calls[:1], lambda: calls)
    inputs = runtime._calibration_inputs(tiny, whole)
    assert not forwards and [t[0] for t in inputs[""]] == [c[0] for c in calls]
    # a part inside the model gets its own inputs, which only running the model reveals
    part = runtime.ServingSpec("k", {"body.3": (0,)}, lambda: calls[:1], lambda: calls)
    inputs = runtime._calibration_inputs(tiny, part)
    assert len(forwards) == 3 and [t[0].shape for t in inputs["body.3"]] == [(1, 8, 32, 48)] * 3


def test_calibration_inputs_of_a_part_given_the_models_own_arguments_take_one_forward():
    """A DWT ensemble's served part (its members) is called with the model's input: one forward shows it, and
    the calls are its calibration inputs as they are."""
    from seg.instances.models import DWTEnsemble, build_dwt

    torch.manual_seed(0)
    model = DWTEnsemble([build_dwt(base_channels=4, depth=2), build_dwt(base_channels=4, depth=2)]).eval()
    calls = [(torch.rand(1, 3, 32, 40 + 8 * i),) for i in range(4)]
    forwards: list[int] = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    spec = runtime.ServingSpec("k", {"members": (0, 2, 3)}, lambda: calls[:1], lambda: calls)
    inputs = runtime._calibration_inputs(model, spec)
    assert len(forwards) == 1
    assert [t[0] for t in inputs["members"]] == [c[0] for c in calls]


def test_a_broken_record_falls_back_to_eager(monkeypatch, tmp_path, unet_parts):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    model, card = unet_parts
    predictor = Predictor(model, card, torch.device("cpu"), runtime="eager")
    spec = predictor.serving_spec()
    path = runtime._record_path(spec, "onnx")
    path.write_text(json.dumps({"backend": "onnx-int8", "requested": "onnx", "reason": "test"}))
    assert runtime.read_choice(spec, "onnx").backend == "onnx-int8"
    monkeypatch.setattr(runtime, "build_serving", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("gone")))
    served, choice = serving_module(model, spec, "onnx", torch.device("cpu"))
    assert served is model and choice.backend == EAGER and "failed to load" in choice.reason


def test_runtime_part_rebuilds_nested_outputs():
    from collections import OrderedDict

    from seg.runtime import RuntimePart, _structure

    structure = _structure(OrderedDict(a=torch.zeros(1), b=(torch.zeros(1), torch.zeros(1))))
    part = RuntimePart(lambda arrays: [a + 1 for a in arrays] + [arrays[0] * 0], structure, "test")
    out = part(torch.ones(2), torch.ones(3))
    assert list(out) == ["a", "b"] and isinstance(out["b"], tuple)
    assert out["a"].tolist() == [2.0, 2.0] and out["b"][0].tolist() == [2.0, 2.0, 2.0]


# ---------------------------------------------------------------------- CPU features and bf16 training


def test_cpu_features_are_consistent():
    from seg.hardware import RELEVANT_FLAGS, cpu_features

    features = cpu_features()
    assert set(features.flags) <= set(RELEVANT_FLAGS) and features.logical_cpus >= 1
    assert features.native_bf16 == (features.has("avx512_bf16") or features.has("amx_bf16"))
    assert features.amx == features.has("amx_bf16")
    assert features.model in features.summary()


def test_bf16_training_decision(monkeypatch, tmp_path):
    from seg import hardware

    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(hardware.BF16_TRAINING_ENV, raising=False)
    calls = []

    def fake_measure(speedup: float):
        def measure() -> hardware.Bf16Measurement:
            calls.append(speedup)
            return hardware.Bf16Measurement(1.0, 1.0 / speedup, 2, torch.__version__, "test cpu")

        return measure

    monkeypatch.setattr(hardware, "measure_bf16_training", fake_measure(0.87))
    monkeypatch.setattr(hardware, "cpu_features", lambda: hardware.CpuFeatures("amx cpu", 2, ("amx_bf16",)))
    assert hardware.bf16_training_pays() and not calls  # AMX: no measurement needed
    monkeypatch.setattr(hardware, "cpu_features", lambda: hardware.CpuFeatures("old cpu", 2, ("avx2",)))
    assert not hardware.bf16_training_pays() and not calls  # no native bf16: emulated, never faster
    monkeypatch.setattr(hardware, "cpu_features", lambda: hardware.CpuFeatures("zen cpu", 2, ("avx512_bf16",)))
    assert not hardware.bf16_training_pays(measure=False) and not calls
    assert not hardware.bf16_training_pays() and calls == [0.87]  # measured slower: fp32
    assert not hardware.bf16_training_pays() and calls == [0.87]  # cached
    monkeypatch.setattr(hardware, "measure_bf16_training", fake_measure(1.4))
    assert hardware.bf16_training_pays(refresh=True) and calls == [0.87, 1.4]
    monkeypatch.setenv(hardware.BF16_TRAINING_ENV, "0")
    assert not hardware.bf16_training_pays()


@pytest.mark.slow
def test_bf16_training_measurement_runs_and_leaves_the_random_state_alone():
    from seg.hardware import measure_bf16_training

    torch.manual_seed(7)
    before = torch.get_rng_state()
    result = measure_bf16_training(steps=2, batch=2, size=(64, 80))
    assert result.fp32_s > 0 and result.bf16_s > 0 and result.speedup > 0
    # the first training run on a CPU measures after seeding: its random draws must not depend on that
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------- serving defaults and deferred serving


def test_serving_defaults_make_auto_the_default_and_the_environment_wins(monkeypatch):
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    assert resolve_runtime(None) == "eager"
    with runtime.serving_defaults():
        assert resolve_runtime(None) == "auto"
        assert resolve_runtime("eager") == "eager"
        monkeypatch.setenv(runtime.RUNTIME_ENV, "eager")
        assert resolve_runtime(None) == "eager"
    assert resolve_runtime(None, default="auto") == "eager"  # the environment still set


def test_the_model_store_and_predict_ask_for_auto(monkeypatch, tmp_path):
    from seg import cli, modelstore

    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    seen = []
    monkeypatch.setitem(modelstore.PREDICTOR_LOADERS, "semantic", lambda path: seen.append(resolve_runtime(None)))
    modelstore.ModelStore(SHIPPED).predictor("unet")
    assert seen == ["auto"]

    import seg.batch_predict

    def fake_predict(*args, runtime=None, **kwargs):
        seen.append(runtime)
        return seg.batch_predict.PredictReport(0, 1, EAGER)

    monkeypatch.setattr(seg.batch_predict, "predict_inputs", fake_predict)
    assert cli.main(["predict", "--checkpoint", str(SHIPPED / "unet"), "x.png", "--out", str(tmp_path)]) == 0
    monkeypatch.setenv(runtime.RUNTIME_ENV, "onnx")
    cli.main(["predict", "--checkpoint", str(SHIPPED / "unet"), "x.png", "--out", str(tmp_path)])
    cli.main(["predict", "--checkpoint", str(SHIPPED / "unet"), "x.png", "--out", str(tmp_path), "--runtime", "eager"])
    assert seen[1:] == ["auto", "onnx", "eager"]


def test_deferred_serving_answers_at_once_and_swaps_the_chosen_backend_in(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    model = _TinySegmenter()
    spec = _tiny_spec(model)
    x = spec.example_inputs()[0][0]
    with torch.inference_mode():
        expected = model(x)
    with runtime.serving_defaults("onnx"):
        served, choice = serving_module(model, lambda: spec, resolve_runtime(None), torch.device("cpu"))
    assert isinstance(served, runtime.DeferredServing)
    with torch.inference_mode():
        torch.testing.assert_close(served(x), expected)  # answers before the backend is ready
    assert served.wait(timeout=120), "the background worker never finished"
    assert choice.requested == "onnx" and EAGER in choice.timings_ms and choice.record
    assert (served.current is model) == (choice.backend == EAGER)
    with torch.inference_mode():
        torch.testing.assert_close(served(x), expected, atol=1e-4, rtol=1e-4)
    # the record is what a later start loads: a synchronous request reads the same choice
    assert serving_module(model, spec, "onnx", torch.device("cpu"))[1].backend == choice.backend


def _tiny_checkpoint(folder):
    from seg.checkpoints import save_checkpoint
    from seg.classes import SBD_CLASSES, SBD_PALETTE
    from seg.models import create

    torch.manual_seed(0)
    card = {"task": "semantic", "classes": list(SBD_CLASSES), "palette": [list(c) for c in SBD_PALETTE]}
    return save_checkpoint(folder / "tiny-cnn", create("cnn", num_classes=len(SBD_CLASSES), width=8, stages=2), card)


def test_deferred_serving_of_a_checkpoint_calibrates_in_a_child_process(monkeypatch, tmp_path):
    """What a calibration allocates leaves with the child; the server loads the recorded choice, as on a
    later start (here calibrating in the serving process would fail)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    monkeypatch.delenv("SEG_DATA_DIR", raising=False)  # no val split: the exact fp32 backends only (quick)
    stem = _tiny_checkpoint(tmp_path)

    def in_process(*args, **kwargs):
        raise AssertionError("calibrated in the serving process")

    monkeypatch.setattr(runtime, "calibrate", in_process)
    with runtime.serving_defaults("onnx"):
        predictor = Predictor.from_checkpoint(stem)
    assert isinstance(predictor.serving, runtime.DeferredServing)
    assert predictor.serving.wait(timeout=300), "the background worker never finished"
    choice = predictor.runtime
    assert choice.record and not choice.measured_now, choice.reason  # read from the child's record
    assert EAGER in choice.timings_ms and "onnx-fp32" in choice.timings_ms


def test_a_failed_child_calibration_falls_back_to_calibrating_in_process(monkeypatch, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    monkeypatch.delenv("SEG_DATA_DIR", raising=False)
    stem = _tiny_checkpoint(tmp_path)
    monkeypatch.setattr(runtime.sys, "executable", str(tmp_path / "no-such-python"))
    with caplog.at_level("WARNING", logger="seg.runtime"), runtime.serving_defaults("onnx"):
        predictor = Predictor.from_checkpoint(stem)
        assert predictor.serving.wait(timeout=300), "the background worker never finished"
    assert predictor.runtime.measured_now and predictor.runtime.record
    assert any("in a child process failed" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- the DWT's mirrored pass in one batch


def _unbatched_heads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain and mirrored passes as two forwards of one image each (padded to the stride, their maps cut back),
    their heads averaged (both heads are linear in the probabilities, so this is what averaging the
    probabilities gives)."""
    from seg.instances.inference import at_stride, heads_from_logits

    with torch.inference_mode():
        fg, energy = heads_from_logits(at_stride(model, x))
        fg_mirror, energy_mirror = heads_from_logits(at_stride(model, x.flip(-1)))
    return (fg + fg_mirror.flip(-1)) / 2, (energy + energy_mirror.flip(-1)) / 2


def test_the_dwt_mirror_pass_batched_with_the_plain_one_equals_two_passes(pennfudan_root):
    pytest.importorskip("onnxruntime")
    from seg.instances.data import ids_for_split, load_sample
    from seg.instances.inference import InstancePredictor, _maps_at, _work_batch, dwt_heads, with_mirror

    model = _TinySegmenter(out_channels=2 + 5)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    predictor = InstancePredictor(model, {"tta_flip": True, "work_height": 96}, runtime="eager")
    rgb = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0]).image
    x = _work_batch(model, rgb, predictor.work_height)
    assert torch.equal(with_mirror(x, True)[1], x[0].flip(-1))

    reference = _unbatched_heads(model, x)
    calls.clear()
    with torch.inference_mode():
        batched = dwt_heads(model, x, flip=True)
    assert calls == [2]  # one forward of the image and its mirror
    for got, want in zip(batched, reference):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # the predictor's maps at the input size are the unbatched heads resized
    result = predictor.predict(rgb)
    fg, _ = _maps_at(*reference, rgb.shape[:2])
    np.testing.assert_allclose(result.foreground, fg, atol=1e-5)

    # served path: the graph runs the image and its mirror as two calls of one shape (no batch-of-two shapes,
    # half the peak memory), and agrees with its own two passes
    served = runtime.build_serving(model, predictor.serving_spec(), "onnx-fp32")
    served_calls: list[int] = []
    served.register_forward_pre_hook(lambda module, args: served_calls.append(args[0].shape[0]))
    with torch.inference_mode():
        served_batched = dwt_heads(served, x, flip=True)
    assert served_calls == [1, 1]
    for got, want in zip(served_batched, _unbatched_heads(served, x)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    for got, want in zip(served_batched, reference):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_the_dwt_runs_on_inputs_padded_to_its_stride_and_its_maps_keep_the_input_size():
    """Every network pass sees its input padded (edge pixels repeated) to whole multiples of ``PAD_MULTIPLE``, the
    maps are cut back to the input's size, and a mirrored half is turned back after the cut (else the padding
    would shift it); an input already at the stride (and the width step) runs as it is."""
    from seg.instances.inference import PAD_MULTIPLE, dwt_heads, dwt_pass, pad_to_stride

    torch.manual_seed(0)
    model = _TinySegmenter(out_channels=2 + 5)
    seen: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    x = torch.rand(1, 3, 37, 50)
    padded = pad_to_stride(x)
    assert padded.shape[-2:] == (48, 64) and PAD_MULTIPLE == 16
    assert torch.equal(padded[..., :37, :50], x) and torch.equal(padded[..., 40, 60], x[..., 36, 49])
    with torch.inference_mode():
        fg, energy = dwt_heads(model, x, flip=True)
        assert seen == [(48, 64)] and fg.shape[-2:] == energy.shape[-2:] == (37, 50)
        for got, want in zip((fg, energy), _unbatched_heads(model, x)):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        seen.clear()
        dwt_pass(model, x, flip=False, scale=2.0, strips=2)  # 74 x 100, two strips of 50 + 64 px of context
        assert seen and all(h % PAD_MULTIPLE == 0 and w % PAD_MULTIPLE == 0 for h, w in seen), seen
        seen.clear()
        dwt_heads(model, torch.rand(1, 3, 32, 64))
        assert seen == [(32, 64)]


def test_a_deeper_body_pads_the_dwt_inputs_to_its_own_stride_served_or_not(monkeypatch, tmp_path):
    """A body says its stride (the U-Net ``2**depth``, the ResUNet 32); the DWT, an ensemble (the least common
    multiple of its members'), the part a runtime serves and the box tool's crops all pad to it, so a deeper
    body's levels line up as the shipped one's do, and the shipped U-Net body keeps 16."""
    from seg.instances.inference import InstancePredictor, dwt_heads, input_stride
    from seg.instances.models import DWTEnsemble, build_dwt
    from seg.labeling.seeding import ForegroundModel

    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    deep, shallow = build_dwt(base_channels=4, depth=5).eval(), build_dwt(base_channels=4).eval()
    assert (deep.input_multiple, shallow.input_multiple, build_dwt(backbone="resunet").input_multiple) == (32, 16, 32)
    assert input_stride(DWTEnsemble([shallow, deep])) == 32 and input_stride(_TinySegmenter()) == 16
    x = torch.rand(1, 3, 72, 100)
    for model, rows in ((deep, 96), (shallow, 80)):
        seen: list[tuple[int, int]] = []
        hook = model.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(tuple(args[0].shape[-2:])))
        with torch.inference_mode():
            fg, energy = dwt_heads(model, x)
        hook.remove()
        assert seen == [(rows, 128)] and fg.shape[-2:] == energy.shape[-2:] == (72, 100)

    predictor = InstancePredictor(deep, {"work_height": 64}, runtime="eager")
    assert predictor.serving_spec().key and predictor._serving_context()["pad_multiple"] == [32, 64]
    served = runtime.build_serving(deep, predictor.serving_spec(), "onnx-fp32")
    assert isinstance(served, runtime.RuntimePart) and input_stride(served) == 32
    with torch.inference_mode():
        for got, want in zip(dwt_heads(served, x), dwt_heads(deep, x)):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)

    crops: list[tuple[int, int]] = []
    deep.register_forward_pre_hook(lambda module, args: crops.append(tuple(args[0].shape[-2:])))
    seeder = ForegroundModel(predictor)
    fg = seeder(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    assert seeder.size_multiple == 32 and fg.shape == (90, 130)
    assert crops and all(h % 32 == 0 and w % 32 == 0 for h, w in crops), crops


def test_the_dwt_pads_widths_to_64_px_steps_so_images_share_input_shapes():
    """Rows go to the stride, columns to ``PAD_WIDTH_MULTIPLE``: images of the same height whose widths differ by
    less than a step meet one input shape in every pass, the fill pass's strips included, and keep their size."""
    from seg.instances.inference import PAD_MULTIPLE, PAD_WIDTH_MULTIPLE, dwt_heads, dwt_pass, pad_to_stride

    assert PAD_WIDTH_MULTIPLE == 64 and PAD_WIDTH_MULTIPLE % PAD_MULTIPLE == 0
    assert pad_to_stride(torch.rand(1, 3, 288, 385)).shape[-2:] == (288, 448)
    assert pad_to_stride(torch.rand(1, 3, 281, 448)).shape[-2:] == (288, 448)
    torch.manual_seed(0)
    model = _TinySegmenter(out_channels=2 + 5)
    shapes: dict[int, set] = {}
    seen: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    for width in (390, 400, 420, 430):
        seen.clear()
        x = torch.rand(1, 3, 72, width)
        with torch.inference_mode():
            fg, _ = dwt_heads(model, x, scales=(1.0, 1.25))
            fill, _ = dwt_pass(model, x, flip=False, scale=2.0, strips=2)
        assert fg.shape[-2:] == fill.shape[-2:] == (72, width)
        assert all(h % PAD_MULTIPLE == 0 and w % PAD_WIDTH_MULTIPLE == 0 for h, w in seen), seen
        shapes[width] = set(seen)
    assert shapes[390] == shapes[400] and shapes[420] == shapes[430] and len(shapes[390]) == 3, shapes


def test_an_exported_unet_reads_only_its_input_shape(tmp_path):
    """The decoder's resize targets come from the input's shape: no Shape node reads a skip (one that does
    keeps OpenVINO from fusing the bias and ReLU of the convolution before it at dynamic sizes), and the
    sizes are still right for inputs whose sides do not halve evenly."""
    onnx = pytest.importorskip("onnx")
    from seg.models.unet import UNet

    model = UNet(num_classes=3, base_channels=4, depth=3).eval()
    path = tmp_path / "unet.onnx"
    runtime._export_onnx(model, (torch.rand(1, 3, 40, 56),), (0, 2, 3), path)
    graph = onnx.load(str(path)).graph
    shape_inputs = {node.input[0] for node in graph.node if node.op_type == "Shape"}
    skips = {name for node in graph.node if node.op_type == "MaxPool" for name in node.input}
    assert len(skips) == 3 and skips <= {node.input[0] for node in graph.node if node.op_type == "Conv"}
    assert graph.input[0].name in shape_inputs and not shape_inputs & skips, shape_inputs & skips
    _onnx_runtime_answers_as_eager(path, model, [(37, 53), (17, 90)])


def _onnx_runtime_answers_as_eager(path, model: torch.nn.Module, sizes: list[tuple[int, int]]) -> None:
    """The ONNX export at ``path`` gives the eager model's 3-class answer at each of ``sizes``."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in sizes:
        x = torch.rand(1, 3, *size)
        (got,) = session.run(None, {"input0": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape == (1, 3, *size)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["unet", "resunet"])
def test_an_exported_decoder_joins_its_skips_without_a_concatenation(tmp_path, monkeypatch, arch):
    """In an export, the convolution after a decoder's join runs on the upsampled path and the skip apart and
    sums (``DoubleConv.on_concat``): no Concat feeds a convolution, the graph computes the eager model's
    function at sizes that do not halve evenly, and the eager model still concatenates."""
    onnx = pytest.importorskip("onnx")
    from seg.models.resunet import ResUNet
    from seg.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(num_classes=3, base_channels=4, depth=3) if arch == "unet" else ResUNet(num_classes=3)
    for module in model.modules():  # trained-looking batch norms, so that their part of the join is checked
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    path = tmp_path / "model.onnx"
    runtime._export_onnx(model, (torch.rand(1, 3, 64, 96),), (0, 2, 3), path)
    graph = onnx.load(str(path)).graph
    conv_inputs = {node.input[0] for node in graph.node if node.op_type == "Conv"}
    concats = [node for node in graph.node if node.op_type == "Concat"]
    assert not [node.name for node in concats if set(node.output) & conv_inputs]
    joins = len(model.up) if arch == "unet" else 5
    assert (
        sum(node.op_type == "Conv" for node in graph.node)
        == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) + joins
    ), "one more convolution per join"
    _onnx_runtime_answers_as_eager(path, model, [(64, 96), (37, 53)])
    calls = []
    original = torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 96))
    assert len(calls) == joins, "eager PyTorch joins by concatenation"


class _TwoOutputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y.amax(dim=(2, 3)), y * 2


@pytest.mark.parametrize("static", [True, False])
def test_an_openvino_answer_is_the_callers_own_and_in_the_outputs_order(tmp_path, static):
    """The engine answers with copies of the request's outputs: each answer keeps its values after later calls
    (the request's buffers are reused), and the outputs come in the model's order, whatever their shapes."""
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = _TwoOutputs().eval()
    example = torch.rand(1, 3, 8, 10)
    path = tmp_path / "two.onnx"
    runtime._export_onnx(model, (example,), (0, 2, 3), path)
    xml = tmp_path / "two.xml"
    runtime._save_openvino(runtime._ov_core().read_model(str(path)), xml)
    engine = runtime._OpenVinoEngine(xml, "fp32", static)
    inputs = [torch.rand(1, 3, 8, 10), torch.rand(1, 3, 8, 10)]
    answers = [engine([x.numpy()]) for x in inputs]
    for x, answer in zip(inputs, answers):
        with torch.no_grad():
            want = [t.numpy() for t in model(x)]
        assert [a.shape for a in answer] == [(1, 4), (1, 4, 8, 10)]
        for got, expected in zip(answer, want):
            np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)  # another input's: off by ~0.1


def test_a_runtime_input_is_copied_to_its_layout_by_numpy():
    """A channels-last tensor reaches a runtime as a C-contiguous float32 array of the same values, copied by
    NumPy (not by PyTorch's parallel copy, whose OpenMP workers then spin on the runtime's cores)."""
    x = torch.rand(1, 3, 20, 30).contiguous(memory_format=torch.channels_last)
    got = runtime._to_numpy(x)
    assert got.flags["C_CONTIGUOUS"] and got.dtype == np.float32 and got.shape == (1, 3, 20, 30)
    np.testing.assert_array_equal(got, x.numpy())
    half = runtime._to_numpy(x.to(torch.bfloat16))
    assert half.dtype == np.float32 and half.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(half, x.to(torch.bfloat16).float().numpy())


def test_a_dwt_ensemble_serves_its_averaged_heads_and_takes_their_log_in_pytorch(monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    from seg.instances.inference import InstancePredictor, dwt_heads
    from seg.instances.models import AveragedHeads, DWTEnsemble, build_dwt

    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = DWTEnsemble([build_dwt(base_channels=4, depth=2), build_dwt(base_channels=4, depth=2)]).eval()
    assert isinstance(model.members, AveragedHeads)
    assert list(model.state_dict())[0].startswith("members.0."), "the checkpoints' keys are unchanged"
    predictor = InstancePredictor(model, {"work_height": 64}, runtime="eager")
    spec = predictor.serving_spec()
    assert list(spec.parts) == ["members"]
    served = runtime.build_serving(predictor.model, spec, "openvino-fp32")
    assert isinstance(served.members, runtime.RuntimePart) and not isinstance(served, runtime.RuntimePart)
    assert served.members.eager is None  # fed images, never an empty batch: no eager copy of the weights
    for width in (80, 97):  # one export, any width
        x = torch.rand(1, 3, 64, width)
        with torch.inference_mode():
            for got, want in zip(dwt_heads(served, x), dwt_heads(predictor.model, x)):
                assert got.shape == want.shape == (1, 1, 64, width)
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_the_dwt_runs_channels_last_on_the_cpu_with_the_same_maps(pennfudan_root):
    import copy

    from seg.instances.data import ids_for_split, load_sample
    from seg.instances.inference import InstancePredictor, dwt_maps

    model = _TinySegmenter(out_channels=2 + 5)
    default_layout = copy.deepcopy(model)
    predictor = InstancePredictor(model, {"tta_flip": True, "work_height": 96}, runtime="eager")
    assert predictor.model.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert default_layout.body[0].weight.is_contiguous()
    rgb = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[0]).image
    got = dwt_maps(predictor.model, rgb, work_height=96, flip=True)
    want = dwt_maps(default_layout, rgb, work_height=96, flip=True)
    for a, b in zip(got, want):
        assert a.shape == b.shape == rgb.shape[:2]
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_part_taking_a_list_of_feature_maps_is_served_like_eager(pennfudan_root):
    """Mask R-CNN's RPN head takes a list of feature maps and returns two lists: exported through
    its flat tensors, served with the nesting rebuilt, and equal to eager on a real image; its
    mask head answers an empty set of regions through eager PyTorch."""
    pytest.importorskip("onnxruntime")
    from seg.checkpoints import load_checkpoint
    from seg.instances.data import ids_for_split, load_sample
    from seg.instances.inference import InstancePredictor, to_tensor

    model, card = load_checkpoint(SHIPPED / "maskrcnn")
    predictor = InstancePredictor(model, card, runtime="eager")
    served = runtime.build_serving(
        model, predictor.serving_spec(), "onnx-fp32", parts=("rpn.head", "roi_heads.mask_head")
    )
    assert isinstance(served.rpn.head, runtime.RuntimePart) and served.backbone is not model.backbone
    assert not isinstance(served.roi_heads.box_head, runtime.RuntimePart)  # not asked for: stays eager
    rgb = load_sample(pennfudan_root, ids_for_split(pennfudan_root, "val")[1]).image
    with torch.inference_mode():
        images, _ = model.transform([to_tensor(rgb)])
        features = list(model.backbone(images.tensors).values())
        want, got = model.rpn.head(features), served.rpn.head(features)
        empty = torch.zeros(0, *served.roi_heads.mask_head.eager[0][0].weight.shape[1:2], 14, 14)
        assert served.roi_heads.mask_head(empty).shape[0] == 0
    # only a part fed regions keeps an eager copy for that: an image-fed one would hold its weights twice
    assert served.roi_heads.mask_head.eager is not None and served.rpn.head.eager is None
    assert isinstance(got, tuple) and [len(g) for g in got] == [len(w) for w in want] == [len(features)] * 2
    for got_level, want_level in zip(runtime.flatten_tensors(got), runtime.flatten_tensors(want)):
        torch.testing.assert_close(got_level, want_level, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_mask_rcnn_pools_its_boxes_on_threads_with_the_same_result(pennfudan_root, monkeypatch):
    """The RoI pools split one image's boxes across threads; every output tensor is unchanged."""
    import copy

    from seg.checkpoints import load_checkpoint
    from seg.instances.data import ids_for_split, load_sample
    from seg.instances.inference import InstancePredictor, ThreadedRoIPool, thread_roi_pools, to_tensor

    model, card = load_checkpoint(SHIPPED / "maskrcnn")
    stock = copy.deepcopy(model)
    predictor = InstancePredictor(model, card, runtime="eager")
    assert isinstance(predictor.model.roi_heads.box_roi_pool, ThreadedRoIPool)
    thread_roi_pools(predictor.model)  # idempotent
    assert not isinstance(predictor.model.roi_heads.box_roi_pool.pool, ThreadedRoIPool)
    calls = []
    pool = predictor.model.roi_heads.box_roi_pool
    monkeypatch.setattr(pool, "_pooled", lambda *a: calls.append(len(a[1][0])) or ThreadedRoIPool._pooled(pool, *a))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        for sample_id in ids_for_split(pennfudan_root, "val")[:2]:
            image = to_tensor(load_sample(pennfudan_root, sample_id).image)
            with torch.inference_mode():
                want, got = stock([image])[0], predictor.model([image])[0]
            assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    finally:
        torch.set_num_threads(threads)
    assert calls and min(calls) > 0  # the proposals did go through the worker threads


def _tiny_with_val(images: int, metrics: dict) -> tuple[_TinySegmenter, list[tuple], runtime.ServingSpec]:
    """The tiny segmenter, ``images`` calibration inputs, and a spec whose val check passes with ``metrics``."""
    tiny = _TinySegmenter()
    calls = [(torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(i)),) for i in range(images)]
    spec = runtime.ServingSpec(
        runtime.weights_key(tiny),
        {"": (0,)},
        lambda: calls[:1],
        lambda: calls,
        agreement=lambda module: runtime.Agreement(True, {**metrics, "images": images}, ""),
        context={"input_size": [32, 48]},
    )
    return tiny, calls, spec


def test_shipped_int8_parameters_rebuild_the_checked_graph_without_the_dataset(monkeypatch, tmp_path):
    """int8 parameters written after a calibration on val let a machine without the dataset (no training
    images, no val split) serve the very int8 graph that passed, and nothing else: altered ranges are refused."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from seg.int8_params import decode_values, encode_values

    tiny, calls, with_data = _tiny_with_val(4, {"miou": 0.51, "reference_miou": 0.512, "pixel_agreement": 0.99})
    monkeypatch.setattr(runtime, "MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(
        runtime,
        "time_interleaved",
        lambda functions, **k: {n: 10.0 if n == "openvino-int8" else 20.0 for n in functions},
    )
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "built"))
    built = runtime.calibrate(tiny, with_data, "openvino")
    assert built.backend == "openvino-int8"
    shipped = tmp_path / "checkpoints"
    path = runtime.write_int8_params(with_data, built, shipped / "int8")
    params = json.loads(path.read_text())
    assert path.stat().st_size < 4096 and params["parts"][""]["ranges"]
    assert params["agreement"]["metrics"]["reference_miou"] == 0.512
    built_xml = next(runtime.export_dir(with_data.key).glob("*-openvino-int8-*.xml"))
    built_out = runtime._OpenVinoEngine(built_xml, "int8", True)([calls[0][0].numpy()])[0]

    # a machine without the dataset: no calibration images, no agreement check
    monkeypatch.setenv("SEG_CHECKPOINT_DIR", str(shipped))  # a folder of one's own checkpoints, with int8/
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "space"))
    quantised: list[int] = []
    real = runtime._nncf_quantise
    monkeypatch.setattr(runtime, "_nncf_quantise", lambda o, c, *r: (quantised.append(len(c)), real(o, c, *r))[1])
    no_data = runtime.ServingSpec(with_data.key, {"": (0,)}, lambda: calls[:1], context={"input_size": [32, 48]})
    choice = runtime.calibrate(tiny, no_data, "openvino")
    assert choice.backend == "openvino-int8", choice
    assert "shipped parameters" in choice.agreement["openvino-int8"]["reason"]
    assert choice.agreement["openvino-int8"]["reference_miou"] == 0.512
    assert quantised == [1], "quantised once on one input, only to place the quantisers"
    xml = next(runtime.export_dir(no_data.key).glob("*-openvino-int8-*.xml"))
    assert runtime.served_int8_digests(no_data) == {"": params["parts"][""]["digest"]}
    served = runtime._OpenVinoEngine(xml, "int8", True)([calls[0][0].numpy()])[0]
    assert np.array_equal(served, built_out)
    # checked under other settings: the recorded agreement does not carry over
    other = runtime.ServingSpec(with_data.key, {"": (0,)}, lambda: calls[:1], context={"input_size": [64, 96]})
    assert runtime._agreement_of_params(other) is None

    # altered ranges rebuild another graph: refused, and without training images there is no int8 at all
    first = params["parts"][""]["ranges"][0]
    first["values"] = encode_values(decode_values(first) + 0.5)
    path.write_text(json.dumps(params))
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "tampered"))
    tampered = runtime.calibrate(tiny, no_data, "openvino")
    assert tampered.backend != "openvino-int8" and "openvino-int8" not in tampered.timings_ms
    assert not list(runtime.export_dir(no_data.key).glob("*-openvino-int8-*"))


def test_the_checked_int8_graph_holds_nothing_computed_where_it_is_rebuilt(tmp_path):
    """The graph an agreement check measures (and shipped parameters rebuild) holds the fp32 export's own
    constants and the quantisers' ranges, nothing else: no value a CPU could round its own way. The served
    file is that graph with its weights rounded to int8 values, made beside the parameters it came from."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino as ov

    from seg.int8_params import _range_constants, graph_digest

    tiny = _TinySegmenter(out_channels=5)
    calls = [(torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(i)),) for i in range(3)]
    onnx_path = tmp_path / "model.onnx"
    runtime._export_onnx(runtime.fold_batch_norms(tiny), calls[0], (0,), onnx_path)
    exported = {
        np.ascontiguousarray(op.get_data()).tobytes()
        for op in runtime._ov_core().read_model(str(onnx_path)).get_ops()
        if op.get_type_name() == "Constant"
    }

    checked = runtime._nncf_quantise(onnx_path, calls, ())
    ranges = {index for index, _ in _range_constants(checked)}
    assert ranges, "the quantisers are in place"
    weight_quantisers = 0
    for index, op in enumerate(checked.get_ordered_ops()):
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() == "Constant":
            weight_quantisers += 1
        if op.get_type_name() == "Constant" and index not in ranges:
            assert np.ascontiguousarray(op.get_data()).tobytes() in exported, op.get_friendly_name()
    assert weight_quantisers == 2, "each convolution's weights stay float behind a quantiser"

    digest = graph_digest(checked)
    served = tmp_path / "model-openvino-int8-r3.xml"
    runtime._save_int8(checked, served)
    beside = json.loads(runtime._checked_path(served).read_text())
    assert beside["digest"] == digest and len(beside["ranges"]) == len(ranges)
    graph = runtime._ov_core().read_model(str(served))
    assert not any(
        op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() == "Constant"
        for op in graph.get_ops()
    )
    assert any(
        op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.i8 for op in graph.get_ops()
    )
    assert runtime._int8_file_complete(served)
    runtime._checked_path(served).unlink()
    assert not runtime._int8_file_complete(served), "an export without its checked graph's parameters is made again"


def test_int8_is_checked_on_its_own_for_parameters_when_a_faster_backend_passed_first(monkeypatch, tmp_path):
    """Where another backend is faster (bf16 on an AMX CPU), the calibration never checks int8; parameters to
    ship for CPUs without AMX need that check, made apart without changing the recorded choice."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    tiny, _, spec = _tiny_with_val(3, {"miou": 0.5, "reference_miou": 0.501, "pixel_agreement": 0.99})
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(
        runtime,
        "time_interleaved",
        lambda functions, **k: {n: {"openvino-fp32": 5.0, "openvino-int8": 10.0}.get(n, 20.0) for n in functions},
    )
    choice = runtime.calibrate(tiny, spec, "openvino")
    assert choice.backend == "openvino-fp32" and "openvino-int8" not in choice.agreement
    with pytest.raises(ValueError, match="not checked on val"):
        runtime.write_int8_params(spec, choice, tmp_path / "int8")

    checked = runtime.with_int8_checked(tiny, spec, choice)
    assert checked.agreement["openvino-int8"]["passed"]
    params = json.loads(runtime.write_int8_params(spec, checked, tmp_path / "int8").read_text())
    assert params["agreement"]["metrics"]["reference_miou"] == 0.501
    assert runtime.read_choice(spec, "openvino").backend == "openvino-fp32", "the serving choice stays"
    assert runtime.with_int8_checked(tiny, spec, checked) is checked


def test_int8_range_values_round_trip_and_malformed_ones_are_refused():
    from seg.int8_params import decode_values, encode_values

    for data in (np.linspace(-3, 5, 24, dtype=np.float32).reshape(2, 3, 4), np.array(1.5, dtype=np.float32)):
        entry = {"dtype": str(data.dtype), "shape": list(data.shape), "values": encode_values(data)}
        back = decode_values(json.loads(json.dumps(entry)))
        assert back.dtype == data.dtype and back.shape == data.shape and np.array_equal(back, data)
    for bad in ("not base64!", encode_values(np.zeros(5, dtype=np.float32))):
        with pytest.raises(ValueError):
            decode_values({"dtype": "float32", "shape": [2, 3], "values": bad})


def test_int8_parameters_are_trusted_only_at_a_thread_count_where_they_passed(monkeypatch, tmp_path):
    """The same int8 graph can score differently with another thread count, so the check is recorded per
    thread count: exports at two counts merge into one file, and a machine without the dataset serves int8
    on that record only at a count where it passed."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")

    tiny = _TinySegmenter()
    calls = [(torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
    verdicts = {1: True, 2: False}  # what the val check says at each thread count

    def agreement(module):
        passed = verdicts[torch.get_num_threads()]
        return runtime.Agreement(passed, {"miou": 0.5, "reference_miou": 0.51 if passed else 0.52, "images": 4}, "")

    def spec(with_data: bool) -> runtime.ServingSpec:
        if with_data:
            return runtime.ServingSpec(
                runtime.weights_key(tiny), {"": (0,)}, lambda: calls[:1], lambda: calls, agreement, {"size": 32}
            )
        return runtime.ServingSpec(runtime.weights_key(tiny), {"": (0,)}, lambda: calls[:1], context={"size": 32})

    monkeypatch.setattr(runtime, "MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(
        runtime,
        "time_interleaved",
        lambda functions, **k: {n: 10.0 if n == "openvino-int8" else 20.0 for n in functions},
    )
    folder = tmp_path / "checkpoints" / "int8"
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "built"))
        records = {}
        for count in (1, 2):
            torch.set_num_threads(count)
            choice = runtime.calibrate(tiny, spec(True), "openvino")
            assert (choice.backend == "openvino-int8") == verdicts[count]
            records[count] = json.loads(runtime.write_int8_params(spec(True), choice, folder).read_text())
        assert list(records[1]["agreement"]["by_threads"]) == ["1"]
        by_threads = records[2]["agreement"]["by_threads"]
        assert by_threads["1"]["passed"] and not by_threads["2"]["passed"]
        assert records[2]["agreement"]["metrics"]["reference_miou"] == 0.51  # the passing check
        assert records[2]["agreement"]["threads"] == 1

        monkeypatch.setenv("SEG_CHECKPOINT_DIR", str(folder.parent))  # a machine without the dataset
        for count in (1, 2):
            torch.set_num_threads(count)
            monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / f"space-{count}"))
            served = runtime.calibrate(tiny, spec(False), "openvino")
            reason = served.agreement.get("openvino-int8", {}).get("reason", "")
            assert ("shipped parameters" in reason) == verdicts[count], served
            assert (served.backend == "openvino-int8") == verdicts[count]
    finally:
        torch.set_num_threads(threads)


def test_a_choice_of_some_parts_reads_its_own_timing_and_agreement():
    """A backend serving only some parts is its own candidate: the record's figures for it, not for the
    whole backend (which failed the contract), are the chosen one's."""
    from seg.runtime import EAGER, RuntimeChoice, part_label

    label = part_label("openvino-int8", ["backbone", "rpn"])
    choice = RuntimeChoice(
        "openvino-int8",
        "auto",
        "fastest backend that passes the agreement contract (serving backbone, rpn)",
        {EAGER: 100.0, "openvino-int8": 20.0, label: 40.0},
        {"openvino-int8": {"passed": False}, label: {"passed": True}},
        parts=["backbone", "rpn"],
    )
    assert choice.label == "openvino-int8 [backbone+rpn]" and choice.agreement[choice.label]["passed"]
    assert choice.speedup == 2.5
    whole = RuntimeChoice("openvino-int8", "auto", "", {EAGER: 100.0, "openvino-int8": 20.0})
    assert whole.label == "openvino-int8" and whole.speedup == 5.0


class _TinySegmenterDoubled(_TinySegmenter):
    """The same weights as ``_TinySegmenter``, another forward: another exported graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * 2


def test_the_same_weights_under_changed_code_export_apart(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    old, new = _TinySegmenter(), _TinySegmenterDoubled()
    assert runtime.weights_key(old) == runtime.weights_key(new)
    assert runtime.code_key(old) != runtime.code_key(new)
    assert runtime.code_key(old) == runtime.code_key(_TinySegmenter())
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    served = {}
    for model in (old, new):
        spec = runtime.ServingSpec(runtime.weights_key(model), {"": (0,)}, lambda: [(x,)], code=runtime.code_key(model))
        served[model] = runtime.build_serving(model, spec, "onnx-fp32")
    with torch.inference_mode():
        for model, module in served.items():
            # each model is served its own graph, although a cached export of the other has the same weights
            torch.testing.assert_close(module(x), model(x), rtol=1e-4, atol=1e-4)
    assert len({runtime.export_dir(runtime.weights_key(old), runtime.code_key(m)) for m in (old, new)}) == 2


def test_exports_of_older_model_code_are_removed_once_stale(monkeypatch, tmp_path):
    import fcntl
    import os
    import time

    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    key = "ab" * 32
    old, recent, busy = (runtime.export_dir(key, code) for code in ("0ld0c0de", "4ecen7c0", "b05yc0de"))
    for folder in (old, recent, busy):
        (folder / "model.onnx").write_bytes(b"graph")
    week_ago = time.time() - runtime.STALE_EXPORT_S - 60
    for folder in (old, busy):
        for path in (folder / "model.onnx", folder):
            os.utime(path, (week_ago, week_ago))
    legacy = runtime.export_dir(key)  # exports made before the code was part of the key; references live there
    (legacy / "reference-x.json").write_text("{}")
    with open(busy / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a calibration under way in another process
        for path in (busy / ".lock", busy):
            os.utime(path, (week_ago, week_ago))
        current = runtime.export_dir(key, "c0de2026")
        fcntl.flock(handle, fcntl.LOCK_UN)
    assert current.is_dir() and not old.exists()
    assert (recent / "model.onnx").is_file() and (busy / "model.onnx").is_file()
    assert (legacy / "reference-x.json").is_file()
    # an existing folder is only looked up: nothing is pruned then
    os.utime(recent / "model.onnx", (week_ago, week_ago))
    os.utime(recent, (week_ago, week_ago))
    assert runtime.export_dir(key, "c0de2026") == current and recent.is_dir()


class _TinySkipNet(torch.nn.Module):
    """A U-Net in miniature: a skip connection joined to the deeper path by a Concat."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.deep = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(16, 4, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        return self.head(torch.cat([skip, self.deep(skip)], 1))


def test_each_int8_recipe_exports_apart_and_quantises_concat_only_where_it_says(monkeypatch, tmp_path):
    """Recipe 2 (instances) leaves Concat in float, recipe 3 (semantic) quantises its inputs; the two exports
    and their shipped parameters never stand in for each other."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SEG_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    model = _TinySkipNet()
    calls = [(torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
    metrics = {"miou": 0.5, "reference_miou": 0.5, "pixel_agreement": 1.0, "images": 4}
    monkeypatch.setattr(runtime, "MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(
        runtime, "time_interleaved", lambda functions, **k: {n: 1.0 if n == "openvino-int8" else 5.0 for n in functions}
    )
    quantised_into_concat = {}
    for float_ops in (("Concat",), ()):
        spec = runtime.ServingSpec(
            runtime.weights_key(model),
            {"": (0,)},
            lambda: calls[:1],
            lambda: calls,
            lambda module: runtime.Agreement(True, metrics, ""),
            {"size": 32},
            int8_float_ops=float_ops,
        )
        recipe = runtime.int8_recipe(spec)
        other_spec = dataclasses.replace(spec, int8_float_ops=("Concat",) if not float_ops else ())
        choice = runtime.calibrate(model, spec, "openvino")
        assert choice.backend == "openvino-int8"
        assert runtime.read_choice(spec, "openvino").backend == "openvino-int8"
        if recipe == 2:  # not calibrated yet under recipe 3: another recipe's record is never read
            assert runtime.read_choice(other_spec, "openvino") is None
        xml = runtime.export_dir(spec.key, spec.code) / f"model-openvino-int8-r{recipe}.xml"
        graph = runtime._ov_core().read_model(str(xml))
        quantised_into_concat[recipe] = sum(
            op.get_type_name() == "FakeQuantize"
            and any(t.get_node().get_type_name() == "Concat" for out in op.outputs() for t in out.get_target_inputs())
            for op in graph.get_ops()
        )
        runtime.write_int8_params(spec, choice, tmp_path / "checkpoints" / "int8")  # one file per weights
        other = 5 - recipe
        assert runtime.read_int8_params(spec.key, recipe)["recipe"] == recipe
        assert runtime.read_int8_params(spec.key, other) is None, "another recipe's parameters are never used"
    assert quantised_into_concat == {2: 0, 3: 2}, quantised_into_concat


def test_onnx_runtime_int8_quantises_a_unet_served_at_any_size_and_leaves_no_files_behind(monkeypatch, tmp_path):
    """A U-Net exported with dynamic sizes (as the DWT is served) goes through ONNX Runtime's int8 preprocessing,
    and nothing lands in the working directory."""
    pytest.importorskip("onnxruntime")
    from seg.models.unet import UNet

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    torch.manual_seed(0)
    model = UNet(num_classes=3, base_channels=4, depth=3).eval()
    exported, quantised = tmp_path / "unet.onnx", tmp_path / "unet-int8.onnx"
    calls = [(torch.rand(1, 3, 40, 56),), (torch.rand(1, 3, 37, 61),)]
    runtime._export_onnx(model, calls[0], (0, 2, 3), exported)
    runtime._quantise_onnx(exported, calls, quantised)
    assert quantised.is_file() and list(work.iterdir()) == []
    (got,) = runtime._OrtEngine(quantised)([calls[1][0].numpy()])
    with torch.no_grad():
        want = model(calls[1][0]).numpy()
    assert got.shape == want.shape == (1, 3, 37, 61)
    assert np.mean(got.argmax(1) == want.argmax(1)) > 0.9


def test_onnx_runtime_threads_do_not_spin_after_a_call(monkeypatch, tmp_path):
    """Spinning threads would take the cores from whatever runs next in the process (eager PyTorch, OpenVINO)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    model = _TinySkipNet()
    calls = [(torch.rand(1, 3, 32, 48),)]
    spec = runtime.ServingSpec(runtime.weights_key(model), {"": (0,)}, lambda: calls, lambda: calls)
    served = runtime.build_serving(model, spec, "onnx-fp32")
    options = served.engine.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with torch.inference_mode():
        torch.testing.assert_close(served(*calls[0]), model(*calls[0]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["onnx-fp32", "openvino-fp32", "openvino-int8"])
def test_a_served_answer_never_changes_under_its_caller(monkeypatch, tmp_path, backend):
    """The OpenVINO engine reuses one infer request per compiled shape; every answer must still be the
    caller's own tensor, untouched by the next call (from this thread or another)."""
    pytest.importorskip("onnxruntime" if backend.startswith("onnx") else "openvino")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    model = _TinySkipNet()
    calls = [(torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
    spec = runtime.ServingSpec(runtime.weights_key(model), {"": (0,)}, lambda: calls[:1], lambda: calls)
    served = runtime.build_serving(model, spec, backend)
    with torch.inference_mode():
        first = served(*calls[0])
        kept = first.clone()
        second = served(*calls[1])
        assert not torch.equal(first, second)
        assert torch.equal(first, kept), "the second call wrote into the first answer"
        answers = {}

        def ask(i: int) -> None:
            answers[i] = served(*calls[i % 2])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, answer in answers.items():
        torch.testing.assert_close(answer, (kept if i % 2 == 0 else second), rtol=0, atol=0)


def test_a_calibration_stops_timing_once_the_fastest_is_beyond_doubt():
    """Three rounds suffice when the fastest backend's slowest call beats every other's fastest; while
    the order is in doubt the rounds go on, so a choice is never made on a lucky round."""
    import time

    calls = {"fast": 0, "slow": 0, "uneven": 0}

    def timed(name: str, seconds: Callable[[int], float]) -> Callable[[], None]:
        def call() -> None:
            calls[name] += 1
            time.sleep(seconds(calls[name]))

        return call

    clear = runtime.time_interleaved(
        {"fast": timed("fast", lambda n: 0.001), "slow": timed("slow", lambda n: 0.05)}, warmup=1, until_clear=True
    )
    assert calls["fast"] == calls["slow"] == 1 + 3 and clear["fast"] < clear["slow"]
    # its median is the lowest, but every other call takes 10 ms: never clearly faster than 5 ms
    runtime.time_interleaved(
        {"uneven": timed("uneven", lambda n: 0.001 if n % 2 else 0.01), "slow": timed("slow", lambda n: 0.005)},
        warmup=1,
        until_clear=True,
    )
    assert calls["uneven"] == 1 + 7


def test_a_calibration_times_a_candidate_far_slower_than_the_fastest_once():
    """After one timed round, a candidate over ``drop_beyond`` times the fastest is called no more (its one
    call ranks it) unless it is kept, as eager is; the others go on for their rounds."""
    import time

    calls = {"fast": 0, "near": 0, "far": 0, "kept": 0}

    def sleeps(name: str, seconds: float) -> Callable[[], None]:
        def call() -> None:
            calls[name] += 1
            time.sleep(seconds)

        return call

    timings = runtime.time_interleaved(
        {
            "fast": sleeps("fast", 0.002),
            "near": sleeps("near", 0.003),
            "far": sleeps("far", 0.03),
            "kept": sleeps("kept", 0.03),
        },
        rounds=5,
        warmup=1,
        drop_beyond=2.0,
        keep=["kept"],
    )
    assert calls == {"fast": 1 + 5, "near": 1 + 5, "far": 1 + 1, "kept": 1 + 5}
    assert set(timings) == set(calls) and timings["fast"] < timings["near"] < timings["far"]


def test_a_calibration_child_stops_with_its_parent_and_a_stopped_one_is_not_redone_in_process(monkeypatch):
    """``_calibrate_apart``'s child (``seglab export``) must not outlive the process that started it, and a
    child stopped by a signal is not calibrated again in process; a failing child is."""
    script = (
        "import sys, threading, time\n"
        "from pathlib import Path\n"
        "from seg import runtime\n"
        "runtime._export_command = lambda source, rt: [sys.executable, '-c', 'import time; time.sleep(120)']\n"
        "runtime.read_choice = lambda spec, rt: None\n"
        "threading.Thread(target=runtime._calibrate_apart, args=(None, 'auto', Path('x')), daemon=True).start()\n"
        "deadline = time.time() + 60\n"
        "while not runtime._CHILDREN and time.time() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print(next(iter(runtime._CHILDREN)).pid, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    child = int(done.stdout.split()[-1])
    with pytest.raises(ProcessLookupError):  # stopped and reaped when its parent exited
        os.kill(child, 0)

    monkeypatch.setattr(runtime, "read_choice", lambda spec, rt: None)
    signalled = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    monkeypatch.setattr(runtime, "_export_command", lambda source, rt: signalled)
    with pytest.raises(runtime.CalibrationStopped):
        runtime._calibrate_apart(None, "auto", REPO_ROOT / "x")
    failing = [sys.executable, "-c", "raise SystemExit('no dataset')"]
    monkeypatch.setattr(runtime, "_export_command", lambda source, rt: failing)
    assert runtime._calibrate_apart(None, "auto", REPO_ROOT / "x") is False  # the caller calibrates in process


def test_a_dwt_ensembles_fill_passes_run_on_the_cards_fill_members_served_or_not(monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    from seg.instances.inference import InstancePredictor, dwt_heads, dwt_pass
    from seg.instances.models import DWTEnsemble, build_dwt

    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = DWTEnsemble([build_dwt(base_channels=4, depth=2) for _ in range(3)]).eval()
    card = {"work_height": 64, "fill_scales": [2.0], "fill_members": [1]}
    predictor = InstancePredictor(model, card, runtime="eager")
    assert model.fill is None, "the caller's ensemble is left as it was"
    assert predictor.fill_members == (1,) and predictor.model.members[1] is model.members[1]
    assert list(predictor.serving_spec().parts) == ["members", "fill"]
    assert "members" in predictor._serving_context()["fill"]
    without = InstancePredictor(model, card | {"fill_scales": []}, runtime="eager")
    assert without.fill_members == () and list(without.serving_spec().parts) == ["members"]
    alone = DWTEnsemble([model.members[1]]).eval()
    served = runtime.build_serving(predictor.model, predictor.serving_spec(), "openvino-fp32")
    assert isinstance(served.members, runtime.RuntimePart) and isinstance(served.fill, runtime.RuntimePart)
    x = torch.rand(1, 3, 64, 90)
    with torch.inference_mode():
        for network in (predictor.model, served):
            # the fill pass is the fill member's alone; the main pass still averages every member
            for got, want in zip(dwt_pass(network, x, False, 2.0, 2, fill=True), dwt_pass(alone, x, False, 2.0, 2)):
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
            for got, want in zip(dwt_heads(network, x), dwt_heads(model, x)):
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
        assert not torch.allclose(dwt_pass(model, x, False, 2.0, 2, fill=True)[0], dwt_pass(alone, x, False, 2.0, 2)[0])


def test_a_served_ensembles_mirrored_pass_is_read_half_by_half_and_equals_the_eager_heads(monkeypatch, tmp_path):
    """A served ensemble runs the image and its mirror as two calls; each half's heads come from its own output
    and average to the eager ensemble's mirrored heads, which average the plain and mirrored passes' heads."""
    pytest.importorskip("openvino")
    from seg.instances.inference import InstancePredictor, dwt_heads, dwt_pass
    from seg.instances.models import DWTEnsemble, build_dwt

    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = DWTEnsemble([build_dwt(base_channels=4, depth=2) for _ in range(2)]).eval()
    predictor = InstancePredictor(model, {"work_height": 64, "tta_flip": True}, runtime="eager")
    served = runtime.build_serving(predictor.model, predictor.serving_spec(), "openvino-fp32")
    calls: list[tuple[int, ...]] = []
    served.members.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    x = torch.rand(1, 3, 64, 90)
    with torch.inference_mode():
        plain, mirrored = dwt_heads(model, x), dwt_heads(model, x.flip(-1))
        averaged = [(a + b.flip(-1)) / 2 for a, b in zip(plain, mirrored)]
        for got, want in zip(dwt_heads(model, x, flip=True), averaged):  # eager: one batch of two
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        calls.clear()
        for got, want in zip(dwt_heads(served, x, flip=True), averaged):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
        assert [shape[0] for shape in calls] == [1, 1] and calls[0] == calls[1]  # padded to one shape
        for got, want in zip(dwt_pass(served, x, True, 1.5, 2), dwt_pass(model, x, True, 1.5, 2)):  # strips too
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
        assert not torch.allclose(averaged[1], plain[1])  # an untrained ensemble is not mirror-symmetric
