"""Reading weight files without running code from them, and without letting a small file claim a huge allocation.

What a file is comes from its first bytes, not its extension (`file_kind`):

- "torch-zip": `torch.save` since torch 1.6 (a zip archive holding data.pkl and one member per storage);
- "torch-legacy": the older non-zip `torch.save` format (`_use_new_zipfile_serialization=False`): a pickle of
  torch's magic number, then the pickled object, then the raw storages;
- "torch-tar": torch <= 0.1's tar format;
- "pickle": anything else, read as a plain Python pickle (detectron2 model-zoo / Detectron-Caffe2 `.pkl` files,
  or a pickle saved under another extension).

Readers:

- plain pickles: `load_pickle(path)` uses `SafeUnpickler`, a restricted unpickler that builds only numbers,
  strings, bytes, containers (list/tuple/dict/set, OrderedDict) and numpy arrays / dtypes / scalars. Any other
  global a pickle names (os.system, builtins.eval, torch._utils..., a class) is refused before it is imported or
  called, with a CheckpointError naming the file and the global.
- torch files: `torch.load(weights_only=True)`.
- `trust=True` (an explicit statement that the file comes from a trusted source) loads a file that needs full
  unpickling anyway: torch files with `torch.load(weights_only=False)`, plain pickles with `pickle.load`. A
  refusal says which kind of file it is and how it can be loaded.

Size bounds (a crafted file may not make the reader allocate much more than it holds): the budget is
`MAX_EXPANSION` x the file size + `SLACK_BYTES` (the environment variable RB_CHECKPOINT_MAX_EXPANSION replaces
`MAX_EXPANSION` for a genuine file that needs more).

- plain pickles: everything the restricted unpickler would allocate is charged against the budget before it
  is allocated: bytearray(n) / bytes(n), bytes (`_codecs.encode`), set/frozenset/OrderedDict built from a
  sequence, numpy arrays and scalars by their *declared* shape and dtype (ndarray(), `_reconstruct`,
  `_frombuffer`, the state an array is BUILT from, however small its data), BYTEARRAY8, and the Python objects
  the opcodes themselves build (one byte of EMPTY_SET makes a 216-byte set, MEMOIZE a memo entry, ...). Only the
  latin-1 / utf-8 / ascii codecs are allowed in `_codecs.encode` (what pickles of bytes use).
- torch zips: every member's uncompressed size (from the zip central directory, before anything is inflated) and
  their total must stay within the budget; then data.pkl is dry-run with stand-ins for every global (no code
  is imported or run), charging what torch's weights-only unpickler would allocate while loading: bytearray /
  bytes / containers, opcode objects, storages by declared size (a storage declaring more bytes than its zip
  member holds is refused), quantized tensors (allocated by size).
- legacy torch files: the same dry run over the pickled object; the storages it declares may not exceed the file
  (torch allocates them before reading them).
- after loading (any kind): the declared sizes of all tensors / arrays reachable through containers, counted per
  reference (a stride-0 view, or one array referenced under many keys, counts in full), must stay within the
  budget.

`check_finite_tensors(tensors, source)` refuses NaN / Inf weights naming the tensors; every load of weights into
a model goes through it (converters._unwrap, Checkpointer._load_model_state).

Truncated or corrupt files: CheckpointError naming the file.
"""
from __future__ import annotations

import collections
import io
import logging
import math
import operator
import os
import pickle
import pickletools
import struct
import warnings
import zipfile
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from . import CheckpointError

__all__ = ["SafeUnpickler", "load_pickle", "loads_pickle", "load_checkpoint_file", "file_kind", "PICKLE_EXTENSIONS",
           "check_finite_tensors", "check_declared_sizes", "size_limit", "MAX_EXPANSION", "SLACK_BYTES",
           "EXPANSION_ENV", "RefusedContentError", "TooLargeError"]

logger = logging.getLogger(__name__)

PICKLE_EXTENSIONS = (".pkl", ".pickle")
MAX_EXPANSION = 8.0  # bytes a file may expand to per byte it holds ...
SLACK_BYTES = 16 * 2**20  # ... plus this much
EXPANSION_ENV = "RB_CHECKPOINT_MAX_EXPANSION"
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first pickle of a legacy file
_MAX_DIMS = 64

KIND_DESCRIPTIONS = {
    "torch-zip": "a torch.save zip file",
    "torch-legacy": "a legacy torch.save file (the non-zip format of torch < 1.6 / _use_new_zipfile_serialization="
                    "False)",
    "torch-tar": "a legacy torch tar file (torch <= 0.1)",
    "pickle": "a plain Python pickle (not a torch.save file)",
}


