"""COCO instances json -> standard dataset dicts, with validation that names the file, record and field.

Rules (what is an error, what is repaired):

* Structure: unreadable or malformed json, a top level that is not an object, a missing or non-list
  ``images`` / ``annotations`` / ``categories`` section, and bad categories (no integer ``id``, duplicate id)
  are always errors, whatever the bad-sample policy: the file as a whole cannot be trusted.
* Images: integer ``id`` (unique), string ``file_name``, positive integer ``width``/``height``.
* Annotations: integer ``id`` (unique), ``image_id`` of an existing image, ``category_id`` of an existing
  category, ``bbox`` = 4 finite numbers [x, y, w, h] with w > 0 and h > 0, ``iscrowd`` 0/1 (default 0),
  ``ignore`` bool (optional), ``segmentation`` (optional) either a list of flat polygons (each an even-length
  list of finite numbers; polygons with fewer than 3 points are dropped, and an annotation left with none is an
  error) or an RLE dict whose ``size`` is the image's [height, width] and whose ``counts`` (a compressed string
  or a list of runs) decode to exactly height * width pixels (data/masks.py); anything else is the wrong type.
* A box of exactly zero width or height is an error, unless ``drop_zero_size_boxes`` (set for the built-in COCO
  2017 names, whose train file has two) drops it with a warning.
* Boxes outside the image: a box may overshoot the image by up to ``BOX_OVERSHOOT_TOLERANCE`` of the image side
  (at least 2 px) on each edge; it is then clipped to the image (annotation tools routinely overshoot by a
  pixel or two). A box that overshoots by more, or that is empty after clipping, is an error: such a box
  belongs to a different image size or a different coordinate convention.

With policy "error" (DATALOADER.ON_BAD_SAMPLE) the first bad record raises `DatasetError`. With "skip", a bad
image record is dropped with its annotations, a bad annotation is dropped, and the number dropped is logged
and counted (`errors.bad_sample_counts()["json"]`).

Category ids are mapped to contiguous ids 0..K-1 in sorted id order; the mapping and class names are stored in
the dataset's metadata (``thing_dataset_id_to_contiguous_id``, ``thing_classes``). Crowd annotations are kept
(``iscrowd`` = 1; the mapper leaves them out of training targets) and images without annotations are kept
(`get_detection_dataset_dicts` drops them for training when DATALOADER.FILTER_EMPTY_ANNOTATIONS).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from numbers import Real

from .catalog import DatasetCatalog, MetadataCatalog
from .errors import BadSampleGuard, DatasetError, short_repr
from .files import read_json
from .masks import check_polygons, check_rle

__all__ = ["load_coco_json", "register_coco_instances", "BOX_OVERSHOOT_TOLERANCE"]

logger = logging.getLogger(__name__)

# A box may extend past an image edge by this fraction of the image side (min 2 px) and is then clipped.
BOX_OVERSHOOT_TOLERANCE = 0.05
_MIN_OVERSHOOT_PX = 2.0


class _ZeroSizeBox(DatasetError):
    """A box with zero width or height: an error, unless the loader is told to drop such boxes."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _is_finite_num(v) -> bool:
    """A finite number that fits a float (json integers can have any number of digits)."""
    if not _is_num(v):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


_MAX_SIDE = 1 << 20  # an image side beyond a million pixels is a corrupt record, not an image


def _check_categories(cats, json_file):
    if not cats:
        raise DatasetError("'categories' is empty", file=json_file, record="<file>", field="categories")
    by_id = {}
    for i, c in enumerate(cats):
        rec = f"categories[{i}]"
        if not isinstance(c, dict):
            raise DatasetError(f"category must be an object, got {type(c).__name__}", file=json_file, record=rec,
                               field="categories")
        if not _is_int(c.get("id")):
            raise DatasetError(f"category id must be an integer, got {short_repr(c.get('id'))}", file=json_file,
                               record=rec, field="id")
        rec = f"category id={c['id']}"
        if c["id"] in by_id:
            raise DatasetError("duplicate category id", file=json_file, record=rec, field="id")
        name = c.get("name", str(c["id"]))
        if not isinstance(name, str):
            raise DatasetError(f"category name must be a string, got {short_repr(name)}", file=json_file, record=rec,
                               field="name")
        by_id[c["id"]] = name
    return by_id


