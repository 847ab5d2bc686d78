"""tools/train_net.py --eval-only with weights that cover only part of the model (R18 weights into an R34
detector): refused unless --allow-partial-weights; training from the same weights (fine-tuning) still works."""
import os

import pytest
import torch
from _tools import load_tool
from test_train_net import ROOT, TINY

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.config import get_cfg
from resnet_backbone.engine import Trainer
from resnet_backbone.modeling.meta_arch import build_model

train_net = load_tool("train_net")
BASE = os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml")
R34 = ("MODEL.RESNETS.DEPTH", "34")


@pytest.fixture(scope="module")
def r18_weights(tmp_path_factory):
    """What the Trainer saves for a tiny R18-FPN Faster R-CNN, and the datasets root for evaluation."""
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    d = tmp_path_factory.mktemp("partial")
    generate_shapes_dataset(str(d / "synthetic_shapes"), "train", 2, image_size=64, seed=0)
    generate_shapes_dataset(str(d / "synthetic_shapes"), "val", 2, image_size=64, seed=1)
    cfg = get_cfg()
    cfg.merge_from_file(BASE)
    cfg.merge_from_list(TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    path = Checkpointer(model, str(d / "r18"), save_to_disk=True).save("model_final", iteration=3, seed=3)
    return d, path, model.state_dict()


def _argv(out, weights, *flags):
    return ["--config-file", BASE, *flags, *TINY, *R34, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out)]


def test_eval_only_refuses_partial_weights_unless_allowed(r18_weights, tmp_path, monkeypatch):
    root, weights, r18_state = r18_weights
    monkeypatch.setenv("RB_DATASETS", str(root))
    args = train_net.default_argument_parser().parse_args(_argv(tmp_path / "a", weights, "--eval-only"))
    with pytest.raises(CheckpointError) as ei:
        train_net.main(args)
    msg = str(ei.value)
    assert weights in msg and "--allow-partial-weights" in msg and "leaves 80 of 210 model tensors" in msg
    # R34 has 3/4/6/3 blocks, R18 2/2/2/2: blocks res3.2-3, res4.2-5, res5.2 are missing, nothing else
    for block in ("res3.2", "res3.3", "res4.2", "res4.3", "res4.4", "res4.5", "res5.2"):
        assert f"backbone.bottom_up.{block} (" in msg
    assert "backbone.bottom_up.res2.2 (" in msg  # res2: 3 blocks in R34
    assert "res3.1" not in msg and "roi_heads" not in msg and "fpn" not in msg
    assert not (tmp_path / "a" / "inference").exists()  # nothing was evaluated

    args = train_net.default_argument_parser().parse_args(
        _argv(tmp_path / "b", weights, "--eval-only", "--allow-partial-weights"))
    results = train_net.main(args)
    assert "bbox" in results and "AP" in results["bbox"]

    # training from the same weights (fine-tuning) still loads the R18 part and initialises the rest
    cfg = get_cfg()
    cfg.merge_from_file(BASE)
    cfg.merge_from_list([*TINY, *R34, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "ft"),
                         "DATASETS.TEST", "()"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    state = trainer.unwrapped_model.state_dict()
    k = "backbone.bottom_up.res4.1.conv2.weight"
    assert torch.equal(state[k], r18_state[k])
    assert "backbone.bottom_up.res4.5.conv2.weight" in state
