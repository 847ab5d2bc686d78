"""Checkpointer against bad inputs: partial weights where the whole model must be covered, a `last_checkpoint`
pointer that is empty / not UTF-8 / names a missing file or one outside OUTPUT_DIR, and Ctrl-C during a save."""
import io
import logging
import os
from collections import OrderedDict

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.backbone import build_backbone


def _net(blocks: int) -> nn.Module:
    """A stem, `blocks` blocks and a head: _net(2) into _net(4) is "R18 weights into an R34" in miniature."""
    body = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)) for _ in range(blocks)])
    return nn.Sequential(OrderedDict(stem=nn.Linear(3, 4), body=body, head=nn.Linear(4, 2)))


@pytest.fixture
def ck_log(caplog):
    """Records of the checkpointer's logger (the package logger may not propagate to the root after setup)."""
    log = logging.getLogger("resnet_backbone.checkpoint.checkpointer")
    log.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        log.removeHandler(caplog.handler)


def _snapshot(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(m: nn.Module, snap: dict) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in m.state_dict().items())


# ----------------------------------------------------------------------------- partial weights (eval-only)
@pytest.mark.parametrize("tagged", [True, False], ids=["our_checkpoint", "plain_state_dict"])
def test_partial_weights_refused_when_the_whole_model_must_load(tmp_path, tagged):
    src = _net(2)
    if tagged:
        path = Checkpointer(src, str(tmp_path / "r18"), save_to_disk=True).save("model_final", iteration=9)
    else:
        path = str(tmp_path / "plain.pth")
        torch.save(src.state_dict(), path)
    dst = _net(4)
    before = _snapshot(dst)
    with pytest.raises(CheckpointError) as ei:
        Checkpointer(dst, "", save_to_disk=False).resume_or_load(path, resume=False, allow_partial=False)
    msg = str(ei.value)
    assert path in msg
    assert "12 of 28" in msg  # 2 blocks x (Linear weight+bias, BN weight/bias/running_mean/running_var)
    assert "body.2 (6 tensors)" in msg and "body.3 (6 tensors)" in msg
    assert "body.0" not in msg and "stem" not in msg and "head" not in msg
    assert "--allow-partial-weights" in msg
    assert _unchanged(dst, before)  # refused before anything was loaded


def test_partial_weights_still_load_for_fine_tuning(tmp_path, ck_log):
    src = _net(2)
    path = Checkpointer(src, str(tmp_path / "r18"), save_to_disk=True).save("model_final", iteration=9)
    dst = _net(4)
    assert Checkpointer(dst, str(tmp_path / "ft"), save_to_disk=True).resume_or_load(path, resume=True) == {}
    assert torch.equal(dst.body[1][0].weight, src.body[1][0].weight)
    assert any("body.3.0.weight" in r.getMessage() for r in ck_log.records)
    # asked for explicitly: the same partial load is allowed where the whole model is otherwise required
    dst2 = _net(4)
    Checkpointer(dst2, "", save_to_disk=False).load_weights(path, allow_partial=True)
    assert torch.equal(dst2.stem.weight, src.stem.weight)


def _resnet_with_head() -> nn.Module:
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.RES2_OUT_CHANNELS, r.NORM, r.STRIDE_IN_1X1, r.OUT_FEATURES = 18, 64, "BN", False, ["res5"]
    return nn.Sequential(OrderedDict(backbone=build_backbone(cfg), head=nn.Linear(512, 3)))


def test_backbone_only_weights_refused_for_a_whole_model_through_the_converters(tmp_path):
    path = str(tmp_path / "tv_r18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), path)
    dst = _resnet_with_head()
    before = _snapshot(dst)
    with pytest.raises(CheckpointError, match=r"tv_r18\.pth.*2 of \d+ .*head \(2 tensors\).*--allow-partial-weights"):
        Checkpointer(dst, "", save_to_disk=False).load_weights(path, allow_partial=False)
    assert _unchanged(dst, before)
    Checkpointer(dst, "", save_to_disk=False).load_weights(path)  # default: backbone weights for fine-tuning


def test_no_weights_at_all_refused_when_the_whole_model_must_load(tmp_path):
    ck = Checkpointer(_net(2), str(tmp_path), save_to_disk=True)
    with pytest.raises(CheckpointError, match="MODEL.WEIGHTS is empty.*--allow-partial-weights"):
        ck.resume_or_load("", resume=True, allow_partial=False)
    assert ck.resume_or_load("", resume=True, allow_partial=True) == {}
    ck.save("model_0000003", iteration=3)  # a full checkpoint to resume from covers the model
    assert ck.resume_or_load("", resume=True, allow_partial=False)["iteration"] == 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drop=st.sets(st.integers(0, 27)))
