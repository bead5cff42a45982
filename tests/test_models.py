"""The registry, every model's shapes, the prior, and the encoder-initialisation rules."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import ResNet18_Weights, resnet18

from seg.models import available, create
from seg.models.encoders import EncoderWeightsError, load_encoder_weights


def test_registry_lists_semantic_models_and_rejects_unknown():
    assert {"prior", "cnn", "unet", "resunet"} <= set(available())
    with pytest.raises(KeyError, match="unknown model"):
        create("nope")


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("cnn", {"width": 8}),
        ("unet", {"base_channels": 8}),
        ("unet", {"base_channels": 8, "context": True}),
        ("resunet", {}),
        ("resunet", {"context": True}),
        ("prior", {}),
    ],
)
def test_output_shape_matches_input(name, kwargs):
    model = create(name, num_classes=9, **kwargs).eval()
    with torch.no_grad():
        for h, w in ((224, 288), (100, 75)):  # odd sizes too
            assert model(torch.rand(2, 3, h, w)).shape == (2, 9, h, w)


def test_a_resunet_gains_a_global_context_block_as_an_identity(tmp_path):
    from seg.checkpoints import save_checkpoint, warm_start

    torch.manual_seed(0)
    plain = create("resunet", num_classes=9).eval()
    save_checkpoint(tmp_path / "plain", plain, {"task": "semantic"}, fp16=False)
    widened = create("resunet", num_classes=9, context=True).eval()
    assert "global-context block added as an identity" in warm_start(widened, tmp_path / "plain")["loaded"]
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(widened(x), plain(x))
        torch.nn.init.normal_(widened.context.expand.weight)
        assert not torch.equal(widened(x), plain(x)), "the block sits on the path to the output"


def test_prior_fit_is_per_pixel_frequency():
    masks = torch.tensor([[[0, 1], [2, 2]], [[0, 2], [2, 1]]], dtype=torch.uint8)
    prior = create("prior", num_classes=3, height=2, width=2).fit(masks)
    probs = prior(torch.zeros(1, 3, 2, 2)).softmax(1)[0]
    assert probs[0, 0, 0] == pytest.approx(1.0, abs=1e-3)
    assert probs[1, 0, 1] == pytest.approx(0.5, abs=1e-3) and probs[2, 0, 1] == pytest.approx(0.5, abs=1e-3)


def _resnet18_state(tmp_path, suffix):
    torch.manual_seed(7)
    net = resnet18(weights=None)
    path = tmp_path / f"my_resnet18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path)
    return net, path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resunet_encoder_from_local_file(tmp_path, suffix):
    net, path = _resnet18_state(tmp_path, suffix)
    model = create("resunet", encoder_init=str(path))
    assert torch.equal(model.encoder.conv1.weight, net.conv1.weight)
    assert "local file" in model.encoder_init


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """The real weights-API path: the file sits where torchvision caches ImageNet weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net, path = _resnet18_state(tmp_path, ".pth")
    cached = tmp_path / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    path.replace(cached)
    target = resnet18(weights=None)
    # an existing cache file is used as is (torchvision checks the hash only when it downloads)
    text = load_encoder_weights(target, "imagenet", ResNet18_Weights.IMAGENET1K_V1)
    assert "ImageNet" in text
    assert torch.equal(target.conv1.weight, net.conv1.weight)


def test_imagenet_unavailable_is_a_clear_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache; no network here either

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(EncoderWeightsError, match="resnet18-f37072fd.pth"):
        create("resunet", encoder_init="imagenet")


def test_mismatched_or_missing_weights_file(tmp_path):
    save_file({"conv1.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(EncoderWeightsError, match="do not match"):
        create("resunet", encoder_init=str(tmp_path / "bad.safetensors"))
    with pytest.raises(EncoderWeightsError, match="not found"):
        create("resunet", encoder_init=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize(
    ("name", "kwargs", "said"),
    [
        ("unet", {"num_classes": 0}, "num_classes must be a whole number, 1 or more"),
        ("unet", {"base_channels": 0}, "unet: base_channels must be a whole number, 1 or more"),
        ("unet", {"depth": 0}, "unet: depth must be a whole number in [1, 6]"),
        ("unet", {"depth": 9}, "unet: depth must be a whole number in [1, 6]"),
        ("unet", {"base_channels": 64, "depth": 6}, "widest stage would have 4096 channels; at most 2048"),
        ("cnn", {"stages": 0}, "cnn: stages must be a whole number in [1, 6]"),
        ("cnn", {"width": 2.5}, "cnn: width must be a whole number"),
        ("cnn", {"width": 512, "stages": 4}, "widest stage would have 4096 channels"),
        ("dwt", {"num_classes": 2, "depth": 8}, "unet: depth must be a whole number in [1, 6]"),
    ],
)
def test_architectures_that_build_nothing_or_too_much_are_refused_before_allocating(name, kwargs, said):
    """``--arch depth=9`` once allocated a U-Net whose bottom stage had 16,384 channels until the
    process was killed for memory; zero channels or stages built a model that failed on its first input."""
    with pytest.raises(ValueError) as refused:
        create(name, **kwargs)
    assert said in str(refused.value)


def test_the_widest_allowed_models_and_numpy_counts_still_build():
    import numpy as np

    assert create("cnn", width=np.int64(8), stages=np.int64(6)).classifier.in_channels == 256
    assert create("unet", num_classes=np.int64(3), base_channels=1, depth=6).head.out_channels == 3


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_a_decoder_trains_to_the_same_gradients_with_its_upsampling_gradient_made_dense(monkeypatch, name):
    """The decoder hands its resize a dense gradient in training (a faster backward on the CPU); the loss and every
    parameter's gradient are those of the plain resize, in fp32 and bf16 autocast, channels-last."""
    import seg.models.common as common

    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0)).to(memory_format=torch.channels_last)
    target = torch.randint(0, 9, (2, 48, 64), generator=torch.Generator().manual_seed(1))

    def step(dense: bool, autocast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = create(name, num_classes=9).to(memory_format=torch.channels_last).train()
        applied = []
        real = common._DenseGrad.apply
        monkeypatch.setattr(common._DenseGrad, "apply", lambda y: (applied.append(1), real(y) if dense else y)[1])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(model(x).float(), target)
        loss.backward()
        assert len(applied) == {"unet": 4, "resunet": 5}[name], "every decoder stage in training"
        return loss.detach(), [p.grad for p in model.parameters() if p.grad is not None]

    for autocast in (False, True):
        plain_loss, plain = step(False, autocast)
        dense_loss, dense = step(True, autocast)
        assert torch.equal(plain_loss, dense_loss) and len(plain) == len(dense) > 0
        assert all(torch.equal(a, b) for a, b in zip(plain, dense))
    model = create(name, num_classes=9).eval()
    monkeypatch.setattr(common._DenseGrad, "apply", lambda y: pytest.fail("not in inference or export"))
    model(x)
