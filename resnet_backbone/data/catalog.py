"""DatasetCatalog (name -> function returning dataset dicts) and MetadataCatalog (name -> Metadata).

Same semantics as detectron2's catalogs: a dataset is registered by name with a zero-argument function that
returns a list of standard dataset dicts, and is only loaded when asked for; metadata is a per-name object
with attributes (thing_classes, thing_dataset_id_to_contiguous_id, json_file, image_root, evaluator_type, ...).
"""
from __future__ import annotations

from collections import UserDict
from typing import Any, Callable

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata"]


class _DatasetCatalog(UserDict):
    #: called with an unregistered name; registers it and returns True when it is a dataset given by path
    #: ("instances.json:image_dir", see builtin.register_path_dataset), returns False otherwise
    _resolve: Callable[[str], bool] | None = None

    def register(self, name: str, func: Callable[[], list]) -> None:
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', ...): expected a callable, got {type(func)}")
        if name in self:
            raise KeyError(f"dataset '{name}' is already registered")
        self[name] = func

    def get(self, name: str) -> list[dict]:
        if name not in self and type(self)._resolve is not None:
            type(self)._resolve(name)  # a path entry: registered now (DatasetError when a file is missing)
        try:
            func = self[name]
        except KeyError as e:
            raise KeyError(f"dataset '{name}' is not registered; available: {', '.join(sorted(self)) or 'none'} "
                           "(or give a COCO json and its images as 'path/to/instances.json:path/to/images', or an "
                           "ICDAR folder pair 'path/to/gts_dir:path/to/images')") from e
        return func()

    def list(self) -> list[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __repr__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.keys())})"

    __str__ = __repr__


DatasetCatalog = _DatasetCatalog()


class _Lazy:
    """A metadata value computed when read (e.g. a path under an environment variable read at load time)."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn


class Metadata:
    """Attributes of one dataset. Setting an attribute again to a different value is an error (as in detectron2),
    so two pieces of code cannot silently disagree about, e.g., the class list."""

    def __init__(self, name: str = "", **kwargs: Any):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "name", name)
        self.set(**kwargs)

    def __getattr__(self, key: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if key in values:
            v = values[key]
            return v.fn() if isinstance(v, _Lazy) else v
        raise AttributeError(f"metadata of dataset '{self.name}' has no attribute '{key}'; "
                             f"available: {list(values)}")

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "name":
            raise AttributeError("Metadata.name cannot be changed")
        values = self._values
        if key in values and not isinstance(values[key], _Lazy):
            old = values[key]
            if old != value:
                raise ValueError(f"metadata '{key}' of dataset '{self.name}' is already {old!r}; "
                                 f"refusing to change it to {value!r}")
            return
        values[key] = value

    def set(self, **kwargs: Any) -> Metadata:
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def set_lazy(self, **fns: Callable[[], Any]) -> Metadata:
        """Attributes whose value is computed by calling the function each time they are read."""
        for k, fn in fns.items():
            self._values[k] = _Lazy(fn)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            return default

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: getattr(self, k) for k in self._values}}

    def __repr__(self) -> str:
        return f"Metadata({self.as_dict()!r})"


_MISSING = object()


class _MetadataCatalog(UserDict):
    def get(self, name: str, default=_MISSING) -> Metadata:
        """The metadata of `name`, created empty on first use (with `default` given: that, if none exists)."""
        if name not in self and isinstance(name, str) and _DatasetCatalog._resolve is not None:
            try:
                _DatasetCatalog._resolve(name)  # a path entry registers its metadata too
            except ValueError:  # a path entry with a missing file: DatasetCatalog.get(name) says which
                pass
        if name not in self:
            if default is not _MISSING:
                return default
            self[name] = Metadata(name=name)
        return self[name]

    def list(self) -> list[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)


MetadataCatalog = _MetadataCatalog()