def test_fuzz_any_missing_tensor_is_refused_and_counted(tmp_path, drop):
    full = _net(4).state_dict()
    keys = [k for k in full if not k.endswith("num_batches_tracked")]
    assert len(keys) == 28
    state = {k: v for k, v in full.items() if k not in {keys[i] for i in drop}}
    path = str(tmp_path / "w.pth")
    torch.save(state, path)
    dst = _net(4)
    if not drop:
        Checkpointer(dst, "", save_to_disk=False).load_weights(path, allow_partial=False)
        return
    with pytest.raises(CheckpointError, match=rf"{len(drop)} of 28 "):
        Checkpointer(dst, "", save_to_disk=False).load_weights(path, allow_partial=False)


def _with_convention(m: nn.Module, fmt: str, mean, std) -> nn.Module:
    m.input_format = fmt  # what our meta-architectures carry (INPUT.FORMAT, MODEL.PIXEL_MEAN / PIXEL_STD)
    m.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), False)
    m.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), False)
    return m


def test_checkpoint_records_the_models_convention_and_loading_warns_on_a_different_one(tmp_path, ck_log):
    src = _with_convention(_net(2), "RGB", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    path = Checkpointer(src, str(tmp_path), save_to_disk=True).save("model_final", iteration=0)
    raw = torch.load(path, weights_only=True)
    assert (raw["format"], raw["pixel_mean"], raw["pixel_std"]) == ("RGB", [123.675, 116.28, 103.53],
                                                                     [58.395, 57.12, 57.375])
    assert "format" not in Checkpointer(src, str(tmp_path), save_to_disk=True).resume_or_load("", resume=True)
    dst = _with_convention(_net(2), "BGR", [103.53, 116.28, 123.675], [1.0, 1.0, 1.0])
    Checkpointer(dst, "", save_to_disk=False).load_weights(path)
    warned = " ".join(r.getMessage() for r in ck_log.records if r.levelno >= logging.WARNING)
    assert path in warned and "INPUT.FORMAT RGB (config: BGR)" in warned and "MODEL.PIXEL_STD" in warned


# ----------------------------------------------------------------------------- last_checkpoint pointer
def _run_dir(tmp_path, name="run", iteration=1):
    d = tmp_path / name
    Checkpointer(_net(2), str(d), save_to_disk=True).save(f"model_{iteration:07d}", iteration=iteration)
    return d


@pytest.mark.parametrize("target", ["../../../etc/passwd", "../other/model_0000005.pth", "ABSOLUTE", "/etc/passwd"])
def test_last_checkpoint_outside_output_dir_is_refused(tmp_path, target):
    d = _run_dir(tmp_path)
    other = _run_dir(tmp_path, "other", iteration=5)
    if target == "ABSOLUTE":  # an absolute path into another run: used to resume from it without comment
        target = str(other / "model_0000005.pth")
    (d / "last_checkpoint").write_text(target)
    ck = Checkpointer(_net(2), str(d), save_to_disk=True)
    with pytest.raises(CheckpointError) as ei:
        ck.resume_or_load("", resume=True)
    msg = str(ei.value)
    assert str(d / "last_checkpoint") in msg and target in msg and "outside OUTPUT_DIR" in msg


@pytest.mark.parametrize("content,why", [(b"", "empty"), (b"  \n\n", "empty"), (b"\xff\xfemodel.pth", "UTF-8"),
                                         (b"model_0000009.pth", "does not exist"), (b"model\x00.pth", "NUL")])
def test_bad_last_checkpoint_contents_name_the_file(tmp_path, content, why):
    d = _run_dir(tmp_path)
    (d / "last_checkpoint").write_bytes(content)
    with pytest.raises(CheckpointError) as ei:
        Checkpointer(_net(2), str(d), save_to_disk=True).resume_or_load("", resume=True)
    msg = str(ei.value)
    assert str(d / "last_checkpoint") in msg and why in msg
    if why == "does not exist":
        assert str(d / "model_0000009.pth") in msg


def test_last_checkpoint_must_name_a_file_inside_output_dir(tmp_path):
    d = _run_dir(tmp_path)
    (d / "sub").mkdir()
    for text in ("sub", ".", "sub/.."):
        (d / "last_checkpoint").write_text(text)
        with pytest.raises(CheckpointError, match=f"last_checkpoint' names '{text}'.*not a file"):
            Checkpointer(_net(2), str(d), save_to_disk=True).resume_or_load("", resume=True)
    # the ways of naming the run's own checkpoint all still resume
    for text in ("model_0000001.pth", "model_0000001.pth\n", "./model_0000001.pth", str(d / "model_0000001.pth")):
        (d / "last_checkpoint").write_text(text)
        assert Checkpointer(_net(2), str(d), save_to_disk=True).resume_or_load("", resume=True)["iteration"] == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda s: s.encode("utf-8")),
    st.sampled_from(["model_0000001.pth", "../other/model_0000005.pth", "OTHER", "..", ".", "/", "~/x",
                     "model_0000001.pth/..", "../run/model_0000001.pth"]).map(lambda s: s.encode("utf-8")),
))
def test_fuzz_pointer_resumes_only_from_inside_output_dir(tmp_path, content):
    d = tmp_path / "run"
    other = tmp_path / "other"
    if not d.exists():
        _run_dir(tmp_path)
        _run_dir(tmp_path, "other", iteration=5)
    content = content.replace(b"OTHER", str(other / "model_0000005.pth").encode())
    (d / "last_checkpoint").write_bytes(content)
    try:
        extra = Checkpointer(_net(2), str(d), save_to_disk=True).resume_or_load("", resume=True)
    except CheckpointError as e:
        assert str(d / "last_checkpoint") in str(e)
    else:
        assert extra["iteration"] == 1  # only the run's own checkpoint is ever resumed from