class RefusedContentError(CheckpointError):
    """The file names a global / persistent reference the restricted unpickler does not build (would run code).
    `.detail`: what was refused, without the file name."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail or message


class TooLargeError(CheckpointError):
    """The file asks for more memory than its size allows (see the module docstring)."""


# ------------------------------------------------------------------------------------------------ budget
def max_expansion() -> float:
    raw = os.environ.get(EXPANSION_ENV, "").strip()
    if not raw:
        return MAX_EXPANSION
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 1):
        raise CheckpointError(f"{EXPANSION_ENV}={raw!r} must be a number >= 1 (how many bytes a weights file may "
                              f"expand to per byte it holds; default {MAX_EXPANSION:g})")
    return value


def size_limit(file_bytes: int) -> int:
    """How many bytes reading a file of `file_bytes` bytes may allocate."""
    return int(max_expansion() * max(int(file_bytes), 0)) + SLACK_BYTES


def _fmt_bytes(n: int) -> str:
    n = int(n)
    if n.bit_length() > 70:
        return f"about 2**{n.bit_length() - 1} bytes"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _short(obj, limit: int = 60) -> str:
    """A short repr for messages, never of more than `limit` items of `obj` (its data may be huge)."""
    def small_number(x) -> bool:
        return isinstance(x, (float, type(None), np.integer, np.floating)) or (
            isinstance(x, int) and x.bit_length() < 256)

    try:
        if isinstance(obj, (str, bytes, bytearray)):
            text = repr(obj[:limit]) + (f"... ({len(obj)} long)" if len(obj) > limit else "")
        elif isinstance(obj, np.ndarray):
            text = f"<ndarray {obj.shape} {obj.dtype}>"
        elif isinstance(obj, (list, tuple, dict, set, frozenset)) and (
                len(obj) > 8 or not all(small_number(x) for x in obj)):
            text = f"<{type(obj).__name__} of {len(obj)} items>"
        elif isinstance(obj, int) and obj.bit_length() >= 256:
            text = f"<int of {obj.bit_length()} bits>"
        else:
            text = repr(obj)
    except Exception:  # a repr that fails must not hide the real message
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Budget:
    def __init__(self, source: str, file_bytes: int, limit: int | None = None, kind: str | None = None):
        self.source = source
        self.kind = kind
        self.file_bytes = int(file_bytes)
        self.limit = size_limit(file_bytes) if limit is None else int(limit)
        self.used = 0

    def charge(self, nbytes: int, what: str) -> None:
        nbytes = max(int(nbytes), 0)
        self.used += nbytes
        if self.used > self.limit:
            raise TooLargeError(_too_large_message(self.source, what, nbytes, self.used, self.file_bytes,
                                                   self.limit, self.kind))


def _too_large_message(source: str, what: str, nbytes: int | None, used: int, file_bytes: int, limit: int,
                       kind: str | None = None) -> str:
    if nbytes is None:  # many small objects
        need = f"they would need {_fmt_bytes(used)} with everything else the file built"
    else:
        need = f"it would need {_fmt_bytes(nbytes)}" + (
            f" ({_fmt_bytes(used)} with what the file asked for before)" if used - nbytes >= 2**20 else "")
    where = f"'{source}' ({KIND_DESCRIPTIONS[kind]})" if kind else f"'{source}'"
    return (f"{where}: refused {what}: {need}, more than a "
            f"{_fmt_bytes(file_bytes)} file can hold (limit {_fmt_bytes(limit)} = {max_expansion():g} x the file "
            f"size + {SLACK_BYTES // 2**20} MiB); nothing that large was allocated. The file is corrupt or crafted "
            f"to exhaust memory: re-download or re-export it. If it is genuine, allow more with "
            f"{EXPANSION_ENV}=<factor>")


def _numel(shape) -> int:
    """Elements of an array of `shape` (an int or a sequence of ints); 0 when it is not a shape (numpy refuses)."""
    if isinstance(shape, np.ndarray):
        shape = shape.tolist() if shape.size <= _MAX_DIMS else [2**63]
    try:
        dims = [operator.index(shape)] if not isinstance(shape, (tuple, list)) else \
            [operator.index(d) for d in shape[: _MAX_DIMS + 1]]
    except TypeError:
        return 0
    if len(dims) > _MAX_DIMS:
        return 0  # numpy / torch refuse more than 64 dimensions
    n = 1
    for d in dims:
        n *= min(max(d, 0), 2**63)
    return n


def _itemsize(dtype) -> int:
    try:
        return max(int(np.dtype(dtype).itemsize), 1)
    except Exception:  # not a dtype: the constructor itself will refuse it
        return 1


def _count(obj) -> int:
    if isinstance(obj, np.ndarray):
        return int(obj.size)
    try:
        return len(obj)
    except TypeError:
        return 0


def _bytearray_bytes(args, kwargs) -> int:
    src = args[0] if args else kwargs.get("source")
    if src is None:
        return 0
    if isinstance(src, str):
        return 4 * len(src)
    if isinstance(src, np.ndarray):
        return int(src.nbytes)
    if isinstance(src, memoryview):
        return src.nbytes
    if isinstance(src, (bytes, bytearray, list, tuple, set, frozenset, dict)):
        return len(src)
    try:
        return operator.index(src)  # bytearray(n): n zero bytes
    except TypeError:
        return _count(src)


_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "latin"}
_SAFE_ENCODINGS = _LATIN1 | {"utf-8", "utf8", "ascii", "us-ascii"}


def _norm_encoding(enc) -> str:
    return enc.lower().replace("_", "-") if isinstance(enc, str) else ""


# ------------------------------------------------------------------------------------- safe unpickler
def _numpy_attr(submodule: str, name: str):
    """numpy's private reconstruct helpers live in numpy._core (numpy 2) or numpy.core (numpy 1)."""
    for pkg in ("numpy._core", "numpy.core"):
        try:
            mod = __import__(f"{pkg}.{submodule}", fromlist=[name])
        except ImportError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    return None


