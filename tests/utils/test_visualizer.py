import numpy as np
import pytest
import torch

from resnet_backbone.utils.visualizer import class_color, draw_detections


def test_boxes_drawn_with_class_colours_and_threshold():
    img = np.zeros((120, 160, 3), np.uint8)
    out = draw_detections(img, torch.tensor([[10.0, 40, 60, 100], [80, 40, 150, 110]]), torch.tensor([0, 2]),
                          torch.tensor([0.9, 0.3]), ["circle", "square", "triangle"], score_thresh=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == 0).all()  # input untouched
    c0 = np.array(class_color(0))
    assert (out[70, 10] == c0).all()  # left edge of box 0
    assert (out[75, 80:151] == 0).all() and (out[40:111, 150] == 0).all()  # low score: not drawn
    assert (out[20:40, 10:60] != 0).any()  # label above the box


def test_polygons_drawn_instead_of_boxes():
    img = np.full((100, 100, 3), 255, np.uint8)
    poly = np.array([[20, 20], [80, 20], [80, 60], [20, 60]], float)
    out = draw_detections(img, np.zeros((1, 4)), [0], [0.95], ["text"], polygons=[poly])
    assert (out[40, 20] == class_color(0)).all() and (out[40, 80] == class_color(0)).all()
    assert (out[40, 50] == 255).all()


def test_distinct_colours_and_bad_input():
    assert len({class_color(i) for i in range(20)}) == 20
    with pytest.raises(ValueError, match="HxWx3"):
        draw_detections(np.zeros((4, 4, 2)), [], [], [])
    with pytest.raises(ValueError, match="polygons"):
        draw_detections(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 4)), [0, 0], [1, 1], polygons=[np.zeros((3, 2))])