# ----------------------------------------------------------------------------- Ctrl-C during a save
def _interrupting_save(after_bytes: int):
    """torch.save whose file write raises KeyboardInterrupt (as a Ctrl-C would) after `after_bytes` bytes."""
    real_save = torch.save

    class Interrupting(io.RawIOBase):
        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, b):
            if self.n + len(b) > after_bytes:
                raise KeyboardInterrupt
            self.n += len(b)
            return self.f.write(b)

    def save(obj, f, *a, **k):
        return real_save(obj, Interrupting(f), *a, **k)

    return save


@pytest.mark.parametrize("after_bytes", [0, 2000])
def test_ctrl_c_during_save_keeps_previous_checkpoint_and_says_so(tmp_path, monkeypatch, after_bytes):
    m = _net(8)
    ck = Checkpointer(m, str(tmp_path), save_to_disk=True)
    ck.save("model_0000000", iteration=0)
    monkeypatch.setattr(torch, "save", _interrupting_save(after_bytes))
    with pytest.raises(KeyboardInterrupt) as ei:
        ck.save("model_0000001", iteration=1)
    monkeypatch.undo()
    msg = str(ei.value)
    assert "interrupted" in msg and "model_0000001.pth" in msg
    assert "model_0000000.pth" in msg and "intact" in msg and "temp file was removed" in msg
    assert "unexpected pos" not in msg
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]  # no partial or temp file
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert Checkpointer(_net(8), str(tmp_path), save_to_disk=True).resume_or_load("", resume=True)["iteration"] == 0


def test_ctrl_c_during_the_first_save_says_there_is_no_previous_checkpoint(tmp_path, monkeypatch):
    ck = Checkpointer(_net(2), str(tmp_path), save_to_disk=True)
    monkeypatch.setattr(torch, "save", _interrupting_save(100))
    with pytest.raises(KeyboardInterrupt, match="interrupted.*no previous checkpoint.*temp file was removed"):
        ck.save("model_0000000", iteration=0)
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_updating_the_pointer_keeps_it_on_the_previous_file(tmp_path, monkeypatch):
    ck = Checkpointer(_net(2), str(tmp_path), save_to_disk=True)
    ck.save("model_0000000", iteration=0)

    def interrupted_tag(basename):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "tag_last_checkpoint", interrupted_tag)
    with pytest.raises(KeyboardInterrupt, match="last_checkpoint.*still names 'model_0000000.pth'"):
        ck.save("model_0000001", iteration=1)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert torch.load(tmp_path / "model_0000001.pth", weights_only=True)["iteration"] == 1  # written whole