def _check_image(img, i, json_file):
    """Return the image id; raise DatasetError for a bad image record."""
    if not isinstance(img, dict):
        raise DatasetError(f"image must be an object, got {type(img).__name__}", file=json_file,
                           record=f"images[{i}]", field="images")
    iid = img.get("id")
    if not _is_int(iid):
        raise DatasetError(f"image id must be an integer, got {short_repr(iid)}", file=json_file, record=f"images[{i}]",
                           field="id")
    rec = f"image id={iid}"
    if not isinstance(img.get("file_name"), str) or not img["file_name"]:
        raise DatasetError(f"file_name must be a non-empty string, got {short_repr(img.get('file_name'))}",
                           file=json_file, record=rec, field="file_name")
    for key in ("width", "height"):
        v = img.get(key)
        if not _is_int(v) or not 0 < v <= _MAX_SIDE:
            raise DatasetError(f"{key} must be a positive integer <= {_MAX_SIDE}, got {short_repr(v)}", file=json_file,
                               record=rec, field=key)
    return iid


def _check_segmentation(seg, rec, json_file, img):
    """Return the cleaned segmentation (polygons with >= 3 points, or the checked RLE dict), or None if empty.
    The rules are data/masks.py's: an RLE's size must be the image's and its counts must decode."""
    if isinstance(seg, dict):
        return check_rle(seg, img["height"], img["width"], file=json_file, record=rec)
    return check_polygons(seg, file=json_file, record=rec) or None


def _check_annotation(ann, i, images, cat_ids, json_file):
    """Return a cleaned annotation dict (bbox clipped, contiguous id not yet applied)."""
    if not isinstance(ann, dict):
        raise DatasetError(f"annotation must be an object, got {type(ann).__name__}", file=json_file,
                           record=f"annotations[{i}]", field="annotations")
    aid = ann.get("id")
    if not _is_int(aid):
        raise DatasetError(f"annotation id must be an integer, got {short_repr(aid)}", file=json_file,
                           record=f"annotations[{i}]", field="id")
    rec = f"annotation id={aid}"
    iid = ann.get("image_id")
    if not _is_int(iid) or iid not in images:
        raise DatasetError(f"image_id {short_repr(iid)} is not an image in this file", file=json_file, record=rec,
                           field="image_id")
    cid = ann.get("category_id")
    if not _is_int(cid) or cid not in cat_ids:
        raise DatasetError(f"category_id {short_repr(cid)} is not one of the categories {short_repr(sorted(cat_ids))}",
                           file=json_file, record=rec, field="category_id")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float) and not crowd.is_integer():
        raise DatasetError(f"iscrowd must be 0 or 1, got {short_repr(crowd)}", file=json_file, record=rec,
                           field="iscrowd")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
        raise DatasetError(f"bbox must be a list of 4 numbers [x, y, w, h], got {short_repr(bbox)}", file=json_file,
                           record=rec, field="bbox")
    if not all(_is_finite_num(v) for v in bbox):
        raise DatasetError(f"bbox has a non-finite value: {short_repr(bbox)}", file=json_file, record=rec, field="bbox")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise DatasetError(f"bbox width and height must be > 0, got w={w}, h={h}", file=json_file, record=rec,
                           field="bbox")
    if w == 0 or h == 0:
        raise _ZeroSizeBox(f"bbox width and height must be > 0, got w={w}, h={h} (a zero-size box)",
                           file=json_file, record=rec, field="bbox")
    img = images[iid]
    W, H = img["width"], img["height"]
    tol_x = max(_MIN_OVERSHOOT_PX, BOX_OVERSHOOT_TOLERANCE * W)
    tol_y = max(_MIN_OVERSHOOT_PX, BOX_OVERSHOOT_TOLERANCE * H)
    x1, y1 = x + w, y + h
    if x < -tol_x or y < -tol_y or x1 > W + tol_x or y1 > H + tol_y:
        raise DatasetError(f"bbox {short_repr(bbox)} (x0={x:g}, y0={y:g}, x1={x1:g}, y1={y1:g}) lies outside the "
                           f"{W}x{H} image of image id={iid} by more than the tolerance", file=json_file, record=rec,
                           field="bbox")
    cx0, cy0, cx1, cy1 = max(x, 0.0), max(y, 0.0), min(x1, float(W)), min(y1, float(H))
    if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
        raise DatasetError(f"bbox {short_repr(bbox)} is empty after clipping to the {W}x{H} image", file=json_file,
                           record=rec, field="bbox")
    out = {"id": aid, "image_id": iid, "bbox": [cx0, cy0, cx1 - cx0, cy1 - cy0], "category_id": cid,
           "iscrowd": int(crowd)}
    if "segmentation" in ann and ann["segmentation"] is not None:
        seg = _check_segmentation(ann["segmentation"], rec, json_file, img)
        if seg is not None:
            out["segmentation"] = seg
    if "ignore" in ann:
        if ann["ignore"] not in (True, False, 0, 1):
            raise DatasetError(f"ignore must be a boolean, got {short_repr(ann['ignore'])}", file=json_file, record=rec,
                               field="ignore")
        out["ignore"] = bool(ann["ignore"])
    if "area" in ann and _is_finite_num(ann["area"]):
        out["area"] = float(ann["area"])
    return out


