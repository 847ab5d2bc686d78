"""Weight files are read without running code from them; property-based tests of the reader."""
import codecs
import io
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_backbone.checkpoint import CheckpointError, load_checkpoint_file, load_pickle
from resnet_backbone.checkpoint.converters import convert_checkpoint
from resnet_backbone.checkpoint.safe_pickle import loads_pickle, size_limit


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


# ------------------------------------------------------------------------------------ property-based
# Every input either loads or raises a CheckpointError naming the file; nothing else escapes the reader.
_DTYPES = ["f4", "f8", "f2", "i8", "i4", "u1", "?", ">f4", "<i2", "c8"]


def _array(dtype, shape, seed):
    return (np.random.default_rng(seed).standard_normal(shape) * 10).astype(dtype)


_arrays = st.builds(_array, st.sampled_from(_DTYPES), st.lists(st.integers(0, 4), max_size=3).map(tuple),
                    st.integers(0, 2**32 - 1))
_hashables = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                       st.text(max_size=12), st.binary(max_size=12))
_leaves = st.one_of(_hashables, st.floats(), st.complex_numbers(allow_nan=False), st.binary(max_size=40).map(bytearray),
                    _arrays, st.floats(width=32).map(np.float32), st.sampled_from(_DTYPES).map(np.dtype))
_values = st.recursive(_leaves, lambda c: st.one_of(
    st.lists(c, max_size=4), st.lists(c, max_size=3).map(tuple), st.dictionaries(st.text(max_size=8), c, max_size=4),
    st.dictionaries(st.text(max_size=8), c, max_size=3).map(OrderedDict), st.frozensets(_hashables, max_size=3),
    st.sets(_hashables, max_size=3)), max_leaves=12)
_mutations = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                                st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=4)


def _fuzz(examples: int):
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, (float, np.floating)):
        return (a != a and b != b) or a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, pos, val in ops:
        if not b:
            break
        i = pos % len(b)
        if op == "flip":
            b[i] ^= 1 << (val % 8)
        elif op == "set":
            b[i] = val
        elif op == "insert":
            b.insert(i, val)
        elif op == "delete":
            del b[i]
        else:
            del b[i:]
    return bytes(b)


def _held_bytes(obj) -> int:
    """Bytes the loaded object holds in arrays, tensors, bytes and strings (per reference, as a copy would)."""
    total, stack, seen = 0, [obj], set()
    while stack:
        o = stack.pop()
        if isinstance(o, np.ndarray):
            total += o.size * max(o.itemsize, 1)
        elif isinstance(o, torch.Tensor):
            total += o.numel() * o.element_size()
        elif isinstance(o, (bytes, bytearray, str)):
            total += len(o)
        elif isinstance(o, (dict, list, tuple, set, frozenset)) and id(o) not in seen:
            seen.add(id(o))
            stack.extend(o.values() if isinstance(o, dict) else o)
    return total


def _loads_or_names_file(path, **kw):
    """The property: loads, holding no more than the file's size bound, or raises CheckpointError naming the file."""
    try:
        out = load_checkpoint_file(str(path), **kw)
    except CheckpointError as e:
        assert str(path) in str(e), str(e)
        return None
    assert _held_bytes(out) <= size_limit(path.stat().st_size)
    return out


@_fuzz(300)
@given(obj=_values, proto=st.integers(2, 5))
def test_fuzz_pickles_of_the_allowed_types_round_trip(tmp_path, obj, proto):
    path = tmp_path / "w.pkl"
    data = pickle.dumps(obj, protocol=proto)
    path.write_bytes(data)
    assert _same(load_checkpoint_file(str(path)), pickle.loads(data, encoding="latin1"))  # what pickle itself gives


@_fuzz(600)
@given(obj=_values, proto=st.integers(2, 5), ops=_mutations, ext=st.sampled_from([".pkl", ".pth", ".pt"]))
def test_fuzz_mutated_pickles_load_or_raise_checkpoint_error(tmp_path, obj, proto, ops, ext):
    path = tmp_path / f"m{ext}"
    path.write_bytes(_mutate(pickle.dumps({"model": obj}, protocol=proto), ops))
    _loads_or_names_file(path)


class _Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


_np_core = np._core if hasattr(np, "_core") else np.core
_sizes = st.one_of(st.integers(0, 64), st.integers(0, 2**31), st.integers(0, 2**62))
_shapes = st.lists(_sizes, max_size=3).map(tuple)
_dtype_args = st.sampled_from(_DTYPES + ["V8", "O", "V0"]).map(np.dtype)
_calls = st.one_of(
    st.builds(lambda n: _Call(bytearray, n), _sizes),
    st.builds(lambda s, d: _Call(np.ndarray, s, d), _shapes, _dtype_args),
    st.builds(lambda s, d, b, st_: _Call(np.ndarray, s, d, b, 0, st_), _shapes, _dtype_args, st.binary(max_size=16),
              st.lists(st.integers(-8, 8), max_size=3).map(tuple)),
    st.builds(lambda s, c: _Call(_np_core.multiarray._reconstruct, np.ndarray, s, c), _shapes,
              st.sampled_from([b"b", b"B", "f8", "V16"])),
    st.builds(lambda d, b: _Call(_np_core.multiarray.scalar, d, b), _dtype_args, st.binary(max_size=16)),
    st.builds(lambda b, d, s: _Call(_np_core.numeric._frombuffer, b, d, s, "C"), st.binary(max_size=32), _dtype_args,
              _shapes),
    st.builds(lambda t, e: _Call(codecs.encode, t, e), st.text(max_size=50),
              st.sampled_from(["latin1", "utf-8", "rot13", "zlib_codec", "base64"])),
    st.builds(lambda xs: _Call(set, xs), st.lists(_hashables, max_size=5)),
    st.builds(lambda xs: _Call(OrderedDict, xs), st.lists(st.tuples(st.text(max_size=4), _hashables), max_size=4)),
    st.builds(lambda r, i: _Call(complex, r, i), st.floats(), st.floats()),
)


@_fuzz(600)
@given(calls=st.lists(_calls, min_size=1, max_size=4), proto=st.integers(2, 5))
def test_fuzz_calls_of_the_allowed_globals_with_random_arguments(tmp_path, calls, proto):
    path = tmp_path / "calls.pkl"
    path.write_bytes(pickle.dumps({"model": calls}, protocol=proto))
    _loads_or_names_file(path)


@_fuzz(400)
@given(data=st.binary(max_size=200), proto=st.integers(0, 5), ext=st.sampled_from([".pkl", ".pth"]))
def test_fuzz_random_opcode_streams(tmp_path, data, proto, ext):
    path = tmp_path / f"r{ext}"
    path.write_bytes((b"\x80" + bytes([proto]) if proto >= 2 else b"") + data)
    _loads_or_names_file(path)


_TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool, torch.float64]
_tensors = st.builds(lambda d, s, seed: (torch.randn(s, generator=torch.Generator().manual_seed(seed)) * 5).to(d),
                     st.sampled_from(_TORCH_DTYPES), st.lists(st.integers(0, 5), max_size=3).map(tuple),
                     st.integers(0, 2**31))
_state_dicts = st.dictionaries(st.text(max_size=10), st.one_of(_tensors, st.integers(), st.text(max_size=8),
                                                                  st.lists(_tensors, max_size=2)), max_size=5)


def _torch_bytes(sd, legacy: bool) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": sd, "iteration": 3}, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@_fuzz(300)
@given(sd=_state_dicts, legacy=st.booleans(), ops=_mutations)
def test_fuzz_mutated_torch_files_load_or_raise_checkpoint_error(tmp_path, sd, legacy, ops):
    path = tmp_path / "t.pth"
    path.write_bytes(_torch_bytes(sd, legacy))
    out = load_checkpoint_file(str(path))
    assert list(out["model"]) == list(sd)
    path.write_bytes(_mutate(_torch_bytes(sd, legacy), ops))
    _loads_or_names_file(path)


# member names zipfile can write (it cuts a name at NUL, and names are UTF-8): what a zip on disk can hold
_member_names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=20)
_member_edits = st.lists(st.tuples(st.sampled_from(["keep", "drop", "mutate", "rename", "empty"]), _mutations,
                                   _member_names), min_size=1, max_size=12)


@_fuzz(300)
@given(sd=_state_dicts, edits=_member_edits,
       extra=st.lists(st.tuples(_member_names, st.binary(max_size=64)), max_size=3), deflate=st.booleans())
def test_fuzz_zip_members_with_random_names_sizes_and_data(tmp_path, sd, edits, extra, deflate):
    """Zips with valid CRCs whose members are dropped, renamed, emptied or hold mutated data (so that torch's own
    reader, not only the zip checks, sees them), plus random extra members."""
    src = zipfile.ZipFile(io.BytesIO(_torch_bytes(sd, legacy=False)))
    path = tmp_path / "z.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as out:
        for i, info in enumerate(src.infolist()):
            action, ops, new_name = edits[i % len(edits)]
            data = src.read(info.filename)
            if action == "drop":
                continue
            name = info.filename.split("/", 1)[0] + "/" + new_name if action == "rename" else info.filename
            data = b"" if action == "empty" else _mutate(data, ops) if action == "mutate" else data
            out.writestr(name, data)
        for name, data in extra:
            out.writestr(name, data)
    _loads_or_names_file(path)


_weights = st.dictionaries(
    st.sampled_from(["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn1.running_var", "fc.bias",
                     "conv1_w", "res2_0_branch2a_w", "res_conv1_bn_s", "stem.conv1.weight", "res2.0.conv1.weight",
                     "module.layer1.0.conv1.weight", "backbone.bottom_up.stem.conv1.weight"]),
    _arrays, min_size=1, max_size=6)


@_fuzz(400)
@given(weights=_weights, wrap=st.sampled_from(["model", "blobs", "state_dict", None]), proto=st.integers(2, 5),
       ops=st.one_of(st.just([]), _mutations))
def test_fuzz_converting_mutated_weight_pickles(tmp_path, weights, wrap, proto, ops):
    """The whole read + convert path (tools/convert_weights.py): converts, or a CheckpointError naming the file."""
    path = tmp_path / "w.pkl"
    path.write_bytes(_mutate(pickle.dumps({wrap: weights} if wrap else weights, protocol=proto), ops))
    try:
        convert_checkpoint(str(path))
    except CheckpointError as e:
        assert str(path) in str(e), str(e)
