"""Masks in draw_detections / draw_ground_truth: inside a mask the image is blended with the class colour at
MASK_ALPHA, its border is the class colour, outside nothing changes; low-score masks are not drawn; crowd masks
are grey; wrong shapes are refused."""
import numpy as np
import pytest
import torch

from resnet_backbone.utils.visualizer import IGNORED_COLOR, MASK_ALPHA, class_color, draw_detections, draw_ground_truth

GREY = 100


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _blend(color):
    return np.round(GREY * (1 - MASK_ALPHA) + np.asarray(color, float) * MASK_ALPHA).astype(np.uint8)


def test_detection_masks_fill_and_outline():
    img = np.full((120, 160, 3), GREY, np.uint8)
    masks = torch.from_numpy(np.stack([_disc(120, 160, 70, 50, 20), _disc(120, 160, 70, 120, 20)]))
    boxes = torch.tensor([[30.0, 50, 71, 91], [100, 50, 141, 91]])
    out = draw_detections(img, boxes, torch.tensor([1, 2]), torch.tensor([0.9, 0.2]), ["a", "b", "c"],
                          masks=masks, score_thresh=0.5)
    assert (img == GREY).all()  # the input is untouched
    inside = _disc(120, 160, 70, 50, 15)
    assert (out[inside] == _blend(class_color(1))).all()  # translucent class colour inside
    assert (out[70, 30] == class_color(1)).all() or (out[70, 31] == class_color(1)).all()  # outline on the border
    # outside every box and label nothing changed; the low-score detection's mask is not drawn
    assert (out[95:, :] == GREY).all() and (out[:, 145:] == GREY).all()
    assert (out[_disc(120, 160, 70, 120, 15)] == GREY).all()


def test_ground_truth_masks_crowd_grey_and_missing_ones():
    img = np.full((80, 80, 3), GREY, np.uint8)
    a, b = _disc(80, 80, 25, 25, 12), _disc(80, 80, 55, 55, 12)
    out = draw_ground_truth(img, np.array([[13.0, 13, 38, 38], [43, 43, 68, 68], [2, 60, 10, 70]]), [0, 0, 1],
                            ["x", "y"], crowd=[False, True, False], masks=[a, b, None])
    assert (out[_disc(80, 80, 25, 25, 8)] == _blend(class_color(0))).all()
    assert (out[_disc(80, 80, 55, 55, 8)] == _blend(IGNORED_COLOR)).all()  # crowd: grey
    assert (out[72:] == GREY).all()  # below every box: nothing drawn


def test_bad_masks_refused():
    img = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="1 masks for 2"):
        draw_detections(img, np.zeros((2, 4)), [0, 0], [1, 1], masks=np.zeros((1, 20, 30), bool))
    with pytest.raises(ValueError, match="shape"):
        draw_ground_truth(img, np.zeros((1, 4)), [0], masks=np.zeros((1, 30, 20), bool))