class _Guarded:
    """An allowed callable whose allocation is charged (`charge(budget, args, kwargs)`) before it runs."""

    def __init__(self, real, charge):
        self.real = real
        self.charge = charge


class _GuardCall:
    __slots__ = ("spec", "budget", "name")

    def __init__(self, spec: _Guarded, budget: _Budget, name: str):
        self.spec, self.budget, self.name = spec, budget, name

    def __call__(self, *args, **kwargs):
        self.spec.charge(self.budget, self.name, args, kwargs)
        args = tuple(a.spec.real if isinstance(a, _GuardCall) else a for a in args)  # _reconstruct(ndarray, ...)
        return self.spec.real(*args, **kwargs)


def _charge_ndarray(budget, name, args, kwargs):
    shape = args[0] if args else kwargs.get("shape", ())
    dtype = args[1] if len(args) > 1 else kwargs.get("dtype", float)
    budget.charge(_numel(shape) * _itemsize(dtype), f"{name}(shape={_short(shape)}, dtype={_short(dtype)})")


def _charge_reconstruct(budget, name, args, kwargs):
    if args and not (isinstance(args[0], _GuardCall) and args[0].spec.real is np.ndarray):
        detail = f"refused {name} of {_short(args[0])}: weight pickles may only rebuild plain numpy arrays"
        raise RefusedContentError(f"'{budget.source}': {detail}", detail)
    shape = args[1] if len(args) > 1 else ()
    dtype = args[2] if len(args) > 2 else "b"
    budget.charge(_numel(shape) * _itemsize(dtype), f"{name}(shape={_short(shape)}, dtype={_short(dtype)})")


def _charge_scalar(budget, name, args, kwargs):
    dtype = args[0] if args else None
    if isinstance(dtype, np.dtype):
        budget.charge(max(dtype.itemsize, 1), f"{name}(dtype={_short(dtype)})")


def _charge_frombuffer(budget, name, args, kwargs):
    shape = args[2] if len(args) > 2 else kwargs.get("shape", ())
    dtype = args[1] if len(args) > 1 else kwargs.get("dtype", float)
    budget.charge(_numel(shape) * _itemsize(dtype), f"{name}(shape={_short(shape)}, dtype={_short(dtype)})")


def _charge_bytearray(budget, name, args, kwargs):
    n = _bytearray_bytes(args, kwargs)
    budget.charge(n, f"{name}({_short(args[0]) if args else ''}) ({n} bytes)")


def _charge_encode(budget, name, args, kwargs):
    obj = args[0] if args else kwargs.get("obj")
    enc = args[1] if len(args) > 1 else kwargs.get("encoding", "utf-8")
    if not isinstance(obj, str) or _norm_encoding(enc) not in _SAFE_ENCODINGS:
        detail = (f"refused {name}({type(obj).__name__}, {_short(enc)}): weight pickles encode bytes as latin-1 "
                  "text; other codecs are not run")
        raise RefusedContentError(f"'{budget.source}': {detail}", detail)
    n = len(obj) * (1 if _norm_encoding(enc) in _LATIN1 else 4)
    budget.charge(n, f"{name} of a {len(obj)}-character string")


def _charge_container(budget, name, args, kwargs):
    n = (_count(args[0]) if args else 0) + len(kwargs)
    budget.charge(64 * n, f"{name} of {n} items")


def _build_allowlist() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): _Guarded(np.ndarray, _charge_ndarray),
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _Guarded(__import__("_codecs").encode, _charge_encode),  # protocol-2 bytes
        ("collections", "OrderedDict"): _Guarded(collections.OrderedDict, _charge_container),
    }
    for mod in ("builtins", "__builtin__"):  # __builtin__: Python 2 pickles
        allowed[(mod, "set")] = _Guarded(set, _charge_container)
        allowed[(mod, "frozenset")] = _Guarded(frozenset, _charge_container)
        allowed[(mod, "bytearray")] = _Guarded(bytearray, _charge_bytearray)
        allowed[(mod, "bytes")] = _Guarded(bytes, _charge_bytearray)  # protocol 2 writes b"" as bytes()
        allowed[(mod, "complex")] = complex
    charges = {"_reconstruct": _charge_reconstruct, "scalar": _charge_scalar, "_frombuffer": _charge_frombuffer}
    for submodule, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")):
        obj = _numpy_attr(submodule, name)
        if obj is not None:
            for pkg in ("numpy._core", "numpy.core"):
                allowed[(f"{pkg}.{submodule}", name)] = _Guarded(obj, charges[name])
    # numpy >= 1.25 pickles dtypes of some kinds through their DType classes
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType") and name != "StringDType":
                allowed[("numpy.dtypes", name)] = getattr(dtypes, name)
    return allowed


_ALLOWED = _build_allowlist()


def _input_size(file) -> int:
    try:
        pos = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(pos)
        return max(end - pos, 0)
    except (AttributeError, OSError, ValueError):
        return 0


# Memory the pickle opcodes themselves make Python build (CPython, 64-bit, rounded up): one byte of EMPTY_SET
# builds a 216-byte set, MEMOIZE a memo entry, ... Charged like any other allocation, so a file of cheap opcodes
# cannot build objects far beyond its size either. {opcode: (bytes, bytes per stack item since the last MARK)}
def _opcode_costs() -> dict[int, tuple[int, int]]:
    P = pickle
    costs: dict[bytes, tuple[int, int]] = {}
    for ops, cost in (((P.PROTO, P.FRAME, P.STOP, P.POP, P.POP_MARK, P.BUILD, P.PERSID, P.BINPERSID, P.EXT1, P.EXT2,
                        P.EXT4, P.NEXT_BUFFER, P.READONLY_BUFFER), 0),
                      ((P.NONE, P.NEWTRUE, P.NEWFALSE, P.EMPTY_TUPLE, P.BININT1, P.GET, P.BINGET, P.LONG_BINGET, P.DUP,
                        P.GLOBAL, P.STACK_GLOBAL, P.REDUCE, P.APPEND), 16),
                      ((P.BININT2, P.BININT, P.INT, P.LONG, P.LONG1, P.LONG4, P.BINFLOAT, P.FLOAT), 40),
                      ((P.STRING, P.BINSTRING, P.SHORT_BINSTRING, P.UNICODE, P.BINUNICODE, P.SHORT_BINUNICODE,
                        P.BINUNICODE8, P.BINBYTES, P.SHORT_BINBYTES, P.BINBYTES8, P.BYTEARRAY8), 64),
                      ((P.MEMOIZE, P.PUT, P.BINPUT, P.LONG_BINPUT, P.MARK, P.EMPTY_LIST, P.TUPLE1, P.TUPLE2, P.TUPLE3,
                        P.NEWOBJ, P.NEWOBJ_EX, P.INST, P.OBJ), 64),
                      ((P.EMPTY_DICT,), 72), ((P.SETITEM,), 96), ((P.EMPTY_SET,), 224)):
        for op in ops:
            costs[op] = (cost, 0)
    costs.update({P.APPENDS: (0, 9), P.LIST: (64, 9), P.TUPLE: (48, 8), P.SETITEMS: (0, 48), P.DICT: (72, 48),
                  P.ADDITEMS: (0, 64), P.FROZENSET: (224, 64)})
    return {op[0]: cost for op, cost in costs.items()}


_OPCODE_COSTS = _opcode_costs()
_OPCODE_NAMES = {op.code.encode("latin1")[0]: op.name for op in pickletools.opcodes}


def _costed_dispatch(dispatch: dict) -> dict:
    """`dispatch` with every opcode charging the objects it builds to `self.budget` before it runs."""
    out = {}
    for code, func in dispatch.items():
        cost, per_item = _OPCODE_COSTS.get(code, (64, 0))
        if not cost and not per_item:
            out[code] = func
            continue
        what = f"the Python objects its pickle opcodes build (at {_OPCODE_NAMES.get(code, code)})"

        def op(self, _func=func, _cost=cost, _per_item=per_item, _what=what):
            budget = self.budget
            budget.used += _cost + _per_item * len(self.stack)
            if budget.used > budget.limit:
                raise TooLargeError(_too_large_message(budget.source, _what, None, budget.used, budget.file_bytes,
                                                       budget.limit, budget.kind))
            _func(self)

        out[code] = op
    return out


