import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.checkpointer import (
    Checkpointer,
    check_output_dir,
    get_rng_state,
    set_rng_state,
)


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _small():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _train_step(m, opt, sched=None):
    x = torch.randn(8, 3)
    loss = m(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if sched:
        sched.step()


def test_save_resume_restores_everything(tmp_path):
    m = _small()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ck = Checkpointer(m, str(tmp_path), optimizer=opt, scheduler=sched, scaler=scaler, save_to_disk=True)
    for _ in range(3):
        _train_step(m, opt, sched)
    torch.manual_seed(123)
    np.random.seed(5)
    path = ck.save("model_0000002", iteration=2)
    assert os.path.basename(path) == "model_0000002.pth"
    assert open(tmp_path / "last_checkpoint").read() == "model_0000002.pth"
    # weights_only loading must work on our own files
    data = torch.load(path, weights_only=True)
    assert data["iteration"] == 2
    # continue training the original, then restore a fresh one and compare
    _train_step(m, opt, sched)
    ref = {k: v.clone() for k, v in m.state_dict().items()}

    torch.manual_seed(999)
    m2 = _small()
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 2)
    ck2 = Checkpointer(m2, str(tmp_path), optimizer=opt2, scheduler=sched2, scaler=scaler, save_to_disk=True)
    extra = ck2.resume_or_load("", resume=True)
    assert extra["iteration"] == 2
    assert sched2.last_epoch == 3
    # no re-seeding: the restored RNG state must give the same batch as the original run drew
    _train_step(m2, opt2, sched2)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_rng_state_roundtrip_python_numpy_torch():
    import random

    s = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(s)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b


def test_resume_without_checkpoint_loads_weights_only(tmp_path):
    src = _small()
    ck = Checkpointer(src, str(tmp_path / "a"), save_to_disk=True)
    p = ck.save("model_final", iteration=9)
    dst = _small()
    opt = torch.optim.SGD(dst.parameters(), lr=0.1)
    ck2 = Checkpointer(dst, str(tmp_path / "b"), optimizer=opt, save_to_disk=True)
    assert ck2.resume_or_load(p, resume=True) == {}
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])
    # a plain state dict of the whole model works too
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    dst2 = _small()
    Checkpointer(dst2, "", save_to_disk=False).resume_or_load(str(tmp_path / "plain.pth"), resume=False)
    assert torch.equal(dst2[0].weight, src[0].weight)


def test_wrong_architecture_names_key_and_shapes(tmp_path):
    p = tmp_path / "w.pth"
    torch.save({"model": nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)).state_dict()}, p)
    with pytest.raises(CheckpointError, match=r"0\.weight: checkpoint \(5, 3\) vs model \(4, 3\)"):
        Checkpointer(_small(), "", save_to_disk=False).load_weights(str(p))


def test_truncated_and_missing_checkpoint_errors(tmp_path):
    ck = Checkpointer(_small(), str(tmp_path), save_to_disk=True)
    p = ck.save("model_0000001", iteration=1)
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="model_0000001.pth"):
        ck.resume_or_load("", resume=True)
    with pytest.raises(CheckpointError, match="not found.*nope.pth"):
        ck.load_weights(str(tmp_path / "nope.pth"))


def test_pickle_needing_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pth"
    torch.save({"model": {"x": Evil()}}, p)
    with pytest.raises(CheckpointError, match="evil.pth"):
        Checkpointer(_small(), "", save_to_disk=False).load_weights(str(p))
    assert not marker.exists()


def test_best_checkpoint_by_metric(tmp_path):
    m = _small()
    ck = Checkpointer(m, str(tmp_path), save_to_disk=True)
    ck.save("model_0000000", iteration=0)
    assert ck.maybe_save_best({"bbox": {"AP": 10.0}}, 10, "bbox/AP")
    assert not ck.maybe_save_best({"bbox": {"AP": 5.0}}, 20, "bbox/AP")
    assert ck.maybe_save_best({"bbox": {"AP": 12.0}}, 30, "bbox/AP")
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert best["iteration"] == 30 and best["best_metric"] == 12.0
    assert open(tmp_path / "last_checkpoint").read() == "model_0000000.pth"  # best does not move the pointer
    assert not ck.maybe_save_best({"bbox": {"AP50": 1.0}}, 40, "bbox/AP")  # missing metric: warns only
    # the best value survives a resume
    ck.save("model_0000040", iteration=40)
    ck2 = Checkpointer(_small(), str(tmp_path), save_to_disk=True)
    ck2.resume_or_load("", resume=True)
    assert ck2.best_metric == 12.0


def test_output_dir_checks(tmp_path, monkeypatch):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(CheckpointError, match="cannot be created"):
        check_output_dir(str(afile / "sub"))
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(CheckpointError, match="not writable"):
            check_output_dir(str(ro))
    check_output_dir(str(tmp_path / "ok"), required_bytes=1024)
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CheckpointError, match="MiB free.*needs about"):
        check_output_dir(str(tmp_path / "ok"), required_bytes=10**8)


_CHILD = textwrap.dedent("""
    import os, sys, time, torch
    from torch import nn
    from resnet_backbone.checkpoint.checkpointer import Checkpointer
    save_dir, mode = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(512, 1024), nn.Linear(1024, 512))  # ~4 MB
    ck = Checkpointer(m, save_dir, save_to_disk=True)
    ck.save("model_0000000", iteration=0)
    print("SAVED0", flush=True)
    if mode == "stall":
        real_save = torch.save
        def slow_save(obj, f, *a, **k):
            import io
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            print("HALFWAY", flush=True)
            time.sleep(600)
        torch.save = slow_save
        with torch.no_grad():
            m[0].weight.add_(1.0)
        ck.save("model_0000001", iteration=1)
    else:
        i = 1
        while True:
            with torch.no_grad():
                m[0].weight.add_(1.0)
            ck.save(f"model_{i:07d}", iteration=i)
            i += 1
""")


def _spawn(tmp_path, mode):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), mode], stdout=subprocess.PIPE,
                            text=True, env=env)


def _check_last_loads(save_dir):
    ck = Checkpointer(nn.Sequential(nn.Linear(512, 1024), nn.Linear(1024, 512)), str(save_dir), save_to_disk=True)
    extra = ck.resume_or_load("", resume=True)
    it = extra["iteration"]
    # each save added 1.0 to the first weight: the loaded weights match the iteration in the same file
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(512, 1024), nn.Linear(1024, 512))
    assert torch.allclose(ck.model[0].weight, ref[0].weight + it)
    return it


def test_sigkill_mid_write_keeps_previous_checkpoint(tmp_path):
    p = _spawn(tmp_path, "stall")
    try:
        assert p.stdout.readline().strip() == "SAVED0"
        assert p.stdout.readline().strip() == "HALFWAY"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    files = sorted(os.listdir(tmp_path))
    assert "model_0000001.pth" not in files  # the half-written file never got its final name
    assert any(".tmp" in f for f in files)  # ... it is an orphan temp file
    assert _check_last_loads(tmp_path) == 0
    # the next Checkpointer removes the dead process's orphan
    Checkpointer(_small(), str(tmp_path), save_to_disk=True)
    assert not any(".tmp" in f for f in os.listdir(tmp_path))


@pytest.mark.slow
def test_sigkill_at_random_moments_while_saving_in_a_loop(tmp_path):
    rng = np.random.default_rng(0)
    survived = 0
    for k in range(3):
        d = tmp_path / str(k)
        d.mkdir()
        p = _spawn(d, "loop")
        try:
            assert p.stdout.readline().strip() == "SAVED0"
            time.sleep(float(rng.uniform(0.05, 0.6)))
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
        _check_last_loads(d)
        survived += 1
    assert survived == 3


def test_model_weights_from_torchvision_backbone_go_through_converters(tmp_path):
    import torchvision

    from resnet_backbone.config import get_cfg
    from resnet_backbone.modeling.meta_arch import build_model

    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "tv_r18.pth")
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Base-RCNN-FPN.yaml"))
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                         "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = Checkpointer(model, str(tmp_path / "out"), optimizer=opt, save_to_disk=True)
    assert ck.resume_or_load(str(tmp_path / "tv_r18.pth"), resume=True) == {}  # nothing to resume: weights
    bu = model.backbone.bottom_up
    assert torch.equal(bu.stem.conv1.weight, tv.conv1.weight)
    assert torch.equal(bu.res3[0].shortcut.weight, tv.layer2[0].downsample[0].weight)
    assert torch.equal(bu.res5[1].conv2.weight, tv.layer4[1].conv2.weight)


def test_disk_full_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    m = _small()
    ck = Checkpointer(m, str(tmp_path), save_to_disk=True)
    ck.save("model_0000000", iteration=0)
    real_save = torch.save

    def full_disk_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint and last_checkpoint are unchanged"):
        ck.save("model_0000001", iteration=1)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]  # no partial or temp file
    assert Checkpointer(_small(), str(tmp_path), save_to_disk=True).resume_or_load("", resume=True)["iteration"] == 0
