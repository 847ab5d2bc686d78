"""Built-in dataset names, resolved under the datasets root $RB_DATASETS (default "./datasets"), and datasets
given by path.

Registration is lazy: the environment variable is read, and the paths resolved, when a dataset (or its
json_file / image_root metadata) is used, not at import.

Datasets given by path: a DATASETS.TRAIN / DATASETS.TEST entry (or any name asked of the catalogs) that is not
a registered name and has the form

* ``path/to/instances.json:path/to/images``: a COCO instances json and the folder its ``file_name``s are
  relative to. Registered as a COCO detection dataset (COCO loader and evaluator), or, for a text model
  (MODEL.META_ARCHITECTURE "DBNet", via `register_cfg_datasets`), as a COCO-style text dataset (text loader
  and evaluator), like ``synthetic_text_*``;
* ``path/to/gts_dir:path/to/images``: an ICDAR folder pair (``gt_img_N.txt`` <-> ``img_N.jpg``), registered as a
  text dataset, like ``icdar2015_*``;

is registered on the fly under that very string (`register_path_dataset`), with its metadata: ``json_file``,
``image_root``, ``evaluator_type``, and ``thing_classes`` / ``thing_dataset_id_to_contiguous_id`` from the json's
categories (ids of any value, sorted, mapped to 0..K-1; the COCO evaluator maps predictions back to the json's
ids). How the entry is split (`parse_dataset_path`): at a ':' whose left part ends in ".json" (several such
':': the one whose left part is an existing file, else the last); otherwise at a ':' whose left part is an
existing directory (the last such), or, when none exists, whose left part contains a '/' (the first such: the
error then names that folder). Registered names always win; an entry of neither kind stays an unknown name
(KeyError listing the registered names). ``~`` is expanded; relative paths are taken from the current directory
when the entry is registered. A missing json, gt folder or image folder raises `DatasetError` naming it
(`validate_cfg` reports it as a ConfigError naming the DATASETS key, before anything is built or written).
"""
from __future__ import annotations

import hashlib
import os
import re

from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import load_coco_json
from .errors import DatasetError

__all__ = ["datasets_root", "register_builtin_coco", "BUILTIN_COCO", "parse_dataset_path", "register_path_dataset",
           "register_cfg_datasets", "path_dataset_problems", "dataset_folder_name", "text_model"]

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


# ---------------------------------------------------------------------------- datasets given by path
_PATH_KINDS: dict[str, str] = {}  # name -> "coco" / "text": the path entries this module registered


def _expand(p: str) -> str:
    return os.path.expanduser(p)


def parse_dataset_path(name) -> tuple[str, str, str] | None:
    """("json", json_file, image_root) or ("icdar", gt_dir, image_root) for a path entry, None for any other name.

    The paths are returned as written (not expanded); see the module docstring for the splitting rule."""
    if not isinstance(name, str) or ":" not in name:
        return None
    colons = [m.start() for m in re.finditer(":", name)]
    json_cuts = [i for i in colons if name[:i].lower().endswith(".json")]
    if json_cuts:
        existing = [i for i in json_cuts if os.path.isfile(_expand(name[:i]))]
        i = (existing or json_cuts)[-1]
        return "json", name[:i], name[i + 1:]
    dir_cuts = [i for i in colons if i > 0 and os.path.isdir(_expand(name[:i]))]
    if dir_cuts:
        i = dir_cuts[-1]
        return "icdar", name[:i], name[i + 1:]
    path_cuts = [i for i in colons if "/" in name[:i] or os.sep in name[:i]]
    if path_cuts:
        i = path_cuts[0]
        return "icdar", name[:i], name[i + 1:]
    return None


def path_dataset_problems(name: str) -> list[DatasetError]:
    """What is missing for the path entry `name` (empty when its files exist, or when it is not a path entry)."""
    parsed = parse_dataset_path(name)
    if parsed is None:
        return []
    form, ann, images = parsed
    syntax = ("'path/to/instances.json:path/to/images'" if form == "json"
              else "'path/to/gts_dir:path/to/images' (ICDAR gt_*.txt folder, image folder)")
    out = []
    if form == "json" and not os.path.isfile(_expand(ann)):
        what = "is a directory, not a json file" if os.path.isdir(_expand(ann)) else "does not exist"
        out.append(DatasetError(f"the annotation json of dataset entry {name!r} {what} (the entry is {syntax})",
                                file=ann, record=name, field="json_file"))
    if form == "icdar" and not os.path.isdir(_expand(ann)):
        what = "is a file, not a folder" if os.path.exists(_expand(ann)) else "does not exist"
        out.append(DatasetError(f"the ground-truth folder of dataset entry {name!r} {what} (the entry is {syntax})",
                                file=ann, record=name, field="gt_dir"))
    if not images:
        out.append(DatasetError(f"dataset entry {name!r} names no image folder after the ':' (the entry is "
                                f"{syntax})", file=name, record=name, field="image_root"))
    elif not os.path.isdir(_expand(images)):
        what = "is a file, not a folder" if os.path.exists(_expand(images)) else "does not exist"
        out.append(DatasetError(f"the image folder of dataset entry {name!r} {what} (the entry is {syntax})",
                                file=images, record=name, field="image_root"))
    return out