class SafeUnpickler(pickle._Unpickler):
    """A (pure-Python) Unpickler that resolves only an allowlist of numpy/container globals, refuses everything
    else, and charges every allocation to a budget of `size_limit(input size)` before it is made."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, source: str = "<bytes>", input_bytes: int | None = None, limit: int | None = None):
        super().__init__(file, encoding="latin1")
        self.source = source
        self.input_bytes = _input_size(file) if input_bytes is None else int(input_bytes)
        self.budget = _Budget(source, self.input_bytes, limit)
        self._calls: dict[tuple[str, str], object] = {}

    def find_class(self, module: str, name: str):
        obj = _ALLOWED.get((module, name))
        if obj is None:
            detail = (f"refused to load global '{module}.{name}': weight pickles may only contain numpy arrays, "
                      "numbers, strings and containers (this file would import or call code; it was not run)")
            raise RefusedContentError(f"'{self.source}': {detail}", detail)
        if isinstance(obj, _Guarded):
            call = self._calls.get((module, name))
            if call is None:
                call = self._calls[(module, name)] = _GuardCall(obj, self.budget, f"{module}.{name}")
            return call
        return obj

    def persistent_load(self, pid):
        detail = f"refused persistent object reference {_short(pid)} (not a plain weights pickle)"
        raise RefusedContentError(f"'{self.source}': {detail}", detail)

    # the opcodes that allocate by a size the file declares, or rebuild arrays, are checked first
    def _load_build(self):
        stack = self.stack
        if len(stack) >= 2 and isinstance(stack[-2], np.ndarray):
            state = stack[-1]
            if isinstance(state, tuple) and len(state) in (4, 5):  # ([version,] shape, dtype, fortran, data)
                shape, dtype = state[-4], state[-3]
                if isinstance(dtype, np.dtype):
                    self.budget.charge(_numel(shape) * max(dtype.itemsize, 1),
                                       f"a numpy array of shape {_short(shape)} and dtype {dtype}")
        pickle._Unpickler.load_build(self)

    def _load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self.input_bytes:
            raise CheckpointError(f"'{self.source}': a bytearray declares {n} bytes, but the whole file holds "
                                  f"{self.input_bytes}: truncated or crafted")
        self.budget.charge(n, f"a bytearray of {n} bytes")
        data = self.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    def _load_ext(self):
        detail = "refused a copyreg extension code (not a plain weights pickle)"
        raise RefusedContentError(f"'{self.source}': {detail}", detail)

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _load_ext
    del _op
    dispatch = _costed_dispatch(dispatch)


def loads_pickle(data: bytes, source: str = "<bytes>", limit: int | None = None, kind: str | None = None):
    """Unpickle `data` with SafeUnpickler (allocation budget: `limit`, default size_limit(len(data)))."""
    try:
        unpickler = SafeUnpickler(io.BytesIO(data), source=source, input_bytes=len(data), limit=limit)
        unpickler.budget.kind = kind
        return unpickler.load()
    except CheckpointError:
        raise
    except Exception as e:  # EOFError (truncated), UnpicklingError (garbage), ValueError, MemoryError, ...
        raise CheckpointError(f"'{source}': cannot read pickle (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e)[:200]}") from e


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}': {e.strerror or e}") from e


def load_pickle(path: str):
    """Read a plain-pickle weights file (`.pkl`) through SafeUnpickler."""
    path = os.fspath(path)
    obj = loads_pickle(_read_bytes(path), source=path)
    check_declared_sizes(obj, path, size_limit(os.path.getsize(path)))
    return obj


# ------------------------------------------------------------------------------- torch files: dry run
class _Stub:
    """Stand-in for any global during a dry run: accepts every call / BUILD / item, imports and runs nothing."""

    _dry: _DryRun | None = None
    _qualname = "?"

    def __new__(cls, *args, **kwargs):
        dry = cls._dry
        if dry is not None:
            value = dry.on_call(cls._qualname, args, kwargs)
            if value is not None:
                return value
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def add(self, item):
        pass

    def update(self, *args, **kwargs):
        pass


class _ArrayStub(_Stub):
    """A storage or tensor in a dry run: what it declares."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, numel: int = 0, element_size: int = 1):
        self.numel, self.element_size = numel, element_size


# torch._utils rebuild functions: where their size argument is; those in _REBUILD_ALLOCATES allocate that size
# while loading (the others make views / meta tensors: check_declared_sizes bounds those after loading, by name)
_REBUILD_SIZE_ARG = {"_rebuild_tensor": 2, "_rebuild_tensor_v2": 2, "_rebuild_tensor_v3": 2, "_rebuild_qtensor": 2,
                     "_rebuild_meta_tensor_no_storage": 1, "_rebuild_wrapper_subclass": 2}
_REBUILD_ALLOCATES = {"_rebuild_qtensor"}
_CONTAINERS = {"builtins.set", "builtins.frozenset", "builtins.list", "builtins.tuple", "builtins.dict",
               "collections.OrderedDict", "collections.Counter"}


def _torch_element_size(qualname: str) -> int:
    """Bytes per element of a torch dtype / storage class named in a pickle ("torch.float32", "torch.HalfStorage")."""
    module, _, name = qualname.rpartition(".")
    if module != "torch":
        return 1
    if name in ("UntypedStorage", "ByteStorage"):
        return 1
    obj = getattr(torch, name, None)
    with warnings.catch_warnings():  # legacy storage classes warn that TypedStorage is deprecated
        warnings.simplefilter("ignore")
        dtype = obj if isinstance(obj, torch.dtype) else getattr(obj, "dtype", None) if isinstance(obj, type) else None
    if isinstance(dtype, torch.dtype):
        return max(int(getattr(dtype, "itemsize", 8)), 1)
    return 8  # an unknown name: torch's own unpickler refuses it anyway


def _element_size_of(obj) -> int:
    if isinstance(obj, _ArrayStub):
        return obj.element_size
    if isinstance(obj, type) and issubclass(obj, _Stub):
        return _torch_element_size(obj._qualname)
    if isinstance(obj, _Stub):
        return _torch_element_size(type(obj)._qualname)
    return 1


