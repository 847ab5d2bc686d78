"""Test-time augmentation (TEST.AUG.*, modeling/meta_arch/tta.py): detectron2's merge, the plain model's output at
one size, the flipped pass's boxes, config refusals, and Trainer.test evaluating the augmented model."""
import pytest
import torch
from _parity import assert_same_detections  # noqa: E402  (tests/modeling/meta_arch/_parity.py)
from _tools import TINY_FRCNN_MODEL

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.config.validate import find_cfg_problems
from resnet_backbone.modeling.meta_arch import FasterRCNN, FasterRCNNWithTTA, build_model, build_tta_model

NUM_CLASSES = 3


def tiny_cfg(*overrides):
    """R18-FPN, 32 channels, 50 proposals: a random Faster R-CNN that runs a 64 px image in milliseconds."""
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-RCNN-FPN.yaml")
    cfg.merge_from_list([*TINY_FRCNN_MODEL, "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES),
                         "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "1000", *overrides])
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


def _image(h, w, seed=0):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _tta(model, min_sizes, flip, **kw):
    args = dict(max_size=1000, nms_thresh=0.5, detections_per_image=100, resize_method="pil")
    args.update(kw)
    return FasterRCNNWithTTA(model, min_sizes=min_sizes, flip=flip, **args)


def _assert_equal_outputs(out, ref):
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        assert set(o) == set(r) == {"boxes", "scores", "labels"}
        for k in r:
            assert o[k].dtype == r[k].dtype
            assert torch.equal(o[k], r[k]), k


# ----------------------------------------------------------------------------------- detectron2's merge
def _fixed_detections(h, w, flipped, orig_hw, g):
    """One augmented image's detections in its own (h, w) image: 14 boxes around 6 shared objects of the original
    image (so the passes overlap and NMS merges them), mapped into the augmented image (scaled, mirrored)."""
    oh, ow = orig_hw
    base = torch.tensor([[20, 30, 120, 140], [150, 40, 260, 200], [30, 160, 200, 290], [250, 100, 390, 280],
                         [100, 90, 180, 170], [300, 10, 380, 90]], dtype=torch.float32)
    idx = torch.randint(0, len(base), (14,), generator=g)
    boxes = base[idx] + torch.randn(14, 4, generator=g) * 6
    boxes = boxes.clamp(min=0) * torch.tensor([w / ow, h / oh, w / ow, h / oh])
    if flipped:
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    scores = torch.rand(14, generator=g) * 0.9 + 0.05
    classes = (idx + torch.randint(0, 2, (14,), generator=g)) % NUM_CLASSES
    return boxes, scores, classes


def test_merge_matches_detectron2(model):
    """The same per-augmentation detections through detectron2's GeneralizedRCNNWithTTA and ours: the same
    augmented images (sizes, pixels, order) go to the inner model, and the merged detections are the same."""
    pytest.importorskip("detectron2", reason="detectron2 is not installed (build it beside the project to run "
                                             "the detectron2 TTA parity test)")
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.modeling import GeneralizedRCNN, GeneralizedRCNNWithTTA
    from detectron2.structures import Boxes, Instances

    orig_hw, image = (300, 400), _image(240, 320)  # the loader's image (MIN_SIZE_TEST 240) of a 300 x 400 file
    min_sizes, max_size, nms, topk = (200, 280, 320), 400, 0.5, 8  # 320 -> 320 x 427: capped to 300 x 400
    x = {"image": image, "height": orig_hw[0], "width": orig_hw[1], "image_id": 5}

    def detections(seen):
        """The fixed detections of the k-th augmented image, k counted over calls (flip follows each size)."""
        k = len(seen) - 1
        h, w = seen[-1].shape[-2:]
        return _fixed_detections(h, w, k % 2 == 1, orig_hw, torch.Generator().manual_seed(100 + k))

    d2_seen, d2_cfg = [], d2_get_cfg()
    d2_cfg.merge_from_list(["TEST.AUG.MIN_SIZES", min_sizes, "TEST.AUG.MAX_SIZE", max_size, "TEST.AUG.FLIP", True,
                            "MODEL.ROI_HEADS.NMS_THRESH_TEST", nms, "TEST.DETECTIONS_PER_IMAGE", topk,
                            "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES])
    d2_model = GeneralizedRCNN(backbone=torch.nn.Module(), proposal_generator=None, roi_heads=torch.nn.Module(),
                               pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)

    def d2_inference(batched_inputs, detected_instances=None, do_postprocess=True):
        assert detected_instances is None and not do_postprocess
        out = []
        for inp in batched_inputs:
            d2_seen.append(inp["image"])
            boxes, scores, classes = detections(d2_seen)
            out.append(Instances(tuple(inp["image"].shape[-2:]), pred_boxes=Boxes(boxes), scores=scores,
                                 pred_classes=classes))
        return out

    d2_model.inference = d2_inference
    ref = GeneralizedRCNNWithTTA(d2_cfg, d2_model)([dict(x)])[0]["instances"]

    seen = []

    def our_forward(batched_inputs):  # the detector's eval path: detections in the augmented image, postprocessed
        dets = []
        for inp in batched_inputs:
            seen.append(inp["image"])
            boxes, scores, classes = detections(seen)
            dets.append({"boxes": boxes, "scores": scores, "labels": classes + 1})
        return FasterRCNN.postprocess(dets, batched_inputs, [tuple(i["image"].shape[-2:]) for i in batched_inputs])

    model.forward = our_forward
    try:
        out = _tta(model, min_sizes, True, max_size=max_size, nms_thresh=nms, detections_per_image=topk)([x])[0]
    finally:
        del model.forward

    assert [tuple(s.shape) for s in seen] == [tuple(s.shape) for s in d2_seen] == [
        (3, 200, 267), (3, 200, 267), (3, 280, 373), (3, 280, 373), (3, 300, 400), (3, 300, 400)]
    for ours, theirs in zip(seen, d2_seen):
        assert ours.dtype == theirs.dtype == torch.uint8 and torch.equal(ours, theirs)
    assert len(ref) == topk  # NMS left more than 8 of the 6 x 14: cut to TEST.DETECTIONS_PER_IMAGE
    assert_same_detections(out["boxes"], out["scores"], out["labels"], ref.pred_boxes.tensor, ref.scores,
                           ref.pred_classes, box_atol=1e-3)
    # without the cut, NMS alone decides: the same survivors, fewer than the union
    ref_all = GeneralizedRCNNWithTTA(d2_cfg.clone(), d2_model)
    ref_all.cfg.TEST.DETECTIONS_PER_IMAGE = 1000
    d2_seen.clear()
    ref_all = ref_all([dict(x)])[0]["instances"]
    seen.clear()
    model.forward = our_forward
    try:
        out_all = _tta(model, min_sizes, True, max_size=max_size, nms_thresh=nms, detections_per_image=1000)([x])[0]
    finally:
        del model.forward
    assert topk < len(ref_all) < 6 * 14
    assert_same_detections(out_all["boxes"], out_all["scores"], out_all["labels"], ref_all.pred_boxes.tensor,
                           ref_all.scores, ref_all.pred_classes, box_atol=1e-3)


# ----------------------------------------------------------------------------------- the real detector
def test_one_size_without_flip_is_the_plain_model(model):
    """MIN_SIZES=(MIN_SIZE_TEST,), FLIP False: the TTA output is the plain model's, bit for bit (the original is
    twice the input, so the rescale is exact and the second NMS keeps every detection)."""
    model.train()
    inputs = [{"image": _image(64, 84, seed=1), "height": 128, "width": 168, "image_id": 1},
              {"image": _image(84, 64, seed=2), "height": 168, "width": 128, "image_id": 2}]
    tta = _tta(model, (64,), False)
    out = tta(inputs)
    assert model.training  # the wrapper ran it in eval mode and gave it back as it was
    model.eval()
    with torch.no_grad():
        ref = [model([x])[0] for x in inputs]  # the test loader's batch of one
    assert all(len(r["boxes"]) > 20 for r in ref)
    _assert_equal_outputs(out, ref)
    assert not out[0]["boxes"].requires_grad


def test_flipped_pass_lands_on_the_hand_flipped_image(model):
    """The flipped pass alone (the unflipped pass's detections are dropped): its boxes, un-flipped, are where the
    plain model finds boxes on the image flipped by hand, mirrored back (x -> W - x)."""
    image, (h, w) = _image(64, 96, seed=3), (96, 144)
    x = {"image": image, "height": h, "width": w, "image_id": 3}
    real_forward, seen = model.forward, []

    def flipped_only(batched_inputs):
        outs = real_forward(batched_inputs)
        for inp, o in zip(batched_inputs, outs):
            seen.append(inp["image"])
            if torch.equal(inp["image"], image):  # the unflipped pass: nothing
                o.update(boxes=o["boxes"][:0], scores=o["scores"][:0], labels=o["labels"][:0])
        return outs

    model.forward = flipped_only
    try:
        out = _tta(model, (64,), True, batch_size=1)([x])[0]
    finally:
        del model.forward
    assert len(seen) == 2 and torch.equal(seen[0], image) and torch.equal(seen[1], image.flip(-1))
    with torch.no_grad():
        ref = model([{"image": image.flip(-1), "height": h, "width": w}])[0]
    b = ref["boxes"]
    mirrored = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
    assert len(ref["boxes"]) > 20
    assert_same_detections(out["boxes"], out["scores"], out["labels"], mirrored, ref["scores"], ref["labels"],
                           box_atol=1e-4, score_atol=0)
    assert not torch.allclose(out["boxes"], b)  # the mirror moved them: the test sees a missing un-flip


def test_more_sizes_and_flip_merge_all_passes(model):
    """Two sizes + flip on the real model: four inner passes (batched by 3), boxes in the original image, one
    class id range, at most TEST.DETECTIONS_PER_IMAGE, sorted by score."""
    calls = []
    real_forward = model.forward

    def counting(batched_inputs):
        calls.append([tuple(i["image"].shape[-2:]) for i in batched_inputs])
        return real_forward(batched_inputs)

    model.forward = counting
    try:
        out = _tta(model, (48, 80), True, detections_per_image=30)([{"image": _image(64, 96), "height": 120,
                                                                      "width": 180}])[0]
    finally:
        del model.forward
    assert calls == [[(48, 72), (48, 72), (80, 120)], [(80, 120)]]
    assert 0 < len(out["boxes"]) <= 30
    assert bool((out["scores"][:-1] >= out["scores"][1:]).all())
    assert out["boxes"][:, 0::2].max() <= 180 and out["boxes"][:, 1::2].max() <= 120 and out["boxes"].min() >= 0
    assert int(out["labels"].min()) >= 0 and int(out["labels"].max()) < NUM_CLASSES


# ----------------------------------------------------------------------------------- config
@pytest.mark.parametrize("key, value", [("TEST.AUG.MIN_SIZES", ()), ("TEST.AUG.MIN_SIZES", (400, 0)),
                                        ("TEST.AUG.MIN_SIZES", (400, 512.5)), ("TEST.AUG.MAX_SIZE", 0)])
def test_bad_sizes_refused_naming_the_key(key, value):
    cfg = tiny_cfg()
    cfg.merge_from_list([key, value])
    problems = find_cfg_problems(cfg, world_size=1)
    assert [p for p in problems if p.startswith("TEST.AUG")] == [p for p in problems if p.startswith(key)]
    assert any(p.startswith(key + ":") for p in problems), problems


def test_tta_refused_for_other_detectors():
    cfg = tiny_cfg("TEST.AUG.ENABLED", "True")
    assert not [p for p in find_cfg_problems(cfg, world_size=1) if "TEST.AUG" in p]  # FasterRCNN: fine
    for arch in ("DETR", "DBNet"):
        cfg = get_cfg()
        cfg.merge_from_list(["MODEL.META_ARCHITECTURE", arch, "TEST.AUG.ENABLED", "True"])
        problems = [p for p in find_cfg_problems(cfg, world_size=1) if "TEST.AUG" in p]
        assert len(problems) == 1 and problems[0].startswith("TEST.AUG.ENABLED:") and "FasterRCNN only" in problems[0]
    # and build_tta_model, for a model built without validation
    dbnet_cfg = get_cfg()
    levels = ["res2", "res3", "res4", "res5"]
    dbnet_cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "DBNet", "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
                               "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                               "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.OUT_FEATURES", levels,
                               "MODEL.FPN.IN_FEATURES", levels, "MODEL.FPN.OUT_CHANNELS", 32,
                               "MODEL.DBNET.INNER_CHANNELS", 8, "TEST.AUG.ENABLED", True])
    with pytest.raises(ConfigError, match=r"TEST\.AUG\.ENABLED.*FasterRCNN only.*DBNet"):
        build_tta_model(dbnet_cfg, build_model(dbnet_cfg))


def test_build_tta_model_reads_the_config(model):
    cfg = tiny_cfg("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(320, 480)", "TEST.AUG.MAX_SIZE", "900",
                   "TEST.AUG.FLIP", "False", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.6", "TEST.DETECTIONS_PER_IMAGE",
                   "50", "INPUT.RESIZE_METHOD", "torchvision")
    tta = build_tta_model(cfg, model)
    assert isinstance(tta, FasterRCNNWithTTA) and tta.model is model
    assert (tta.min_sizes, tta.max_size, tta.flip, tta.nms_thresh, tta.detections_per_image, tta.resize_method) == (
        (320, 480), 900, False, 0.6, 50, "torchvision")
    with pytest.raises(TypeError, match="FasterRCNN"):
        FasterRCNNWithTTA(torch.nn.Linear(1, 1), min_sizes=(8,), max_size=8, flip=False, nms_thresh=0.5,
                          detections_per_image=1)


# ----------------------------------------------------------------------------------- Trainer.test
def test_trainer_test_evaluates_the_tta_model(tmp_path, model):
    """An oracle inner model that reports the ground truth only at the TTA size (48) and nothing at the plain
    size (64): with TEST.AUG.ENABLED the Trainer's AP is the augmented model's (100), without it 0; the result
    keys are the evaluator's in both."""
    from resnet_backbone.data import DatasetCatalog, register_coco_instances
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset
    from resnet_backbone.engine import Trainer

    json_file = generate_shapes_dataset(tmp_path, "val", 4, image_size=96, seed=1)
    name = f"test_tta_shapes_{tmp_path.name}"  # tmp_path is new for every run: the name is free
    register_coco_instances(name, {}, json_file, str(tmp_path / "val"))
    gt = {r["image_id"]: r for r in DatasetCatalog.get(name)}
    sizes = []

    def oracle(batched_inputs):
        outs = []
        for inp in batched_inputs:
            sizes.append(min(inp["image"].shape[-2:]))
            anns = gt[inp["image_id"]]["annotations"] if sizes[-1] == 48 else []
            boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            outs.append({"boxes": boxes, "scores": torch.full((len(anns),), 0.9),
                         "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)})
        return outs

    base = ["DATASETS.TEST", (name,), "OUTPUT_DIR", str(tmp_path / "out"), "DATALOADER.NUM_WORKERS", 0,
            "TEST.AUG.MIN_SIZES", (48, 56), "TEST.AUG.FLIP", False]
    model.forward = oracle
    try:
        plain = Trainer.test(tiny_cfg(*base), model)
        assert sizes == [64] * 4
        sizes.clear()
        tta = Trainer.test(tiny_cfg(*base, "TEST.AUG.ENABLED", True), model)
        assert sorted(sizes) == [48] * 4 + [56] * 4
    finally:
        del model.forward
    assert set(tta) == set(plain) == {"bbox"} and set(tta["bbox"]) == set(plain["bbox"])
    assert plain["bbox"]["AP"] == 0.0
    assert tta["bbox"]["AP"] > 99.0


def test_merge_detections_is_detectron2s_single_image_inference():
    """merge_detections on a union with zero and non-finite scores, boxes past the image and a NaN box, against
    detectron2's fast_rcnn_inference_single_image with score thresh 1e-8 (what its _merge_detections calls)."""
    pytest.importorskip("detectron2", reason="detectron2 is not installed (build it beside the project to run "
                                             "the detectron2 TTA parity test)")
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image

    from resnet_backbone.modeling.meta_arch.tta import merge_detections

    g = torch.Generator().manual_seed(7)
    n, (h, w) = 200, (90, 120)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w + 20.0, h + 20.0]) - 10
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], 1)
    scores = torch.rand(n, generator=g)
    scores[::9] = 0.0  # below 1e-8: dropped
    scores[5] = float("inf")
    boxes[7, 2] = float("nan")
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    scores_2d = torch.zeros(n, NUM_CLASSES + 1)
    scores_2d[torch.arange(n), labels] = scores
    for topk in (40, 1000):
        ref, _ = fast_rcnn_inference_single_image(boxes, scores_2d, (h, w), 1e-8, 0.5, topk)
        out = merge_detections(boxes, scores, labels, (h, w), 0.5, topk)
        assert 0 < len(ref) <= topk
        _assert_equal_outputs([out], [{"boxes": ref.pred_boxes.tensor, "scores": ref.scores,
                                       "labels": ref.pred_classes}])
