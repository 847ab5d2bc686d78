"""rcnn.AnchorGenerator against the two references it follows: torchvision's AnchorGenerator under
ROUND_CELL_ANCHORS True (OFFSET 0), detectron2's DefaultAnchorGenerator under ROUND_CELL_ANCHORS False, and
the backbone's strides in both (P6 of an input padded to 32 but not to 64)."""
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from resnet_backbone.config import get_cfg
from resnet_backbone.layers import ShapeSpec
from resnet_backbone.modeling.rcnn import AnchorGenerator, build_rpn

D2_REASON = "detectron2 is not installed (run with PYTHONPATH=/tmp/d2/src:/tmp/d2/site for the detectron2 checks)"

# two sizes on every level, and three ratios: the order of the cell anchors differs between the libraries
SIZES = ((16, 40), (32, 80), (64, 160))
RATIOS = ((0.5, 1.0, 2.0),) * 3
STRIDES = [8, 16, 32]


def _inputs(height=96, width=128, num_images=2):
    """A padded batch whose size is a multiple of every stride (torchvision's padded_size // feature_size is then
    the true stride), and one feature map per level (only their shapes matter)."""
    images = ImageList(torch.zeros(num_images, 3, height, width), [(height, width), (height - 10, width - 30)])
    feats = [torch.zeros(num_images, 4, height // s, width // s) for s in STRIDES]
    return images, feats


def test_round_cell_anchors_equal_torchvision():
    """ROUND_CELL_ANCHORS True, OFFSET 0: torchvision's anchors, bit for bit, in torchvision's order
    (ratio-major, size-minor) with two sizes per level."""
    images, feats = _inputs()
    ref = TVAnchorGenerator(SIZES, RATIOS)(images, feats)
    ours_gen = AnchorGenerator(SIZES, RATIOS, strides=STRIDES, offset=0.0, round_cell_anchors=True)
    ours = ours_gen(images, feats)
    assert ours_gen.num_anchors_per_location() == [6, 6, 6]
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a, b)
    # rounded corners: every cell anchor corner is a whole number (detectron2's are not)
    assert all(torch.equal(c, c.round()) for c in ours_gen.cell_anchors)


def test_exact_cell_anchors_order_differs_from_torchvision():
    """ROUND_CELL_ANCHORS False puts the sizes first: with two sizes per level the second anchor of a cell is
    (size 0, ratio 1) here and (ratio 0.5, size 1) in torchvision's order."""
    ours = AnchorGenerator(SIZES, RATIOS, strides=STRIDES, round_cell_anchors=False).cell_anchors[0]
    ref = TVAnchorGenerator(SIZES, RATIOS).cell_anchors[0]
    wh_ours = ours[:, 2:] - ours[:, :2]
    wh_ref = ref[:, 2:] - ref[:, :2]
    # same set of (w, h) up to torchvision's rounding, in a different order
    perm = torch.tensor([0, 2, 4, 1, 3, 5])  # size-major index -> ratio-major index
    torch.testing.assert_close(wh_ours, wh_ref[perm], atol=1.0, rtol=0)
    assert not torch.allclose(wh_ours, wh_ref, atol=1.0)


@pytest.mark.parametrize("offset", [0.5, 0.0])
def test_exact_cell_anchors_equal_detectron2(offset):
    """ROUND_CELL_ANCHORS False: detectron2's DefaultAnchorGenerator, bit for bit, with its OFFSET and several
    sizes per level (size-major order)."""
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    images, feats = _inputs()
    ref = DefaultAnchorGenerator(sizes=[list(s) for s in SIZES], aspect_ratios=[list(r) for r in RATIOS],
                                 strides=STRIDES, offset=offset)
    ours_gen = AnchorGenerator(SIZES, RATIOS, strides=STRIDES, offset=offset, round_cell_anchors=False)
    assert ours_gen.num_anchors_per_location() == ref.num_anchors
    expected = torch.cat([b.tensor for b in ref(feats)])
    for anchors in ours_gen(images, feats):
        assert anchors.dtype == expected.dtype
        assert torch.equal(anchors, expected)


def _p5_p6_rpn(round_cell_anchors: bool, offset: float):
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-RCNN-FPN.yaml")
    cfg.merge_from_list(["MODEL.RPN.IN_FEATURES", ["p5", "p6"], "MODEL.ANCHOR_GENERATOR.SIZES", [[128], [256]],
                         "MODEL.ANCHOR_GENERATOR.ROUND_CELL_ANCHORS", round_cell_anchors,
                         "MODEL.ANCHOR_GENERATOR.OFFSET", offset])
    return build_rpn(cfg, {"p5": ShapeSpec(channels=4, stride=32), "p6": ShapeSpec(channels=4, stride=64)})


def test_strides_from_the_backbone_match_torchvision_where_its_rule_holds():
    """A 96 x 96 batch (a multiple of 32, not of 64) has a 2 x 2 P6: the backbone's stride is 64, torchvision's
    96 // 2 = 48 is not. Our P6 on 96 px equals torchvision's P6 on a 128 px batch (also 2 x 2, and there
    128 // 2 = 64 is right); torchvision's P6 on 96 px does not."""
    gen = _p5_p6_rpn(round_cell_anchors=True, offset=0.0).anchor_generator
    assert gen.strides == [32, 64]
    small = ImageList(torch.zeros(1, 3, 96, 96), [(96, 96)])
    feats_small = [torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 2, 2)]
    large = ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)])
    feats_large = [torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 2, 2)]
    tv = TVAnchorGenerator(((128,), (256,)), ((0.5, 1.0, 2.0),) * 2)
    ours_p6 = gen(small, feats_small)[0][3 * 9:]
    assert torch.equal(ours_p6, tv(large, feats_large)[0][3 * 16:])
    tv_small_p6 = tv(small, feats_small)[0][3 * 9:]
    assert not torch.equal(ours_p6, tv_small_p6)
    centres = (tv_small_p6[:, 0] + tv_small_p6[:, 2]) / 2
    assert sorted(set(centres.tolist())) == [0.0, 48.0]  # torchvision's guessed stride
    # and P5 (96 // 3 = 32, right for both) agrees with torchvision's on the same batch
    assert torch.equal(gen(small, feats_small)[0][: 3 * 9], tv(small, feats_small)[0][: 3 * 9])


def test_strides_from_the_backbone_match_detectron2():
    """detectron2's generator takes the backbone's strides too: the same P6 on the 96 px batch."""
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    gen = _p5_p6_rpn(round_cell_anchors=False, offset=0.5).anchor_generator
    small = ImageList(torch.zeros(1, 3, 96, 96), [(96, 96)])
    feats = [torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 2, 2)]
    ref = DefaultAnchorGenerator(sizes=[[128], [256]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[32, 64],
                                 offset=0.5)
    assert torch.equal(gen(small, feats)[0], torch.cat([b.tensor for b in ref(feats)]))


def test_refused_offsets_and_level_counts():
    with pytest.raises(ValueError, match="OFFSET"):
        AnchorGenerator(SIZES, RATIOS, strides=STRIDES, offset=1.0)
    with pytest.raises(ValueError, match="2 strides for 3 anchor levels"):
        AnchorGenerator(SIZES, RATIOS, strides=STRIDES[:2])
    images, feats = _inputs()
    with pytest.raises(ValueError, match="got 2 feature maps, expected 3"):
        AnchorGenerator(SIZES, RATIOS, strides=STRIDES)(images, feats[:2])