class _DryRun:
    """Shared state of the dry-run unpicklers reading one torch file."""

    def __init__(self, budget: _Budget):
        self.budget = budget
        self.storages: dict[Any, tuple[int, str]] = {}  # key -> (declared bytes, storage type)
        self.classes: dict[tuple[str, str], type] = {}

    def stub_class(self, module: str, name: str) -> type:
        cls = self.classes.get((module, name))
        if cls is None:
            cls = self.classes[(module, name)] = type("Stub", (_Stub,), {"_dry": self, "_qualname": f"{module}.{name}"})
        return cls

    def on_call(self, qualname: str, args: tuple, kwargs: dict):
        module, _, name = qualname.rpartition(".")
        if qualname in ("builtins.bytearray", "__builtin__.bytearray"):
            n = _bytearray_bytes(args, kwargs)
            self.budget.charge(n, f"{qualname}({_short(args[0]) if args else ''}) ({n} bytes)")
        elif qualname == "_codecs.encode" and args:
            enc = args[1] if len(args) > 1 else "utf-8"
            factor = 1 if _norm_encoding(enc) in _LATIN1 else 10  # unicode_escape writes up to 10 bytes a char
            n = factor * _count(args[0])
            self.budget.charge(n, f"{qualname} of a {_count(args[0])}-item {type(args[0]).__name__}")
        elif qualname in _CONTAINERS:
            n = (_count(args[0]) if args else 0) + len(kwargs)
            self.budget.charge(64 * n, f"{qualname} of {n} items")
        elif qualname == "torch.Size" and args and isinstance(args[0], (tuple, list)):
            return tuple(args[0])
        elif module == "torch._utils" and name in _REBUILD_SIZE_ARG:
            i = _REBUILD_SIZE_ARG[name]
            size = args[i] if len(args) > i else ()
            numel = _numel(size)
            elsize = _element_size_of(args[i - 1] if name in ("_rebuild_meta_tensor_no_storage",
                                                              "_rebuild_wrapper_subclass") else args[0]) \
                if args else 1
            if name in _REBUILD_ALLOCATES:
                self.budget.charge(numel * elsize, f"a tensor of size {_short(size)} ({name})")
            return _ArrayStub(numel, elsize)
        elif qualname == "torch._utils._rebuild_device_tensor_from_cpu_tensor" and len(args) > 1:
            data = args[0]
            numel = data.numel if isinstance(data, _ArrayStub) else 0
            self.budget.charge(numel * _element_size_of(args[1]), f"a tensor of {numel} elements converted to "
                               f"{_short(args[1])}")
        elif qualname == "torch._tensor._rebuild_from_type_v2" and len(args) > 2:
            func, inner = args[0], args[2]
            if isinstance(func, type) and issubclass(func, _Stub) and isinstance(inner, tuple):
                return self.on_call(func._qualname, inner, {})
        return None

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage"):
            storage_type, key, numel = pid[1], pid[2], pid[4]
            elsize = _element_size_of(storage_type)
            if isinstance(numel, int) and isinstance(key, (str, bytes, int)):
                if key not in self.storages:
                    nbytes = max(numel, 0) * elsize
                    type_name = getattr(storage_type, "_qualname", type(storage_type).__name__)
                    self.storages[key] = (nbytes, type_name)
                    self.budget.charge(nbytes, f"storage '{key}' ({numel} elements of {type_name})")
                return _ArrayStub(max(numel, 0), elsize)
        return _Stub.__new__(_Stub)


class _DryRunUnpickler(pickle._Unpickler):
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, dry: _DryRun):
        super().__init__(file, encoding="latin1")
        self.dry = dry
        self.budget = dry.budget

    def find_class(self, module: str, name: str):
        return self.dry.stub_class(module, name)

    def persistent_load(self, pid):
        return self.dry.persistent_load(pid)

    def _load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        self.dry.budget.charge(n, f"a bytearray of {n} bytes")
        self.append(bytearray(self.read(n)))

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    dispatch = _costed_dispatch(dispatch)


def _zip_members(path: str) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.infolist()
    except Exception as e:  # BadZipFile, truncated central directory, ...
        raise CheckpointError(f"cannot load checkpoint '{path}' ({KIND_DESCRIPTIONS['torch-zip']}; truncated or "
                              f"corrupt?): its zip directory cannot be read: {type(e).__name__}: {str(e)[:200]}"
                              ) from e


def _check_zip_sizes(path: str, members: list[zipfile.ZipInfo], file_bytes: int) -> int:
    """Refuse members (and a total) that would inflate beyond the budget; return the total uncompressed size."""
    limit = size_limit(file_bytes)
    fix = (f"The file is corrupt or a zip bomb; nothing was inflated. Re-download or re-export it; if it is genuine, "
           f"allow more with {EXPANSION_ENV}=<factor>")
    total = 0
    for info in members:
        total += info.file_size
        if info.file_size > limit:
            raise TooLargeError(
                f"'{path}': zip member '{info.filename}' declares {_fmt_bytes(info.file_size)} uncompressed "
                f"({_fmt_bytes(info.compress_size)} compressed), more than the {_fmt_bytes(file_bytes)} file may "
                f"inflate to (limit {_fmt_bytes(limit)} = {max_expansion():g} x the file size + "
                f"{SLACK_BYTES // 2**20} MiB). {fix}")
    if total > limit:
        largest = sorted(members, key=lambda i: -i.file_size)[:3]
        raise TooLargeError(
            f"'{path}': its {len(members)} zip members declare {_fmt_bytes(total)} uncompressed in all (largest: "
            + ", ".join(f"'{i.filename}' {_fmt_bytes(i.file_size)}" for i in largest)
            + f"), more than the {_fmt_bytes(file_bytes)} file may inflate to (limit {_fmt_bytes(limit)}). {fix}")
    return total