def _categories_reader(json_file: str, kind: str):
    """Lazy (thing_classes, id map) from the json's categories, as the loader will compute them; read once."""
    cache: dict = {}

    def read():
        if not cache:
            if kind == "coco":
                from .coco import _check_categories
                from .files import read_json

                data = read_json(json_file)
                if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
                    raise DatasetError("missing 'categories' list", file=json_file, record="<file>",
                                       field="categories")
                names = _check_categories(data["categories"], json_file)
            else:
                from .files import read_json
                from .text import _categories

                data = read_json(json_file)
                if not isinstance(data, dict):
                    raise DatasetError("expected an object with 'images' and 'annotations' lists", file=json_file,
                                       field="images")
                names = {int(c["id"]): str(c.get("name", c["id"])) for c in _categories(data, json_file)}
            ids = sorted(names)
            cache["classes"] = [names[i] for i in ids]
            cache["map"] = {cid: i for i, cid in enumerate(ids)}
        return cache

    return (lambda: read()["classes"]), (lambda: read()["map"])


def register_path_dataset(name: str, text: bool = False) -> str | None:
    """Register the path entry `name` (see the module docstring) unless it is registered already; returns its
    evaluator type ("coco" / "text"), or None when `name` is not a path entry.

    `text`: a json entry is a COCO-style text dataset (text loader and evaluator), as text models need; an
    ICDAR folder pair is always text. Raises `DatasetError` naming the missing json / folder."""
    parsed = parse_dataset_path(name)
    if parsed is None:
        return None
    form, ann, images = parsed
    kind = "text" if text or form == "icdar" else "coco"
    if name in DatasetCatalog:
        if name not in _PATH_KINDS or _PATH_KINDS[name] == kind:
            meta = MetadataCatalog.get(name, None)
            return meta.get("evaluator_type", kind) if meta is not None else kind  # registered (by us or by the user)
        DatasetCatalog.remove(name)  # registered by path for another kind of model in this process: redo
        MetadataCatalog.remove(name)
    problems = path_dataset_problems(name)
    if problems:
        raise problems[0]
    ann, images = os.path.abspath(_expand(ann)), os.path.abspath(_expand(images))
    MetadataCatalog[name] = Metadata(name=name)  # fresh (replacing an empty one made by an early get)
    if form == "icdar":
        from .text import load_icdar2015

        def load():
            MetadataCatalog.get(name).set(thing_classes=["text"], thing_dataset_id_to_contiguous_id={1: 0})
            return load_icdar2015(ann, images)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(gt_dir=ann, image_root=images, evaluator_type="text", thing_classes=["text"],
                                      thing_dataset_id_to_contiguous_id={1: 0})
    else:
        if kind == "coco":
            DatasetCatalog.register(name, lambda: load_coco_json(ann, images, name))
        else:
            from .text import load_text_json

            DatasetCatalog.register(name, lambda: load_text_json(ann, images, name))
        classes, id_map = _categories_reader(ann, kind)
        MetadataCatalog.get(name).set(json_file=ann, image_root=images, evaluator_type=kind).set_lazy(
            thing_classes=classes, thing_dataset_id_to_contiguous_id=id_map)
    _PATH_KINDS[name] = kind
    return kind


def text_model(cfg) -> bool:
    """Whether `cfg`'s model detects text (json path entries then load as text datasets)."""
    return str(cfg.MODEL.META_ARCHITECTURE) == "DBNet"


def register_cfg_datasets(cfg) -> list[str]:
    """Register every path entry of DATASETS.TRAIN / DATASETS.TEST (as text datasets for a text model); returns
    their names. Raises `DatasetError` naming the key's missing file (validate_cfg reports it earlier)."""
    out = []
    text = text_model(cfg)
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if isinstance(name, str) and (name not in DatasetCatalog or name in _PATH_KINDS) \
                    and register_path_dataset(name, text=text) is not None:
                out.append(name)
    return out


def dataset_folder_name(name: str) -> str:
    """A folder name for `name` under OUTPUT_DIR/inference: the name itself, or for a path entry the json (or gt
    folder) base name and a short hash of the entry (a path cannot be a folder name)."""
    if parse_dataset_path(name) is None and "/" not in name and os.sep not in name and name not in ("", ".", ".."):
        return name
    parsed = parse_dataset_path(name)
    base = os.path.basename(os.path.normpath(parsed[1])) if parsed else name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "dataset"
    return f"{base[:60]}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


_resolving: set = set()


def _resolve(name: str) -> bool:
    """The catalogs' hook for an unregistered name (not re-entered for the same name)."""
    if not isinstance(name, str) or name in _resolving:
        return False
    _resolving.add(name)
    try:
        return register_path_dataset(name) is not None
    finally:
        _resolving.discard(name)


type(DatasetCatalog)._resolve = staticmethod(_resolve)
