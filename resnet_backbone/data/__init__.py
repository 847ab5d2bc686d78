"""Datasets, transforms and loaders. Importing this package registers the built-in dataset names."""
from . import builtin  # noqa: F401  (registers built-in datasets)
from .build import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import load_coco_json, register_coco_instances
from .dataset_mapper import DatasetMapper
from .detection_utils import read_image, set_max_image_pixels
from .errors import DatasetError

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata", "register_coco_instances", "load_coco_json",
           "build_detection_train_loader", "build_detection_test_loader", "get_detection_dataset_dicts",
           "DatasetMapper", "read_image", "set_max_image_pixels", "DatasetError"]