def _dry_run_zip(path: str, members: list[zipfile.ZipInfo], budget: _Budget) -> None:
    names = {i.filename: i for i in members}
    prefix = members[0].filename.split("/", 1)[0] if members else ""
    pkl = f"{prefix}/data.pkl"
    if pkl not in names:
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            return  # not a torch zip: torch.load says so
        prefix = pkl[: -len("data.pkl")].rstrip("/")
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(pkl)
    except Exception as e:  # bad CRC, unsupported compression, truncated member
        raise CheckpointError(f"cannot load checkpoint '{path}' ({KIND_DESCRIPTIONS['torch-zip']}; truncated or "
                              f"corrupt?): member '{pkl}' cannot be read: {type(e).__name__}: {str(e)[:200]}") from e
    dry = _DryRun(budget)
    try:
        _DryRunUnpickler(io.BytesIO(data), dry).load()
    except CheckpointError:
        raise
    except Exception as e:  # malformed: torch.load reports it
        logger.debug("dry run of '%s' stopped: %s", path, e)
    for key, (nbytes, type_name) in dry.storages.items():
        member = names.get(f"{prefix}/data/{key}")
        if member is not None and nbytes > member.file_size:
            raise CheckpointError(f"'{path}': storage '{key}' declares {nbytes} bytes ({type_name}), but its zip "
                                  f"member '{member.filename}' holds {member.file_size}: the file is corrupt or "
                                  "crafted; re-download or re-export it")


def _dry_run_legacy(path: str, budget: _Budget) -> None:
    dry = _DryRun(budget)
    try:
        with open(path, "rb") as f:
            for _ in range(4):  # magic number, protocol version, sys info, the object
                _DryRunUnpickler(f, dry).load()
    except CheckpointError:
        raise
    except Exception as e:  # malformed: torch.load reports it
        logger.debug("dry run of '%s' stopped: %s", path, e)
    declared = sum(n for n, _ in dry.storages.values())
    if declared > budget.file_bytes:
        raise TooLargeError(f"'{path}' ({KIND_DESCRIPTIONS['torch-legacy']}) declares {_fmt_bytes(declared)} of "
                            f"tensor storage in {len(dry.storages)} storages, but the whole file is "
                            f"{_fmt_bytes(budget.file_bytes)}: it is truncated, corrupt or crafted (nothing was "
                            "allocated); re-download or re-export it")


# ------------------------------------------------------------------------------------- after loading
def _join(name: str, key) -> str:
    k = key if isinstance(key, str) else str(key) if isinstance(key, (int, float, bool)) else f"<{type(key).__name__}>"
    return f"{name}/{k}" if name else k


def _arrays_in(obj) -> Iterator[tuple[str, Any]]:
    """(name, tensor or array) for every reference to one in nested dicts/lists/tuples/sets (each visited once)."""
    kinds = (torch.Tensor, np.ndarray, dict, list, tuple, set, frozenset)
    stack = [("", obj)]
    seen: set[int] = set()
    while stack:
        name, o = stack.pop()
        if isinstance(o, (torch.Tensor, np.ndarray)):
            yield name, o
            continue
        if id(o) in seen:
            continue
        seen.add(id(o))
        items = o.items() if isinstance(o, dict) else enumerate(o)
        for k, v in items:
            if isinstance(v, kinds):
                stack.append((_join(name, k), v))


def _declared_bytes(a) -> int:
    if isinstance(a, torch.Tensor):
        return int(a.numel()) * max(int(a.element_size()), 1)
    return int(a.size) * max(int(a.itemsize), 1)


def check_declared_sizes(obj, source: str, limit: int) -> None:
    """Refuse `obj` when its tensors / arrays declare more than `limit` bytes in all (views, stride-0 expansions
    and repeated references count in full: code that copies them would allocate that much)."""
    if not isinstance(obj, (dict, list, tuple, set, frozenset, torch.Tensor, np.ndarray)):
        return
    total = 0
    biggest: list[tuple[int, str, Any]] = []
    for name, a in _arrays_in(obj):
        n = _declared_bytes(a)
        total += n
        biggest.append((n, name, a))
        if len(biggest) > 64:
            biggest = sorted(biggest, key=lambda b: -b[0])[:3]
    if total <= limit:
        return
    top = sorted(biggest, key=lambda b: -b[0])[:3]
    named = ", ".join(f"'{name or '<top>'}' {tuple(a.shape)} {a.dtype} ({_fmt_bytes(n)})" for n, name, a in top)
    raise TooLargeError(f"'{source}': its tensors declare {_fmt_bytes(total)} in all (largest: {named}), more than "
                        f"the file can hold (limit {_fmt_bytes(limit)}); views or repeated references that large "
                        "would be copied in full. The file is corrupt or crafted: re-download or re-export it. If "
                        f"it is genuine, allow more with {EXPANSION_ENV}=<factor>")


def check_finite_tensors(tensors: Mapping[str, Any], source: str) -> None:
    """CheckpointError naming the floating tensors of `tensors` (name -> tensor) that hold NaN or Inf."""
    bad = []
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        if t.layout != torch.strided or t.device.type == "meta" or t.numel() == 0:
            continue
        if bool(torch.isfinite(t).all()):
            continue
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        bad.append(f"'{name}' {tuple(t.shape)}: {nan} NaN and {inf} Inf of {t.numel()} values")
    if bad:
        raise CheckpointError(
            f"'{source}' holds non-finite weights: " + "; ".join(bad[:10])
            + (f" (+{len(bad) - 10} more tensors)" if len(bad) > 10 else "")
            + ". Refused: NaN/Inf weights give AP 0 in evaluation and a NaN loss at the first training step, "
            "whatever the learning rate. The file is corrupt or was saved from a run that diverged: use an earlier "
            "checkpoint or re-download / re-convert the weights")


