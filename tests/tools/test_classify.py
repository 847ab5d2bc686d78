"""tools/classify.py: top-5 ImageNet classes, equal to torchvision's own classifier on the same pixels."""
import os

import numpy as np
import pytest
import torch
import torchvision
from _tools import load_tool
from PIL import Image
from torchvision.transforms.v2 import functional as TF

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]


def _tool():
    return load_tool("classify")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    with torch.no_grad():  # spread the logits so the top-5 is well separated
        tv.fc.weight.mul_(50)
    weights = d / "r18.pth"
    torch.save(tv.state_dict(), str(weights))
    rng = np.random.default_rng(0)
    img = (rng.random((180, 240, 3)) * 255).astype(np.uint8)
    path = d / "img.png"
    Image.fromarray(img).save(str(path))
    return tv, str(weights), str(path), img


def test_top5_matches_torchvision(setup, capsys):
    tv, weights, image, img = setup
    tool = _tool()
    top = tool.classify(image, weights, opts=R18)
    # reference: torchvision's model on torchvision-preprocessed RGB pixels
    x = torch.from_numpy(img).permute(2, 0, 1).float()
    x = TF.center_crop(TF.resize(x, [256], antialias=True), [224, 224])
    x = TF.normalize(x, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]).unsqueeze(0)
    with torch.no_grad():
        probs = tv(x).softmax(1)[0]
    ref_p, ref_i = probs.topk(5)
    assert [t["class_id"] for t in top] == ref_i.tolist()
    assert np.allclose([t["prob"] for t in top], ref_p.numpy(), atol=1e-5)
    names = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert [t["name"] for t in top] == [names[i] for i in ref_i.tolist()]
    assert [t["rank"] for t in top] == [1, 2, 3, 4, 5]


def test_cli_prints_five_lines(setup, capsys):
    _, weights, image, _ = setup
    assert _tool().main([image, "--weights", weights, *R18]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 5 and lines[0].startswith("1.")


def test_errors_are_reported(setup, tmp_path, capsys):
    _, weights, image, _ = setup
    tool = _tool()
    assert tool.main([str(tmp_path / "missing.png"), "--weights", weights, *R18]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert tool.main([image, "--weights", str(tmp_path / "nope.pth"), *R18]) == 2
    assert "nope.pth" in capsys.readouterr().err
    assert tool.main([image, "--weights", weights, *R18, "MODEL.RESNETS.NUM_CLASSES", "0"]) == 2
    assert "NUM_CLASSES" in capsys.readouterr().err
