"""tools/demo.py, tools/plot_metrics.py and tools/run_demo.py (the `make demo` driver) on tiny settings."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from _tools import load_tool
from PIL import Image
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))


demo = load_tool("demo")
plot_metrics = load_tool("plot_metrics")


class _PolygonModel(nn.Module):
    """Eval output of a text detector: one quad per image in original coordinates."""

    def __init__(self, cfg=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, batched_inputs):
        outs = []
        for d in batched_inputs:
            h, w = d["height"], d["width"]
            quad = np.array([[w * 0.2, h * 0.2], [w * 0.8, h * 0.25], [w * 0.8, h * 0.7], [w * 0.2, h * 0.6]])
            outs.append({"boxes": torch.tensor([[w * 0.2, h * 0.2, w * 0.8, h * 0.7]]), "scores": torch.tensor([0.9]),
                         "labels": torch.tensor([0]), "polygons": [quad]})
        return outs


def _register_polygon_model():
    from resnet_backbone.modeling.meta_arch import META_ARCH_REGISTRY

    if "_PolygonModel" not in META_ARCH_REGISTRY:
        META_ARCH_REGISTRY.register(_PolygonModel)


def _images(d, n=2, ext=".png"):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = os.path.join(d, f"img{i}{ext}")
        Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_demo_draws_polygons_and_keeps_sizes(tmp_path):
    _register_polygon_model()
    cfg_file = tmp_path / "poly.yaml"
    cfg_file.write_text('MODEL:\n  META_ARCHITECTURE: "_PolygonModel"\nINPUT:\n  MIN_SIZE_TEST: 32\n'
                        '  MAX_SIZE_TEST: 64\n  FORMAT: "RGB"\n')
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pth")
    paths = _images(tmp_path / "in", 2) + _images(tmp_path / "in", 1, ext=".jpg")
    written = demo.main(["--config-file", str(cfg_file), "--weights", str(tmp_path / "w.pth"), "--input",
                         str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert sorted(os.path.basename(p) for p in written) == ["img0.jpg", "img0.png", "img1.png"]
    for src in paths:
        name = os.path.basename(src)
        a = np.asarray(Image.open(src))
        b = np.asarray(Image.open(tmp_path / "out" / name))
        assert a.shape == b.shape
        if name.endswith(".png"):
            assert (a != b).any()  # something was drawn
            h, w = a.shape[:2]
            assert (a[h // 2 + 2, w // 2] == b[h // 2 + 2, w // 2]).all()  # inside the quad: untouched


def test_demo_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        demo.list_images([str(tmp_path / "nope")])


def test_plot_metrics_writes_png(tmp_path):
    m = tmp_path / "metrics.json"
    with open(m, "w") as f:
        for i in range(5):
            rec = {"iteration": i, "total_loss": 2.0 / (i + 1), "loss_cls": 1.0 / (i + 1), "lr": 0.1}
            f.write(json.dumps(rec) + "\n")
        f.write(json.dumps({"iteration": 4, "bbox/AP": 12.5, "bbox/AP50": 30.0}) + "\n")
        f.write('{"iteration": 5, "total_lo')  # a line cut by a crash is skipped
    out = plot_metrics.main([str(m), "-o", str(tmp_path / "plot.png")])
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 500


def test_run_demo_end_to_end_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RB_DATASETS", str(tmp_path / "datasets"))
    run_demo = load_tool("run_demo")
    tiny = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
            "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
            "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.AMP.ENABLED", "False"]
    results = run_demo.main(["--num-train", "4", "--num-val", "2", "--image-size", "64", "--num-pictures", "2",
                             "--score-thresh", "0.0", *tiny])
    assert "AP" in results["bbox"]
    assert (tmp_path / "datasets" / "synthetic_shapes" / "train.json").exists()
    assert len(os.listdir(tmp_path / "out" / "demo")) == 2
    assert (tmp_path / "out" / "metrics.png").exists()
    printed = capsys.readouterr().out
    assert "precision:   SOLVER.AMP.ENABLED False: float32" in printed and "machine:     CPU " in printed


def test_predictor_honours_test_time_augmentation():
    from _tools import TINY_FRCNN_MODEL

    from resnet_backbone.config import get_cfg
    from resnet_backbone.modeling.meta_arch.tta import FasterRCNNWithTTA

    def predictor(*extra):
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
        cfg.merge_from_list(TINY_FRCNN_MODEL + ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "INPUT.MIN_SIZE_TEST", "64",
                                                "INPUT.MAX_SIZE_TEST", "96", "SEED", "3", *extra])
        torch.manual_seed(0)
        return demo.Predictor(cfg)

    image = np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    plain = predictor()
    aug = ("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.MAX_SIZE", "96")
    one = predictor(*aug, "TEST.AUG.FLIP", "False")
    assert not isinstance(plain.model, FasterRCNNWithTTA) and isinstance(one.model, FasterRCNNWithTTA)
    a, b = plain(image), one(image)
    assert len(a["boxes"]) > 0
    for k in ("boxes", "scores", "labels"):  # one size, no flip: the plain model's detections
        assert torch.equal(a[k], b[k]), k
    flipped = predictor(*aug, "TEST.AUG.FLIP", "True")(image)
    assert not (len(flipped["boxes"]) == len(a["boxes"]) and torch.equal(flipped["boxes"], a["boxes"]))