def _validate(data, json_file, policy, drop_zero_size_boxes=False):
    """Return (categories {id: name}, images {id: record}, annotations list, number skipped)."""
    if not isinstance(data, dict):
        raise DatasetError(f"top level must be a json object, got {type(data).__name__}", file=json_file,
                           record="<file>", field="json")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"missing '{key}' section", file=json_file, record="<file>", field=key)
        if not isinstance(data[key], list):
            raise DatasetError(f"'{key}' must be a list, got {type(data[key]).__name__}", file=json_file,
                               record="<file>", field=key)
    cats = _check_categories(data["categories"], json_file)
    guard = BadSampleGuard(policy, "json")

    images: dict = {}
    for i, img in enumerate(data["images"]):
        with guard:
            iid = _check_image(img, i, json_file)
            if iid in images:
                raise DatasetError("duplicate image id", file=json_file, record=f"image id={iid}", field="id")
            images[iid] = img
    anns = []
    seen: set = set()
    for i, ann in enumerate(data["annotations"]):
        with guard:
            try:
                a = _check_annotation(ann, i, images, cats, json_file)
            except _ZeroSizeBox as e:
                if not drop_zero_size_boxes:
                    raise
                logger.warning("dropping a zero-size box (known annotation quirk): %s", e)
                continue
            if a["id"] in seen:
                raise DatasetError("duplicate annotation id", file=json_file, record=f"annotation id={a['id']}",
                                   field="id")
            seen.add(a["id"])
            anns.append(a)
    return cats, images, anns, guard.skipped


def load_coco_json(json_file, image_root, dataset_name: str | None = None, on_bad_sample: str | None = None,
                   drop_zero_size_boxes: bool = False) -> list[dict]:
    """Load a COCO instances json into standard dataset dicts (see the module docstring for the rules).

    `on_bad_sample` is "error" or "skip"; None uses the current policy (`errors.bad_sample_policy`).
    `drop_zero_size_boxes`: drop (with a warning) boxes of exactly zero width or height instead of treating them
    as errors. The built-in COCO 2017 names set it: the official instances_train2017.json has two such
    annotations (ids 918 and 2206849, height 0), which detectron2 also loads and drops.
    With `dataset_name`, the class names and the id mapping are stored in `MetadataCatalog.get(dataset_name)`.
    """
    from pycocotools.coco import COCO

    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    data = read_json(json_file)
    cats, images, anns, skipped = _validate(data, json_file, on_bad_sample, drop_zero_size_boxes)

    # The validated content goes through pycocotools' index (the same index COCOeval uses).
    coco = COCO()
    coco.dataset = {"images": list(images.values()), "annotations": anns,
                    "categories": [{"id": k, "name": v} for k, v in cats.items()]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()

    cat_ids = sorted(coco.getCatIds())
    id_map = {cid: i for i, cid in enumerate(cat_ids)}
    thing_classes = [c["name"] for c in coco.loadCats(cat_ids)]
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(thing_classes=thing_classes, thing_dataset_id_to_contiguous_id=id_map)

    records = []
    for iid in sorted(coco.getImgIds()):
        img = coco.imgs[iid]
        annos = []
        for a in coco.imgToAnns.get(iid, []):
            obj = {"id": a["id"], "bbox": list(a["bbox"]), "category_id": id_map[a["category_id"]],
                   "iscrowd": a["iscrowd"]}
            for key in ("segmentation", "ignore", "area"):
                if key in a:
                    obj[key] = a[key]
            annos.append(obj)
        records.append({"file_name": os.path.join(image_root, img["file_name"]), "image_id": iid,
                        "height": img["height"], "width": img["width"], "annotations": annos})
    n_anns = sum(len(r["annotations"]) for r in records)
    logger.info("loaded %d images, %d annotations, %d categories from %s", len(records), n_anns, len(cat_ids),
                json_file)
    if skipped:
        logger.warning("skipped %d bad records in %s (DATALOADER.ON_BAD_SAMPLE='skip')", skipped, json_file)
    return records


def register_coco_instances(name: str, metadata: dict, json_file, image_root) -> None:
    """Register a COCO-format dataset under `name`; it is loaded (and validated) when first asked for."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {short_repr(name)}")
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=os.fspath(json_file), image_root=os.fspath(image_root),
                                  evaluator_type="coco", **(metadata or {}))
