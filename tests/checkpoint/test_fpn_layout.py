"""checkpoint/fpn_layout.py: a weight file whose FPN has the other output-conv layout (MODEL.FPN.OUTPUT_CONVS) than
the model is refused on every by-name load path, naming the file, the first such key and the setting to use."""
import copy
import os

import pytest
import torch

from resnet_backbone.checkpoint import CheckpointError, load_backbone_weights
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.checkpoint.detectron2_names import convert_to_detectron2, ours_to_detectron2
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.meta_arch import build_model

FIX_TRUE = "set MODEL.FPN.OUTPUT_CONVS True, the layout this checkpoint was trained with"
FIX_FALSE = "set MODEL.FPN.OUTPUT_CONVS False, the layout this checkpoint was trained with"


QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart",
                          "dbnet_R_50_FPN_synthetic.yaml")


def _dbnet(output_convs: bool, seed: int = 0):
    """The quickstart DBNet, thinned (ResNet-18, 16-channel FPN), with or without the FPN's output convs."""
    cfg = get_cfg()
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 16,
                         "MODEL.DBNET.INNER_CHANNELS", 8, "MODEL.FPN.OUTPUT_CONVS", output_convs])
    torch.manual_seed(seed)
    return build_model(cfg)


def _checkpoint(model, tmp_path, name):
    """Our tagged training checkpoint of `model`, as the Trainer writes it."""
    return Checkpointer(model, str(tmp_path / name), save_to_disk=True).save("model_final")


def _unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("allow_partial", [True, False])
def test_output_conv_checkpoint_into_a_model_without_them_is_refused(tmp_path, allow_partial):
    path = _checkpoint(_dbnet(True), tmp_path, "with")
    model = _dbnet(False, seed=1)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError) as e:
        Checkpointer(model).load_weights(path, allow_partial=allow_partial)
    msg = str(e.value)
    assert path in msg and "backbone.fpn_output2.weight" in msg and "(16, 16, 3, 3)" in msg and FIX_TRUE in msg
    assert _unchanged(model, before)  # nothing loaded


def test_no_output_conv_checkpoint_into_a_model_with_them_is_refused(tmp_path):
    path = _checkpoint(_dbnet(False), tmp_path, "without")
    model = _dbnet(True, seed=1)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError) as e:
        Checkpointer(model).load_weights(path)  # training's load (allow_partial) too: not a silent partial load
    msg = str(e.value)
    assert path in msg and "backbone.fpn_output2.weight" in msg and "missing" in msg and FIX_FALSE in msg
    assert _unchanged(model, before)


@pytest.mark.parametrize("output_convs", [True, False])
def test_same_layout_loads_whole(tmp_path, output_convs):
    saved = _dbnet(output_convs)
    path = _checkpoint(saved, tmp_path, "ckpt")
    model = _dbnet(output_convs, seed=1)
    Checkpointer(model).load_weights(path, allow_partial=False)  # every tensor from the file
    assert _unchanged(model, saved.state_dict())


def test_plain_state_dict_and_resume_paths_are_refused_too(tmp_path):
    # a bare state dict file (format "state_dict": loads by name)
    plain = tmp_path / "plain.pth"
    torch.save(_dbnet(True).state_dict(), plain)
    with pytest.raises(CheckpointError, match=r"plain\.pth.*backbone\.fpn_output2\.weight.*OUTPUT_CONVS True"):
        Checkpointer(_dbnet(False)).load_weights(str(plain))
    # resuming (last_checkpoint in OUTPUT_DIR) a run of the other layout
    out = tmp_path / "run"
    Checkpointer(_dbnet(False), str(out), save_to_disk=True).save("model_0000099")
    with pytest.raises(CheckpointError, match=r"model_0000099\.pth.*backbone\.fpn_output2\.weight.*OUTPUT_CONVS False"):
        Checkpointer(_dbnet(True), str(out)).resume_or_load("", resume=True)


def test_backbone_only_weights_are_no_layout(tmp_path):
    """ResNet weights alone (no FPN in the file) load into either layout: the FPN starts from its initialisation."""
    resnet = {k[len("backbone.bottom_up."):]: v for k, v in _dbnet(True).state_dict().items()
              if k.startswith("backbone.bottom_up.")}
    path = tmp_path / "r18.pth"
    torch.save(resnet, path)
    for output_convs in (True, False):
        model = _dbnet(output_convs, seed=1)
        load_backbone_weights(model, str(path))
        got = model.state_dict()
        assert all(torch.equal(got["backbone.bottom_up." + k], v) for k, v in resnet.items())


def test_converters_path_refuses_the_other_layout():
    """load_backbone_weights keeps non-ResNet names (detectron2 / our FPN keys) and loads them by name: the same
    refusal, naming the object and the key."""
    state = _dbnet(True).state_dict()
    with pytest.raises(CheckpointError, match=r"backbone\.fpn_output2\.weight.*OUTPUT_CONVS True"):
        load_backbone_weights(_dbnet(False, seed=1), {"model": state}, source="detectron2")


def test_detectron2_conversion_refuses_an_fpn_without_output_convs(tmp_path):
    """detectron2's FPN always has fpn_output{k}: our FPN without them has no detectron2 form."""
    fpn = _dbnet(False).backbone.state_dict()
    with pytest.raises(CheckpointError, match=r"fpn_lateral2\.bias.*OUTPUT_CONVS False.*no detectron2 counterpart"):
        ours_to_detectron2(fpn)
    with_out = _dbnet(True).backbone.state_dict()
    assert "backbone.fpn_output2.weight" in ours_to_detectron2(with_out)  # the usual layout converts
    path = _checkpoint(_dbnet(False), tmp_path, "dbnet")
    with pytest.raises(CheckpointError, match="no detectron2 counterpart"):
        convert_to_detectron2(path)
