"""Weight files are read without running code from them."""
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from resnet_backbone.checkpoint import CheckpointError, load_checkpoint_file, load_pickle
from resnet_backbone.checkpoint.safe_pickle import loads_pickle


class _CreatesFile:
    """A pickle payload that would create a file when unpickled (via os.system / open)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _OpensFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_numpy_pickles_of_every_protocol_load(tmp_path):
    data = {"model": OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.ones(3, dtype=np.int64)),
            "__author__": "me", "nums": [1, 2.5, (3, "x")], "scalar": np.float64(2.0), "blob": b"\x00\x01",
            "s": {1, 2}, "dt": np.dtype("f2")}
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"w{proto}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=proto))
        out = load_pickle(str(path))
        assert np.array_equal(out["model"]["a"], data["model"]["a"]) and out["model"]["a"].dtype == np.float32
        assert out["model"]["b"].dtype == np.int64
        assert out["nums"] == [1, 2.5, (3, "x")] and out["scalar"] == 2.0 and out["blob"] == b"\x00\x01"
        assert out["s"] == {1, 2} and out["dt"] == np.dtype("f2")


def test_python2_style_latin1_pickle():
    # protocol 2 with _codecs.encode for bytes, as Detectron (Python 2) files are read
    raw = pickle.dumps({"conv1_w": np.zeros((2, 2), np.float32)}, protocol=2)
    assert loads_pickle(raw)["conv1_w"].shape == (2, 2)


@pytest.mark.parametrize("payload", [_CreatesFile, _OpensFile])
def test_malicious_pickle_refused_and_not_run(tmp_path, payload):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": payload(str(target))}}, protocol=2))
    with pytest.raises(CheckpointError) as e:
        load_pickle(str(path))
    msg = str(e.value)
    assert str(path) in msg and "refused" in msg
    assert ("system" in msg) or ("open" in msg)
    assert not target.exists()


def test_malicious_pickle_with_pth_extension_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_CreatesFile(str(target)), protocol=4))
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_checkpoint_file(str(path))
    assert not target.exists()


def test_pickled_class_instance_refused(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"x": OrderedDict, "cfg": _Plain()}))
    with pytest.raises(CheckpointError, match=r"refused to load global '.*_Plain'"):
        load_pickle(str(path))


class _Plain:
    pass


def test_pth_needing_full_unpickling_needs_trust(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"model": {"w": torch.ones(2)}, "extra": _Plain()}, str(path))
    with pytest.raises(CheckpointError, match=r"full.pth.*needs full unpickling.*trust=True"):
        load_checkpoint_file(str(path))
    loaded = load_checkpoint_file(str(path), trust=True)
    assert torch.equal(loaded["model"]["w"], torch.ones(2))


def test_pth_weights_only_loads(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.arange(3.0)}, "format": "RGB", "pixel_mean": [1.0, 2.0, 3.0]}, str(path))
    out = load_checkpoint_file(str(path))
    assert torch.equal(out["model"]["w"], torch.arange(3.0)) and out["format"] == "RGB"


@pytest.mark.parametrize("ext", [".pth", ".pkl"])
def test_truncated_file(tmp_path, ext):
    path = tmp_path / f"cut{ext}"
    good = tmp_path / f"good{ext}"
    if ext == ".pth":
        torch.save({"w": torch.randn(100, 100)}, str(good))
    else:
        good.write_bytes(pickle.dumps({"w": np.random.randn(100, 100)}))
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"cut{ext}"):
        load_checkpoint_file(str(path))


def test_garbage_and_missing_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint_file(str(path))
    with pytest.raises(CheckpointError, match="not found.*nope.pkl"):
        load_checkpoint_file(str(tmp_path / "nope.pkl"))


def test_torch_file_named_pkl_loads_weights_only(tmp_path):
    path = tmp_path / "torch_saved.pkl"
    torch.save({"model": {"w": torch.arange(4.0)}}, str(path))
    assert torch.equal(load_checkpoint_file(str(path))["model"]["w"], torch.arange(4.0))