# ------------------------------------------------------------------------------------ reading a file
def _is_legacy_torch(head: bytes) -> bool:
    """Does `head` start with the pickle of torch's magic number (the first record of a legacy torch.save)?"""
    try:
        return SafeUnpickler(io.BytesIO(head), source="<head>", input_bytes=len(head)).load() == _TORCH_MAGIC
    except Exception:
        return False


def file_kind(path: str) -> str:
    """"torch-zip" | "torch-legacy" | "torch-tar" | "pickle" (see the module docstring), from the first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}': {e.strerror or e}") from e
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if _is_legacy_torch(head[:64]):
        return "torch-legacy"
    if head[257:262] == b"ustar":
        return "torch-tar"
    return "pickle"


def _refusal(path: str, kind: str, detail: str, how: str) -> str:
    return (f"'{path}' is {KIND_DESCRIPTIONS[kind]} that needs full unpickling (it contains Python objects, not only "
            f"tensors)" + (f": {detail}" if detail else "") + ". Refused: loading it could run code. If you trust "
            f"the file, pass trust=True (tools/convert_weights.py --trust) to load it anyway ({how})")


def _load_plain_pickle(path: str, trust: bool):
    data = _read_bytes(path)
    limit = size_limit(len(data))
    try:
        obj = loads_pickle(data, source=path, limit=limit, kind=None if path.endswith(PICKLE_EXTENSIONS) else "pickle")
    except RefusedContentError as e:
        detail = e.detail
        if not trust:
            raise RefusedContentError(_refusal(path, "pickle", detail, "with pickle.load")) from None
        logger.warning("'%s' is %s that needs full unpickling (%s); loading it with pickle.load because trust=True",
                       path, KIND_DESCRIPTIONS["pickle"], detail)
        try:
            return pickle.loads(data, encoding="latin1")
        except Exception as e2:
            raise CheckpointError(f"cannot load checkpoint '{path}' ({KIND_DESCRIPTIONS['pickle']}): unpickling it "
                                  f"with pickle.load (trust=True) failed: {type(e2).__name__}: {str(e2)[:300]}"
                                  ) from e2
    except TooLargeError:
        raise
    except CheckpointError as e:
        if path.endswith(PICKLE_EXTENSIONS):
            raise
        cause = e.__cause__
        detail = f"{type(cause).__name__}: {str(cause)[:200]}" if cause is not None else str(e)
        raise CheckpointError(f"cannot load checkpoint '{path}': it is not a torch.save file (neither a zip nor the "
                              f"legacy format) and not a readable pickle (truncated or corrupt?): {detail}") from e
    check_declared_sizes(obj, path, limit)
    return obj


def _load_torch_file(path: str, kind: str, trust: bool):
    file_bytes = os.path.getsize(path)
    limit = size_limit(file_bytes)
    if kind == "torch-zip":
        members = _zip_members(path)
        inflated = _check_zip_sizes(path, members, file_bytes)
        limit = size_limit(max(file_bytes, inflated))
        _dry_run_zip(path, members, _Budget(path, file_bytes, limit, kind))
    elif kind == "torch-legacy":
        _dry_run_legacy(path, _Budget(path, file_bytes, limit, kind))
    what = KIND_DESCRIPTIONS[kind]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only load failed" not in str(e):
            raise CheckpointError(f"cannot load checkpoint '{path}' ({what}; truncated or corrupt?): "
                                  f"{str(e)[:300]}") from e
        lines = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), "")
        if not trust:
            raise RefusedContentError(_refusal(path, kind, detail, "with torch.load(weights_only=False)")) from e
        logger.warning("'%s' is %s that needs full unpickling (%s); loading it with torch.load(weights_only=False) "
                       "because trust=True", path, what, detail or "objects other than tensors")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise CheckpointError(f"cannot load checkpoint '{path}' ({what}) with torch.load(weights_only=False) "
                                  f"(trust=True): {type(e2).__name__}: {str(e2)[:300]}") from e2
    except Exception as e:  # truncated zip, garbage, EOF
        raise CheckpointError(f"cannot load checkpoint '{path}' ({what}; truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e)[:300]}") from e
    check_declared_sizes(obj, path, limit)
    return obj


def load_checkpoint_file(path: str, trust: bool = False):
    """Load a weights file without executing code from it, within the size bounds (see the module docstring).

    torch files (zip / legacy) -> torch.load(weights_only=True); anything else -> SafeUnpickler. With
    `trust=True` a file that needs full unpickling is loaded anyway (torch.load(weights_only=False) for torch
    files, pickle.load for plain pickles): only for files you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: '{path}'")
    kind = file_kind(path)
    if kind == "pickle":
        return _load_plain_pickle(path, trust)
    return _load_torch_file(path, kind, trust)
