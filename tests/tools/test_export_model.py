"""tools/export_model.py: writes the exported model + export.json; refuses what cannot be exported in one line."""
import json
import os

import numpy as np
import pytest
import torch
from _tools import load_tool, run_tool_process

from resnet_backbone.config import get_cfg
from resnet_backbone.export import load_exported
from resnet_backbone.modeling.meta_arch import build_model
from resnet_backbone.utils.cli import ToolError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_RCNN = os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml")
TINY_DETR = ["MODEL.META_ARCHITECTURE", "DETR", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
             "MODEL.RESNETS.OUT_FEATURES", "['res5']", "MODEL.DETR.NUM_CLASSES", "3", "MODEL.DETR.HIDDEN_DIM", "32",
             "MODEL.DETR.NHEADS", "4", "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "1",
             "MODEL.DETR.DIM_FEEDFORWARD", "64", "MODEL.DETR.NUM_OBJECT_QUERIES", "10"]


def _run(*args):
    return run_tool_process("export_model", *args)


def test_exports_with_weights_and_runs_like_eager(tmp_path):
    tool = load_tool("export_model")
    cfg = get_cfg()
    cfg.merge_from_list(TINY_DETR)
    torch.manual_seed(0)
    eager = build_model(cfg).eval()
    weights = tmp_path / "w.pth"
    torch.save({"model": eager.state_dict()}, weights)
    config = tmp_path / "detr.yaml"
    config.write_text(cfg.dump())
    out = tmp_path / "export"
    paths = tool.main(["--config-file", str(config), "--weights", str(weights), "--format", "torchscript",
                       "--output", str(out), "--example-size", "128", "160"])
    assert sorted(os.listdir(out)) == ["export.json", "model.ts"]
    assert json.loads((out / "export.json").read_text())["model"] == "DETR"
    image = torch.randint(0, 256, (3, 96, 200)).float()
    with torch.no_grad():
        ref = eager([{"image": image}])[0]
    got = load_exported(paths["model"])(image)
    np.testing.assert_allclose(got["boxes"], ref["boxes"].numpy(), rtol=1e-4, atol=1e-3)
    assert np.array_equal(got["labels"], ref["labels"].numpy())
    with pytest.raises(ToolError, match="model.ts exists.*--overwrite"):
        tool.main(["--config-file", str(config), "--format", "torchscript", "--output", str(out)])


@pytest.mark.parametrize("args, named", [
    (["--format", "exported_program", "MODEL.COMPILE", "True"], "MODEL.COMPILE"),
    (["--format", "onnx", "TEST.AUG.ENABLED", "True"], "TEST.AUG.ENABLED"),
    (["--format", "torchscript"], "format 'torchscript' cannot export MODEL.META_ARCHITECTURE 'FasterRCNN'"),
])
def test_unexportable_is_one_error_line(args, named, tmp_path):
    r = _run("--config-file", BASE_RCNN, "--output", tmp_path / "out", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export_model.py: error: ") and named in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_config_is_named(tmp_path):
    r = _run("--config-file", tmp_path / "nope.yaml", "--format", "onnx", "--output", tmp_path / "out")
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr
