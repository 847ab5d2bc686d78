"""Disk full and unwritable output directories: a clear error before training where it can be known, and
never a corrupt or half-written checkpoint when a write fails midway (ENOSPC simulated by a file object that
fills up after a number of bytes: no privileges or tmpfs needed)."""
import errno
import os

import pytest
import torch
from _rel_common import tiny_trainer_cfg
from _tiny_model import TinyTrainer
from torch import nn

from resnet_backbone.checkpoint import checkpointer as ckmod
from resnet_backbone.checkpoint.checkpointer import Checkpointer, CheckpointError

_real_save = torch.save


class _FullDisk:
    """A file object on a disk with `room` bytes left: a longer write stores what fits, then ENOSPC."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        b = bytes(b)
        if len(b) > self.room:
            self.f.write(b[: self.room])
            self.f.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def _fill_disk_after(monkeypatch, room):
    def save(obj, f, *a, **k):
        return _real_save(obj, _FullDisk(f, room), *a, **k)

    monkeypatch.setattr(torch, "save", save)


def _small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.Linear(256, 8))


def test_enospc_midway_keeps_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    m = _small()
    ck = Checkpointer(m, str(tmp_path), save_to_disk=True)
    ck.save("model_0000000", iteration=0)
    before = (tmp_path / "model_0000000.pth").read_bytes()
    with torch.no_grad():
        m[0].weight.add_(1.0)
    _fill_disk_after(monkeypatch, room=20_000)  # the checkpoint is ~70 kB: the write stops a third of the way
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint '.*model_0000001.pth': No space left on "
                                              r"device \(the previous checkpoint and last_checkpoint are unchanged"):
        ck.save("model_0000001", iteration=1)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]  # no partial file, no temp
    assert (tmp_path / "model_0000000.pth").read_bytes() == before
    ck2 = Checkpointer(_small(), str(tmp_path), save_to_disk=True)
    assert ck2.resume_or_load("", resume=True)["iteration"] == 0
    assert torch.equal(ck2.model[0].weight, _small()[0].weight)


def test_enospc_writing_the_pointer_leaves_a_consistent_pair(tmp_path, monkeypatch):
    ck = Checkpointer(_small(), str(tmp_path), save_to_disk=True)
    ck.save("model_0000000", iteration=0)
    real = ckmod._atomic_write

    def full_for_pointer(path, fn):
        if os.path.basename(path) == "last_checkpoint":
            return real(path, lambda f: (f.write(b"model_00"), (_ for _ in ()).throw(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))))
        return real(path, fn)

    monkeypatch.setattr(ckmod, "_atomic_write", full_for_pointer)
    with pytest.raises(CheckpointError, match="cannot update last_checkpoint: No space left"):
        ck.save("model_0000001", iteration=1)
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"  # the old pointer, whole
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
    assert Checkpointer(_small(), str(tmp_path), save_to_disk=True).resume_or_load("", resume=True)["iteration"] == 0


def test_disk_full_during_training_stops_clearly_and_resume_matches(tmp_path, monkeypatch):
    straight = TinyTrainer(tiny_trainer_cfg(tmp_path / "a", max_iter=8))
    straight.resume_or_load(resume=False)
    straight.train()

    class FullAtIter5(TinyTrainer):
        def _save(self, name, it):
            if it == 5:
                _fill_disk_after(monkeypatch, room=1000)
            return super()._save(name, it)

    b = tmp_path / "b"
    t = FullAtIter5(tiny_trainer_cfg(b, max_iter=8))
    t.resume_or_load(resume=False)
    with pytest.raises(CheckpointError, match=r"model_0000005.pth': No space left on device"):
        t.train()
    monkeypatch.undo()
    assert (b / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not [n for n in os.listdir(b) if ".tmp" in n or n == "model_0000005.pth"]
    resumed = TinyTrainer(tiny_trainer_cfg(b, max_iter=8))  # space freed: --resume
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    sa, sb = straight.unwrapped_model.state_dict(), resumed.unwrapped_model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_too_little_free_space_fails_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(real(p).total, real(p).total - 4096, 4096))
    trained = []
    monkeypatch.setattr(TinyTrainer, "train", lambda self: trained.append(1))
    with pytest.raises(CheckpointError, match=r"has 0.0 MiB free, but a checkpoint needs about"):
        TinyTrainer(tiny_trainer_cfg(tmp_path / "out"))
    assert trained == [] and not (tmp_path / "out" / "metrics.json").exists()


def test_read_only_output_dir_fails_before_training(tmp_path, monkeypatch):
    """A read-only file system (EROFS) — what chmod cannot show when the tests run as root."""
    import tempfile

    def erofs(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    out = tmp_path / "ro"
    out.mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", erofs)
    with pytest.raises(CheckpointError, match=r"output directory '.*ro' is not writable: Read-only file system"):
        TinyTrainer(tiny_trainer_cfg(out))


def test_output_dir_that_cannot_exist_fails_in_setup(tmp_path):
    """/proc refuses new directories even to root: train_net's setup stops before training with the path."""
    from resnet_backbone.config import get_cfg
    from resnet_backbone.engine import default_setup

    cfg = get_cfg()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg.merge_from_file(os.path.join(root, "configs", "Base-RCNN-FPN.yaml"))  # a model default_setup accepts
    cfg.OUTPUT_DIR = "/proc/self/rb_no_such_output"
    with pytest.raises(CheckpointError, match=r"output directory '/proc/self/rb_no_such_output' cannot be created"):
        default_setup(cfg)


def test_real_full_filesystem_when_a_tmpfs_can_be_mounted(tmp_path):
    """The same on a real 256 kB tmpfs (needs mount rights: skipped where the tests run unprivileged)."""
    import subprocess

    d = tmp_path / "tiny"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (unprivileged)")
    try:
        small = nn.Linear(10, 10)
        Checkpointer(small, str(d), save_to_disk=True).save("model_0000000", iteration=0)
        big = nn.Linear(256, 512)  # ~0.5 MB of weights: cannot fit
        with pytest.raises(CheckpointError, match=r"model_0000001.pth': No space left on device"):
            Checkpointer(big, str(d), save_to_disk=True).save("model_0000001", iteration=1)
        assert sorted(os.listdir(d)) == ["last_checkpoint", "model_0000000.pth"]
        ck = Checkpointer(nn.Linear(10, 10), str(d), save_to_disk=True)
        assert ck.resume_or_load("", resume=True)["iteration"] == 0
        assert torch.equal(ck.model.weight, small.weight)
        # ... and the trainer's up-front check sees the lack of space before training
        with pytest.raises(CheckpointError, match="MiB free, but a checkpoint needs about"):
            ckmod.check_output_dir(str(d), required_bytes=ckmod.estimate_checkpoint_bytes(big))
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_metrics_json_after_a_crash_mid_line_keeps_every_new_record(tmp_path):
    """A run killed while appending to metrics.json leaves half a line; the resumed run's first record must not
    be glued to it (it would be lost)."""
    from resnet_backbone.utils.events import EventStorage, JSONWriter, read_metrics

    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 3, "total_loss": 1.0}\n{"iteration": 4, "total_lo')
    st = EventStorage(5)
    st.put_scalar("total_loss", 0.5)
    JSONWriter(str(path), window=1, start_iter=5).write(st)  # resumed at iteration 5
    assert [m["iteration"] for m in read_metrics(path)] == [3, 5]
    assert path.read_text().count("\n") == 2  # the half line is gone, every line is whole
