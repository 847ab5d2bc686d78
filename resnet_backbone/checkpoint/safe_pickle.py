"""Reading weight files without running code from them.

- `.pkl` / `.pickle` (detectron2 model zoo, Detectron/Caffe2 MSRA weights): `load_pickle(path)` uses a
  restricted Unpickler that builds only numbers, strings, bytes, containers (list/tuple/dict/set,
  OrderedDict) and numpy arrays / dtypes / scalars. Any other global a pickle names (os.system,
  builtins.eval, torch._utils..., a class) is refused before it is imported or called, with a
  CheckpointError naming the file and the global.
- anything else (`.pth`, `.pt`, ...): `torch.load(weights_only=True)`. A file that needs full unpickling
  (arbitrary objects) is refused unless the caller passes `trust=True`, an explicit statement that the
  file comes from a trusted source.
- truncated or corrupt files: CheckpointError naming the file.

`load_checkpoint_file(path, trust=False)` picks the reader by extension (and falls back to the safe pickle
reader for a plain pickle that is not a torch file).
"""
from __future__ import annotations

import collections
import io
import os
import pickle

import numpy as np
import torch

from . import CheckpointError

__all__ = ["SafeUnpickler", "load_pickle", "loads_pickle", "load_checkpoint_file", "PICKLE_EXTENSIONS"]

PICKLE_EXTENSIONS = (".pkl", ".pickle")


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


def _build_allowlist() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("_codecs").encode,  # how protocol-2 pickles spell bytes
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("__builtin__", "set"): set,  # Python 2 pickles
        ("__builtin__", "frozenset"): frozenset,
        ("__builtin__", "bytearray"): bytearray,
        ("__builtin__", "complex"): complex,
    }
    for submodule, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")):
        obj = _numpy_attr(submodule, name)
        if obj is not None:
            for pkg in ("numpy._core", "numpy.core"):
                allowed[(f"{pkg}.{submodule}", name)] = obj
    # numpy >= 1.25 pickles dtypes of some kinds through their DType classes
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType") and name != "StringDType":
                allowed[("numpy.dtypes", name)] = getattr(dtypes, name)
    return allowed


_ALLOWED = _build_allowlist()


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only an allowlist of numpy/container globals and refuses everything else."""

    def __init__(self, file, *, source: str = "<bytes>"):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str):
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise CheckpointError(
                f"'{self.source}': refused to load global '{module}.{name}': weight pickles may only contain "
                "numpy arrays, numbers, strings and containers (this file would import or call code; it was "
                "not run)")
        return obj

    def persistent_load(self, pid):
        raise CheckpointError(f"'{self.source}': refused persistent object reference {pid!r} (not a plain "
                              "weights pickle)")


def loads_pickle(data: bytes, source: str = "<bytes>"):
    """Unpickle `data` with SafeUnpickler."""
    try:
        return SafeUnpickler(io.BytesIO(data), source=source).load()
    except CheckpointError:
        raise
    except Exception as e:  # EOFError (truncated), UnpicklingError (garbage), ValueError, ...
        raise CheckpointError(f"'{source}': cannot read pickle (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e)[:200]}") from e


def load_pickle(path: str):
    """Read a `.pkl` weights file through SafeUnpickler."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}': {e.strerror or e}") from e
    return loads_pickle(data, source=path)


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_checkpoint_file(path: str, trust: bool = False):
    """Load a weights file without executing code from it (see the module docstring).

    `.pkl`/`.pickle` -> SafeUnpickler; others -> torch.load(weights_only=True); with `trust=True` a torch
    file that needs full unpickling is loaded with weights_only=False (only for files you trust).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: '{path}'")
    if path.endswith(PICKLE_EXTENSIONS) and not _is_zip(path):  # a torch zip file named .pkl goes to torch.load
        return load_pickle(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            if not _is_zip(path):
                # maybe a plain (non-torch) pickle of numpy arrays saved under another extension
                try:
                    return load_pickle(path)
                except CheckpointError:
                    pass
            if trust:
                try:
                    return torch.load(path, map_location="cpu", weights_only=False)
                except Exception as e2:
                    raise CheckpointError(f"cannot load checkpoint '{path}': {type(e2).__name__}: "
                                          f"{str(e2)[:300]}") from e2
            lines = str(e).strip().splitlines()
            detail = next((ln.strip() for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), "")
            raise CheckpointError(
                f"'{path}' needs full unpickling (it contains Python objects, not only tensors)"
                + (f": {detail}" if detail else "")
                + ". Refused: loading it could run code. If you trust the file, pass trust=True "
                "(tools/convert_weights.py --trust) to load it anyway.") from e
        raise CheckpointError(f"cannot load checkpoint '{path}' (truncated or corrupt?): {str(e)[:300]}") from e
    except Exception as e:  # truncated zip, garbage bytes, EOF
        if not _is_zip(path):
            try:
                return load_pickle(path)
            except CheckpointError as pe:
                if "refused" in str(pe):
                    raise
        raise CheckpointError(f"cannot load checkpoint '{path}' (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e)[:300]}") from e
