"""Pictures for people (``seg.render``) on real Stanford Background and Penn-Fudan samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from seg.classes import SBD_CLASSES, SBD_PALETTE, colorize
from seg.render import card_classes, class_shares, draw_instances, hstack, instance_colours, overlay, thumbnail, vstack


@pytest.fixture(scope="module")
def scene(sbd_root):
    """A real Stanford Background image with its class mask."""
    from seg.data.sbd import list_samples, read_label
    from seg.io import load_image

    sample = next(s for s in list_samples(sbd_root) if s.label_path is not None)
    return load_image(sample.image_path), read_label(sample)


@pytest.fixture(scope="module")
def pedestrians(pennfudan_root):
    from seg.instances.data import load_sample

    return load_sample(pennfudan_root, "FudanPed00001")


def test_overlay_is_the_alpha_blend_of_image_and_class_colours(scene):
    image, label = scene
    colours = colorize(label, SBD_PALETTE).astype(np.float64)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        out = overlay(image, label, SBD_PALETTE, alpha)
        exact = image * (1 - alpha) + colours * alpha
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.abs(out - exact).max() <= 1, f"alpha {alpha}: within one grey level of the exact blend"
    assert np.array_equal(overlay(image, label, SBD_PALETTE, 1.0), colorize(label, SBD_PALETTE))
    assert np.array_equal(overlay(image, label, SBD_PALETTE, 0.0), image)


def test_highlight_keeps_one_class_and_dims_the_rest(scene):
    image, label = scene
    present = np.unique(label)
    chosen = int(present[np.argmax([(label == c).sum() for c in present])])
    out = overlay(image, label, SBD_PALETTE, 0.2, highlight=chosen).astype(np.float64)
    inside = label == chosen
    colour = np.asarray(SBD_PALETTE[chosen], np.float64)
    expected_inside = image[inside] * 0.4 + colour * 0.6  # at least 0.6 opacity for the chosen class
    assert np.abs(out[inside] - expected_inside).max() <= 1
    assert np.abs(out[~inside] - image[~inside] * 0.35).max() <= 1


def test_class_shares_count_pixels_and_agree_with_predictions(scene):
    from seg.inference import Prediction

    _, label = scene
    shares = class_shares(label, len(SBD_CLASSES))
    assert shares.shape == (len(SBD_CLASSES),) and shares.sum() == pytest.approx(1.0)
    for c in np.unique(label):
        assert shares[c] == pytest.approx((label == c).mean())
    prediction = Prediction(label=label.astype(np.uint8), latency_ms=0.0)
    assert np.allclose(prediction.class_shares(len(SBD_CLASSES)), shares)


def test_instances_are_filled_outlined_and_boxed_in_their_own_colours(pedestrians):
    from seg.instances.data import boxes_from_ids

    image, ids = pedestrians.image, pedestrians.instances
    boxes = boxes_from_ids(ids)
    out = draw_instances(image, ids, boxes, np.array([0.9, 0.8]))
    colours = instance_colours(int(ids.max())).astype(np.float64)
    assert out.shape == image.shape and out.dtype == np.uint8 and int(ids.max()) == 2
    drawn_near = np.zeros(ids.shape, bool)  # contours, boxes and their tabs are drawn within these bands
    for x1, y1, x2, y2 in boxes.astype(int):
        drawn_near[max(0, y1 - 20) : y2 + 3, max(0, x1 - 3) : x2 + 60] = True
    for k in (1, 2):
        mask = ids == k
        core = ndi.binary_erosion(mask, iterations=4)
        expected = image[core] * 0.55 + colours[k - 1] * 0.45
        assert np.abs(out[core] - expected).max() <= 1, f"instance {k} filled at 45% of its colour"
        edge = mask & ~ndi.binary_erosion(mask)
        assert (np.abs(out[edge] - colours[k - 1]).max(axis=1) <= 1).mean() > 0.9, "outlined in its colour"
        x1, y1, x2, y2 = boxes[k - 1].astype(int)
        side = out[(y1 + y2) // 2, x1]
        assert np.abs(side - colours[k - 1]).max() <= 1, "the box's left side in the instance colour"
    far = ~drawn_near & (ids == 0)
    assert np.array_equal(out[far], image[far]), "the background away from the drawings is untouched"
    assert np.array_equal(draw_instances(image, np.zeros_like(ids)), image), "no instances, no drawing"


def test_strips_thumbnails_and_card_classes():
    a = np.zeros((10, 20, 3), np.uint8)
    b = np.zeros((6, 5), np.uint8)
    row = hstack([a, b], gap=4)
    assert row.shape == (10, 29, 3) and (row[:, 20:24] == 255).all() and (row[6:, 24:] == 255).all()
    column = vstack([a, a[:, :7]], gap=2)
    assert column.shape == (22, 20, 3) and (column[12:, 7:] == 255).all()
    assert vstack([]) is None
    big = np.zeros((300, 1200, 3), np.uint8)
    assert thumbnail(big, 600).shape == (150, 600, 3) and thumbnail(a, 600) is a
    assert card_classes(None) == (list(SBD_CLASSES), [tuple(c) for c in SBD_PALETTE])
    assert card_classes({"classes": ["bg", "person"], "palette": [[0, 0, 0], [255, 0, 0]]}) == (
        ["bg", "person"],
        [(0, 0, 0), (255, 0, 0)],
    )
