"""Built-in dataset names, resolved under the datasets root $RB_DATASETS (default "./datasets").

Registration is lazy: the environment variable is read, and the paths resolved, when a dataset (or its
json_file / image_root metadata) is used, not at import.
"""
from __future__ import annotations

import os

from .catalog import DatasetCatalog, MetadataCatalog
from .coco import load_coco_json

__all__ = ["datasets_root", "register_builtin_coco", "BUILTIN_COCO"]

# name -> (json file, image directory), relative to the datasets root
BUILTIN_COCO = {
    "coco_2017_train": ("coco/annotations/instances_train2017.json", "coco/train2017"),
    "coco_2017_val": ("coco/annotations/instances_val2017.json", "coco/val2017"),
    "synthetic_shapes_train": ("synthetic_shapes/train.json", "synthetic_shapes/train"),
    "synthetic_shapes_val": ("synthetic_shapes/val.json", "synthetic_shapes/val"),
}


def datasets_root() -> str:
    return os.path.expanduser(os.environ.get("RB_DATASETS", "./datasets"))


def register_builtin_coco(name: str, json_rel: str, image_rel: str, drop_zero_size_boxes: bool = False) -> None:
    """Register a COCO-format dataset whose files live under the datasets root (looked up at load time)."""

    def json_file():
        return os.path.join(datasets_root(), json_rel)

    def image_root():
        return os.path.join(datasets_root(), image_rel)

    DatasetCatalog.register(name, lambda: load_coco_json(json_file(), image_root(), name,
                                                         drop_zero_size_boxes=drop_zero_size_boxes))
    MetadataCatalog.get(name).set(evaluator_type="coco").set_lazy(json_file=json_file, image_root=image_root)


def _register_all() -> None:
    for name, (j, i) in BUILTIN_COCO.items():
        if name not in DatasetCatalog:
            # the official COCO 2017 train file has two zero-height boxes (annotation ids 918, 2206849)
            register_builtin_coco(name, j, i, drop_zero_size_boxes=name.startswith("coco_"))
    from .text import register_builtin_text  # synthetic_text_train / _val (evaluator_type "text")

    register_builtin_text(datasets_root)


_register_all()
