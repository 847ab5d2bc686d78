"""Weight files: a small file cannot make the reader allocate much more than it holds (crafted pickles, zip bombs,
declared sizes), --trust says what a file is, and NaN/Inf weights are refused at load naming the tensor."""
import codecs
import io
import pickle
import resource
import struct
import time
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from resnet_backbone.checkpoint import CheckpointError, load_backbone_weights, load_checkpoint_file
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.checkpoint.converters import convert_checkpoint
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.backbone import build_backbone

GiB = 2**30
MiB = 2**20
_np_core = np._core if hasattr(np, "_core") else np.core


class _Call:
    """Pickles as the call `func(*args)`: what a crafted file holds."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Build:
    """Pickles as `func(*args)` followed by BUILD with `state` (how numpy arrays are pickled)."""

    def __init__(self, func, args, state):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return self.func, self.args, self.state


class _Plain:
    pass


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _refused(fn, path, *fragments):
    """fn() raises CheckpointError naming `path` and `fragments`, within 5 s, without the peak RSS growing 256 MiB."""
    before, t0 = _peak_rss(), time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        fn()
    assert time.perf_counter() - t0 < 5
    assert _peak_rss() - before < 256 * MiB
    msg = str(e.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg, msg
    return msg


# --------------------------------------------------------------------------- 1. crafted plain pickles
_BOMBS = {
    "bytearray(3GiB)": _Call(bytearray, 3 * GiB),
    "numpy.ndarray((3GiB,), u1)": _Call(np.ndarray, (3 * GiB,), np.dtype("u1")),
    "_reconstruct(ndarray, (3GiB,))": _Call(_np_core.multiarray._reconstruct, np.ndarray, (3 * GiB,), b"B"),
    "ndarray on a 1-byte buffer with stride 0": _Call(np.ndarray, (3 * GiB,), np.dtype("u1"), b"x", 0, (0,)),
}


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
@pytest.mark.parametrize("bomb", sorted(_BOMBS))
def test_tiny_pickle_asking_for_gigabytes_is_refused_before_allocating(tmp_path, bomb, proto):
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": _BOMBS[bomb]}}, protocol=proto))
    assert path.stat().st_size < 200
    _refused(lambda: load_checkpoint_file(str(path)), path, "refused", "3.0 GiB", "RB_CHECKPOINT_MAX_EXPANSION")


def test_bytes_repeated_from_one_string_are_refused(tmp_path):
    # one 1 MiB string in the memo, encoded to bytes 300 times: 300 MiB from a 1 MiB file
    s = "x" * MiB
    path = tmp_path / "repeat.pkl"
    path.write_bytes(pickle.dumps([_Call(codecs.encode, s, "latin1") for _ in range(300)], protocol=2))
    assert path.stat().st_size < 2 * MiB
    _refused(lambda: load_checkpoint_file(str(path)), path, "refused", "_codecs.encode")


def test_arrays_rebuilt_many_times_from_one_buffer_are_refused(tmp_path):
    # 300 big-endian arrays BUILT from the same 1 MiB bytes: numpy copies (byte-swaps) each: 300 MiB
    raw = bytes(MiB)
    arr = [_Build(_np_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                  (1, (MiB // 4,), np.dtype(">f4"), False, raw)) for _ in range(300)]
    path = tmp_path / "rebuilt.pkl"
    path.write_bytes(pickle.dumps({"model": {f"w{i}": a for i, a in enumerate(arr)}}, protocol=2))
    assert path.stat().st_size < 2 * MiB
    _refused(lambda: load_checkpoint_file(str(path)), path, "refused", "numpy array")


def test_one_array_under_many_keys_is_refused(tmp_path):
    # the pickle memo stores the array once; converting the weights would copy it 300 times
    a = np.zeros(MiB // 4, np.float32)
    path = tmp_path / "aliased.pkl"
    path.write_bytes(pickle.dumps({"model": {f"res2.{i}.conv1.weight": a for i in range(300)}}, protocol=4))
    assert path.stat().st_size < 2 * MiB
    _refused(lambda: load_checkpoint_file(str(path)), path, "declare", "res2.")


@pytest.mark.parametrize("opcode", [b"\x8f", b"}", b"]"])  # EMPTY_SET (216 bytes each), EMPTY_DICT, EMPTY_LIST
def test_pickle_of_cheap_opcodes_building_many_objects_is_refused(tmp_path, opcode):
    # a 2 MB file of one-byte opcodes that each build an empty container: 2M objects, 100+ MiB in Python
    n = 2_000_000
    path = tmp_path / "objects.pkl"
    path.write_bytes(b"\x80\x04]" + b"(" + opcode * n + b"e.")  # [ {}, {}, ... ] via MARK ... APPENDS
    _refused(lambda: load_checkpoint_file(str(path)), path, "refused the Python objects its pickle opcodes build")


def test_normal_pickles_and_the_limit_override_still_load(tmp_path, monkeypatch):
    data = {"model": OrderedDict(a=np.random.randn(64, 64).astype(np.float32), b=np.arange(5)),
            "blob": bytearray(b"xyz"), "s": {1, 2}, "c": complex(1, 2), "t": b"\x00" * 100}
    for proto in (2, 3, 4, 5):
        path = tmp_path / f"ok{proto}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=proto))
        out = load_checkpoint_file(str(path))
        assert np.array_equal(out["model"]["a"], data["model"]["a"]) and out["blob"] == bytearray(b"xyz")
    # a genuine file that expands more than the default allows loads once the limit is raised
    path = tmp_path / "aliased.pkl"
    path.write_bytes(pickle.dumps({"one": np.zeros(MiB // 4, np.float32), "same": [np.zeros(MiB, np.uint8)] * 40},
                                  protocol=4))
    with pytest.raises(CheckpointError, match="RB_CHECKPOINT_MAX_EXPANSION"):
        load_checkpoint_file(str(path))
    monkeypatch.setenv("RB_CHECKPOINT_MAX_EXPANSION", "100")
    assert len(load_checkpoint_file(str(path))["same"]) == 40
    monkeypatch.setenv("RB_CHECKPOINT_MAX_EXPANSION", "lots")
    with pytest.raises(CheckpointError, match="RB_CHECKPOINT_MAX_EXPANSION='lots' must be a number"):
        load_checkpoint_file(str(path))


def test_codecs_other_than_latin1_are_not_run(tmp_path):
    path = tmp_path / "codec.pkl"
    path.write_bytes(pickle.dumps({"x": _Call(codecs.encode, b"abc", "zlib_codec")}, protocol=2))
    _refused(lambda: load_checkpoint_file(str(path)), path, "refused", "_codecs.encode")


# ------------------------------------------------------------------------------ torch files (zip, legacy)
def test_torch_zip_whose_pickle_asks_for_gigabytes_is_refused(tmp_path):
    path = tmp_path / "bomb.pth"
    torch.save({"model": {"w": torch.ones(2)}, "pad": _Call(bytearray, 3 * GiB)}, str(path))
    _refused(lambda: load_checkpoint_file(str(path)), path, "refused", "bytearray", "3.0 GiB")


def _torch_bombs():
    with warnings.catch_warnings():  # quantized tensors and TypedStorage (what torch.save pickles) are deprecated
        warnings.simplefilter("ignore")
        q_storage = torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8).storage()
    return {
        # torch allocates a quantized tensor by its declared size before it checks the 1-byte storage
        "qtensor": _Call(torch._utils._rebuild_qtensor, q_storage, 0, (3 * GiB,), (1,),
                         (torch.per_tensor_affine, 1.0, 0), False, OrderedDict()),
        # a stride-0 view of one float, converted to float64 while loading: 3 GiB written
        "converted view": _Call(torch._utils._rebuild_device_tensor_from_cpu_tensor,
                                torch.zeros(1).expand(3 * GiB // 8), torch.float64, "cpu", False),
    }


@pytest.mark.parametrize("bomb", ["qtensor", "converted view"])
def test_torch_rebuild_functions_that_allocate_by_declared_size_are_refused(tmp_path, bomb):
    path = tmp_path / "rebuild.pth"
    torch.save({"model": {"w": _torch_bombs()[bomb]}}, str(path))
    assert path.stat().st_size < 4096
    _refused(lambda: load_checkpoint_file(str(path)), path, "refused", "3.0 GiB")


def test_stride_zero_view_declaring_gigabytes_is_refused(tmp_path):
    # 4 bytes of data, a tensor that claims 2**31 elements (8 GiB): anything that copies it would allocate that
    path = tmp_path / "expanded.pth"
    torch.save({"model": {"res2.0.conv1.weight": torch.zeros(1).expand(2**31)}}, str(path))
    assert path.stat().st_size < 4096
    _refused(lambda: load_checkpoint_file(str(path)), path, "res2.0.conv1.weight", "8.0 GiB")


def _deflate(src, dst):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def test_deflated_zip_that_inflates_far_beyond_its_size_is_refused(tmp_path):
    plain, bomb = tmp_path / "plain.pth", tmp_path / "bomb.pth"
    torch.save({"model": {"w": torch.zeros(16 * MiB)}}, str(plain))  # 64 MiB of zeros
    _deflate(plain, bomb)
    assert bomb.stat().st_size < 512 * 1024
    _refused(lambda: load_checkpoint_file(str(bomb)), bomb, "zip member", "/data/0", "64.0 MiB uncompressed",
             "nothing was inflated")
    # the same weights stored normally, or deflated when they do not inflate much, still load
    assert load_checkpoint_file(str(plain))["model"]["w"].numel() == 16 * MiB
    small, small_deflated = tmp_path / "small.pth", tmp_path / "small_deflated.pth"
    torch.save({"model": {"w": torch.randn(1000)}}, str(small))
    _deflate(small, small_deflated)
    assert torch.equal(load_checkpoint_file(str(small_deflated))["model"]["w"],
                       load_checkpoint_file(str(small))["model"]["w"])


def _patch_central_size(data: bytes, member: str, size: int) -> bytes:
    """Rewrite the uncompressed size that the central directory records for `member`."""
    name = member.encode()
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        assert pos >= 0, member
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46: pos + 46 + name_len] == name:
            return data[: pos + 24] + struct.pack("<I", size) + data[pos + 28:]
        pos += 4


def test_zip_member_declaring_a_huge_size_is_refused_before_reading(tmp_path):
    src, path = tmp_path / "src.pth", tmp_path / "lying.pth"
    torch.save({"model": {"w": torch.ones(4)}}, str(src))
    _deflate(src, tmp_path / "d.pth")
    data = (tmp_path / "d.pth").read_bytes()
    member = next(n for n in zipfile.ZipFile(tmp_path / "d.pth").namelist() if n.endswith("/data/0"))
    path.write_bytes(_patch_central_size(data, member, 3 * GiB))
    _refused(lambda: load_checkpoint_file(str(path)), path, f"zip member '{member}'", "3.0 GiB uncompressed")


def test_many_members_inflating_together_are_refused(tmp_path):
    path = tmp_path / "many.pth"
    torch.save({"model": {f"w{i}": torch.zeros(1024 * 1024) for i in range(8)}}, str(tmp_path / "src.pth"))
    _deflate(tmp_path / "src.pth", path)  # 8 members of 4 MiB each (each below the limit, 32 MiB together)
    _refused(lambda: load_checkpoint_file(str(path)), path, "zip members declare", "in all")


def _legacy_file(path, numel):
    """A legacy (non-zip) torch file whose one storage declares `numel` float32 elements but holds none."""

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", numel, None)
            return None

    storage = object()
    buf = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                 "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(head, buf, protocol=2)
    _Pickler(buf, protocol=2).dump({"model": {"w": _Call(torch._utils._rebuild_tensor_v2, storage, 0, (numel,), (1,),
                                                         False, OrderedDict())}})
    pickle.dump(["0"], buf, protocol=2)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("numel,fragments", [
    (3 * GiB // 4, ("storage '0'", "3.0 GiB", "RB_CHECKPOINT_MAX_EXPANSION")),  # beyond the budget
    (2 * MiB, ("declares 8.0 MiB of tensor storage", "the whole file is")),  # within it, but more than the file
])
def test_legacy_torch_file_declaring_more_storage_than_it_holds_is_refused(tmp_path, numel, fragments):
    # torch allocates legacy storages by their declared size, then reads them (old code: loaded it, uninitialised)
    path = tmp_path / "legacy_bomb.pth"
    _legacy_file(path, numel)
    _refused(lambda: load_checkpoint_file(str(path)), path, "legacy torch.save", *fragments)


# --------------------------------------------------------------------------------- 3. trust and file kinds
def test_trust_on_a_plain_pickle_with_pth_extension_loads_it(tmp_path):
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps({"model": {"w": np.ones(3, np.float32)}, "cfg": _Plain()}, protocol=2))
    msg = _refused(lambda: load_checkpoint_file(str(path)), path, "plain Python pickle", "trust=True",
                   "pickle.load", "_Plain")
    assert "magic number" not in msg
    out = load_checkpoint_file(str(path), trust=True)
    assert isinstance(out["cfg"], _Plain) and np.array_equal(out["model"]["w"], np.ones(3, np.float32))


def test_trust_on_a_plain_pickle_that_cannot_be_unpickled_says_what_it_is(tmp_path):
    path = tmp_path / "missing_module.pth"
    path.write_bytes(b"\x80\x02cno_such_module_xyz\nThing\nq\x00)\x81q\x01.")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_file(str(path), trust=True)
    msg = str(e.value)
    assert str(path) in msg and "plain Python pickle" in msg and "pickle.load" in msg and "no_such_module_xyz" in msg
    assert "magic number" not in msg


def test_refusals_name_the_torch_format(tmp_path):
    legacy, zipped = tmp_path / "legacy.pth", tmp_path / "zipped.pth"
    obj = {"model": {"w": torch.ones(2)}, "extra": _Plain()}
    torch.save(obj, str(legacy), _use_new_zipfile_serialization=False)
    torch.save(obj, str(zipped))
    _refused(lambda: load_checkpoint_file(str(legacy)), legacy, "legacy torch.save file", "trust=True",
             "weights_only=False")
    _refused(lambda: load_checkpoint_file(str(zipped)), zipped, "torch.save zip file", "trust=True")
    for p in (legacy, zipped):
        assert torch.equal(load_checkpoint_file(str(p), trust=True)["model"]["w"], torch.ones(2))
    # a legacy torch file named .pkl is read as a torch file, not refused as a pickle with persistent ids
    named_pkl = tmp_path / "legacy.pkl"
    torch.save({"model": {"w": torch.arange(3.0)}}, str(named_pkl), _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint_file(str(named_pkl))["model"]["w"], torch.arange(3.0))


# ------------------------------------------------------------------------------------ 4. NaN / Inf weights
def _resnet18():
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NORM, r.RES2_OUT_CHANNELS, r.OUT_FEATURES = 18, "FrozenBN", 64, ["res5"]
    return build_backbone(cfg).eval()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_torchvision_weights_are_refused_naming_the_tensor(tmp_path, bad):
    sd = torchvision.models.resnet18().state_dict()
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = bad
    path = tmp_path / "tv.pth"
    torch.save(sd, str(path))
    model = _resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    msg = _refused(lambda: load_backbone_weights(model, str(path)), path, "layer2.0.conv1.weight", "non-finite")
    assert ("1 NaN" if bad != bad else "1 Inf") in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was loaded
    with pytest.raises(CheckpointError, match="layer2.0.conv1.weight"):
        convert_checkpoint(str(path))  # tools/convert_weights.py refuses too


def test_non_finite_caffe2_pickle_is_refused(tmp_path):
    path = tmp_path / "R-18.pkl"
    w = np.ones((64, 3, 7, 7), np.float32)
    w[1, 2, 3, 4] = np.inf
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": w, "res2_0_branch2a_w": np.ones((64, 64, 3, 3), np.float32)}},
                                  protocol=2))
    _refused(lambda: convert_checkpoint(str(path)), path, "'conv1_w'", "1 Inf")


def _small():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_resumed_and_own_checkpoints_with_nan_are_refused(tmp_path):
    m = _small()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    ck = Checkpointer(m, str(tmp_path), optimizer=opt, save_to_disk=True)
    path = ck.save("model_0000001", iteration=1)
    data = torch.load(path, weights_only=True)
    data["model"]["2.bias"][1] = float("nan")
    torch.save(data, path)
    fresh = _small()
    ck2 = Checkpointer(fresh, str(tmp_path), optimizer=torch.optim.SGD(fresh.parameters(), lr=0.1), save_to_disk=True)
    _refused(lambda: ck2.resume_or_load("", resume=True), path, "'2.bias'", "1 NaN")
    _refused(lambda: Checkpointer(_small(), "", save_to_disk=False).load_weights(path), path, "'2.bias'")
    # integer buffers (num_batches_tracked) and finite weights are fine
    data["model"]["2.bias"][1] = 0.0
    torch.save(data, path)
    assert ck2.resume_or_load("", resume=True)["iteration"] == 1
