"""Datasets, transforms and loaders. Importing this package registers the built-in dataset names.

The catalog, the COCO loader and the errors are imported eagerly (they do not need torch); the loaders, the
mapper and the image reader are imported on first use, so light tools (e.g. the synthetic data generator)
start fast.
"""
import importlib

from . import builtin  # noqa: F401  (registers built-in datasets)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import load_coco_json, register_coco_instances
from .errors import DatasetError

_LAZY = {
    "build_detection_train_loader": ".build",
    "build_detection_test_loader": ".build",
    "get_detection_dataset_dicts": ".build",
    "DatasetMapper": ".dataset_mapper",
    "read_image": ".detection_utils",
    "set_max_image_pixels": ".detection_utils",
}

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata", "register_coco_instances", "load_coco_json",
           "build_detection_train_loader", "build_detection_test_loader", "get_detection_dataset_dicts",
           "DatasetMapper", "read_image", "set_max_image_pixels", "DatasetError"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
