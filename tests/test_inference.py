"""The semantic predict path: labels as the largest logit (``max(0).indices``), equal to the
argmax of the probabilities; probabilities computed on request; input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from seg.config import REPO_ROOT
from seg.inference import Predictor, labels_at, prepare_input

UNET = REPO_ROOT / "checkpoints" / "unet"


@pytest.fixture(scope="module")
def unet() -> Predictor:
    return Predictor.from_checkpoint(UNET, device="cpu", runtime="eager")


def _reference(predictor: Predictor, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predict path as it was: softmax over the full-size logits, then argmax."""
    h, w = image.shape[:2]
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0).float().div_(255)
    tw, th = predictor.input_size
    x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        logits = predictor.model(x.contiguous(memory_format=torch.channels_last)).float()
        probs = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)[0]
    return probs.argmax(0).to(torch.uint8).numpy(), probs.numpy()


def test_labels_equal_the_argmax_of_the_probabilities_on_large_uploads(sbd_root, unet):
    paths = sorted((sbd_root / "images").glob("*.jpg"))[:4]
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB").resize((1024, 768), Image.BILINEAR))
        prediction = unet.predict(image)
        label, probs = _reference(unet, image)
        assert prediction.label.shape == (768, 1024) and prediction.label.dtype == np.uint8
        np.testing.assert_array_equal(prediction.label, label)
        np.testing.assert_allclose(prediction.probs, probs, atol=1e-5)
        shares = prediction.class_shares()
        assert len(shares) == len(unet.classes) and shares.sum() == pytest.approx(1.0)


def test_max_indices_match_argmax_on_ties_and_at_the_model_size():
    logits = torch.zeros(3, 4, 5)
    logits[1, :2] = 1.0
    logits[2, 2:] = 1.0  # ties with nothing; rows 0..1 class 1, rows 2..3 class 2
    label, full = labels_at(logits, (4, 5))
    assert full is not None and torch.equal(label.long(), logits.argmax(0))
    tied = torch.zeros(4, 2, 2)  # every class equal: both pick the first
    assert torch.equal(labels_at(tied, (2, 2))[0].long(), tied.argmax(0))


def test_input_checks_and_a_read_only_image(unet):
    with pytest.raises(ValueError):
        prepare_input(np.zeros((10, 10), np.uint8), unet.input_size)
    with pytest.raises(ValueError):
        unet.predict(np.zeros((10, 10, 3), np.float32))
    image = np.full((50, 70, 3), 120, np.uint8)
    image.setflags(write=False)
    assert unet.predict(image).label.shape == (50, 70)
    assert unet.backend == "eager-fp32"


@pytest.mark.parametrize("name", ["dwt", "maskrcnn"])
def test_instance_predictors_refuse_what_the_semantic_one_refuses(unet, name):
    """A float, 16-bit, grey, RGBA or empty array, or no array at all: the same plain refusal from every
    predictor, instead of an answer computed as if the pixels were 8-bit (a float image came back
    with no pedestrians) or an error from deep inside torch."""
    from seg.instances.inference import InstancePredictor

    predictor = InstancePredictor.from_checkpoint(REPO_ROOT / "checkpoints" / name, runtime="eager")
    wrong = [
        np.random.default_rng(0).random((60, 80, 3), dtype=np.float32),
        np.zeros((60, 80, 3), np.uint16),
        np.zeros((60, 80), np.uint8),
        np.zeros((60, 80, 4), np.uint8),
        np.zeros((0, 80, 3), np.uint8),
        [[0, 0, 0]],
    ]
    for image in wrong:
        for model in (unet, predictor):
            with pytest.raises(ValueError, match=r"expected an \(H,W,3\) uint8 RGB image"):
                model.predict(image)
    assert predictor.predict(np.zeros((1, 1, 3), np.uint8)).instances.shape == (1, 1)
