"""Text-detection annotations -> standard dataset dicts with "segmentation" polygons and "ignore" flags.

Two sources:

* COCO-style json (`load_text_json`): "segmentation" = list of flat polygons per annotation (a box-only
  annotation becomes its rectangle). Don't care ("ignore": True) when the annotation has ``iscrowd`` = 1, a
  true ``ignore`` / ``illegible`` flag, ``legible`` = false (top level or inside ``attributes``), or the
  transcription ``###``.
* ICDAR-style txt (`load_icdar2015`): one ``gt_img_N.txt`` per image ``img_N.jpg`` with lines
  ``x1,y1,...,xP,yP,transcription``: ICDAR 2015 quadrilaterals or Total-Text / CTW polygons, every point kept
  (the transcription may contain commas; ``###`` = don't care; UTF-8 with or without a byte-order mark, or
  UTF-16 with one). `parse_icdar2015_txt` documents how coordinates are told from the transcription.

Records follow the project's contract: {"file_name", "image_id", "height", "width", "annotations": [{"id",
"bbox" (XYWH, the polygon's bounds), "category_id" (contiguous), "iscrowd": 0, "segmentation": [flat polygon],
"ignore": bool, "transcription"}]}. Don't-care text is kept with ``iscrowd`` = 0 and ``ignore`` = True, so
the mapper carries it into training (where it is masked out of every loss) instead of dropping it.

Polygon cleaning (`clean_polygon`): fewer than 3 points, non-finite or odd-length coordinates, coordinates
beyond +-1e7 pixels, or zero area -> rejected; self-intersecting -> repaired with shapely's make_valid when that
gives one polygon, rejected when it splits into several; partly outside the image -> clipped to the image (the
largest piece kept); entirely outside -> rejected. A rejection raises `DatasetError` naming the file, the record
and the field; with DATALOADER.ON_BAD_SAMPLE = "skip" the bad annotation is dropped and counted instead.
"""
from __future__ import annotations

import codecs
import logging
import math
import os
import re
from collections.abc import Callable

import numpy as np
from PIL import Image
from shapely.errors import GEOSException
from shapely.geometry import Polygon, box
from shapely.validation import make_valid

from .catalog import DatasetCatalog, MetadataCatalog
from .errors import BadSampleGuard, DatasetError, short_repr, shorten
from .files import read_bytes, read_json

__all__ = ["clean_polygon", "load_text_json", "parse_icdar2015_txt", "load_icdar2015", "register_text_instances",
           "register_builtin_text", "BUILTIN_TEXT", "IMAGE_EXTENSIONS"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DONT_CARE = "###"

# name -> (json file or ICDAR gt directory, image directory), relative to the datasets root. The synthetic
# sets are written by `generate_text_dataset(<root>/synthetic_text, split, ...)`
# (tools/make_synthetic_dataset.py --kind text); ICDAR 2015 is the official download, unpacked as named here.
BUILTIN_TEXT = {
    "synthetic_text_train": ("synthetic_text/train.json", "synthetic_text/train"),
    "synthetic_text_val": ("synthetic_text/val.json", "synthetic_text/val"),
    "icdar2015_train": ("icdar2015/train_gts", "icdar2015/train_images"),
    "icdar2015_test": ("icdar2015/test_gts", "icdar2015/test_images"),
}


# ---------------------------------------------------------------------------- polygons
_MAX_COORD = 1e7  # pixels; image sides are at most 2**20, so a coordinate beyond this is not one


def _polygon_parts(geom) -> list[Polygon]:
    parts = getattr(geom, "geoms", [geom])
    out = []
    for g in parts:
        if g.geom_type == "Polygon" and g.area > 0:
            out.append(g)
        elif g.geom_type == "MultiPolygon":
            out.extend(p for p in g.geoms if p.area > 0)
    return out


def clean_polygon(points, image_size: tuple[int, int] | None, *, file=None, record=None,
                  field: str = "segmentation") -> np.ndarray:
    """Validate and repair one polygon; returns a (P, 2) float32 array (P >= 3) inside the image.

    `points` is a flat [x1, y1, x2, y2, ...] list or a (P, 2) array; `image_size` is (height, width) (None
    skips clipping). Raises `DatasetError` naming `file`, `record` and `field` when it cannot be repaired.
    """
    def bad(msg):
        return DatasetError(msg, file=file, record=record, field=field)

    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as e:
        raise bad(f"polygon is not a list of numbers: {short_repr(points, 80)}") from e
    if arr.ndim == 1:
        if arr.size % 2:
            raise bad(f"polygon has an odd number of coordinates ({arr.size})")
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise bad(f"polygon must be flat [x1, y1, ...] or (P, 2), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise bad("polygon has non-finite coordinates")
    if arr.size and np.abs(arr).max() > _MAX_COORD:
        raise bad(f"polygon has a coordinate of {np.abs(arr).max():.3g}, beyond +-{_MAX_COORD:.0g} pixels: not an "
                  "image coordinate (a unit or format mix-up?)")
    # drop consecutive duplicates (incl. a closing point equal to the first)
    if len(arr) > 1:
        keep = np.any(arr != np.roll(arr, 1, axis=0), axis=1)
        arr = arr[keep] if keep.any() else arr[:1]
    if len(arr) < 3:
        raise bad(f"polygon has {len(arr)} distinct point(s); at least 3 are needed")

    try:
        return _repair_and_clip(arr, image_size, bad)
    except GEOSException as e:  # geometry the GEOS library cannot process
        raise bad(f"polygon cannot be processed ({e})") from e


def _repair_and_clip(arr: np.ndarray, image_size, bad) -> np.ndarray:
    shape = Polygon(arr)
    if not shape.is_valid:
        parts = _polygon_parts(make_valid(shape))
        if not parts:
            raise bad("polygon has zero area (its points are collinear)")
        if len(parts) > 1:
            raise bad(f"polygon is self-intersecting and splits into {len(parts)} parts; fix the point order")
        shape = parts[0]
    if shape.area <= 0:
        raise bad("polygon has zero area")

    if image_size is not None:
        h, w = float(image_size[0]), float(image_size[1])
        minx, miny, maxx, maxy = shape.bounds
        if minx < 0 or miny < 0 or maxx > w or maxy > h:
            clipped = _polygon_parts(shape.intersection(box(0.0, 0.0, w, h)))
            if not clipped:
                raise bad(f"polygon lies entirely outside the {int(w)}x{int(h)} image "
                          f"(bounds {tuple(round(v, 1) for v in shape.bounds)})")
            shape = max(clipped, key=lambda p: p.area)
    coords = np.asarray(shape.exterior.coords, dtype=np.float64)[:-1]
    return coords.astype(np.float32)


def _bbox_of(polys: list[np.ndarray]) -> list[float]:
    pts = np.concatenate(polys, axis=0)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    return bool(v)


def _is_dont_care(ann: dict) -> bool:
    attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    for src in (ann, attrs):
        if _truthy(src.get("ignore", False)) or _truthy(src.get("illegible", False)):
            return True
        if "legible" in src and not _truthy(src["legible"]):
            return True
        t = src.get("transcription", src.get("text"))
        if isinstance(t, str) and t.strip() == DONT_CARE:
            return True
    return bool(ann.get("iscrowd", 0))


# ---------------------------------------------------------------------------- COCO json
_MAX_SIDE = 1 << 20  # an image side beyond a million pixels is a corrupt record, not an image


def _name(v) -> str:
    """A value as it appears in a record name: strings and integers as they are, the rest as a repr; bounded."""
    return shorten(str(v), 60) if isinstance(v, (str, int)) else short_repr(v, 60)


def _is_id(v) -> bool:
    """Ids (of images, annotations' image_id, categories) are integers or strings."""
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _categories(data: dict, json_file: str) -> list:
    cats = data.get("categories") or [{"id": 1, "name": "text"}]
    if not isinstance(cats, list):
        raise DatasetError(f"'categories' must be a list, got {type(cats).__name__}", file=json_file,
                           field="categories")
    seen = set()
    for i, c in enumerate(cats):
        if not isinstance(c, dict):
            raise DatasetError(f"category must be an object, got {short_repr(c, 80)}", file=json_file,
                               record=f"categories[{i}]", field="categories")
        try:
            cid = int(c.get("id"))
        except (TypeError, ValueError, OverflowError) as e:
            raise DatasetError(f"a category has no integer 'id' (got {short_repr(c.get('id'), 80)})",
                               file=json_file, record=f"categories[{i}]", field="categories") from e
        if isinstance(c.get("id"), float) and not c["id"].is_integer():
            raise DatasetError(f"category id must be an integer, got {c['id']!r}", file=json_file,
                               record=f"categories[{i}]", field="categories")
        if cid in seen:
            raise DatasetError(f"duplicate category id {_name(cid)}", file=json_file, record=f"categories[{i}]",
                               field="categories")
        seen.add(cid)
    return cats


def load_text_json(json_file, image_root, dataset_name: str | None = None,
                   on_bad_sample: str | None = None) -> list[dict]:
    """Load text annotations from a COCO-style json into standard records (see the module docstring)."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    guard = BadSampleGuard(on_bad_sample, "text")
    data = read_json(json_file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations", []), list):
        raise DatasetError("expected an object with 'images' and 'annotations' lists", file=json_file,
                           field="images")
    cats = _categories(data, json_file)
    cat_ids = sorted(int(c["id"]) for c in cats)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    id_map = {cid: i for i, cid in enumerate(cat_ids)}
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(thing_classes=[names[c] for c in cat_ids],
                                              thing_dataset_id_to_contiguous_id=id_map)

    images, order = {}, []
    for i, img in enumerate(data["images"]):
        with guard:
            try:
                iid, fname = img["id"], img["file_name"]
                h, w = int(img["height"]), int(img["width"])
                if not (0 < h <= _MAX_SIDE and 0 < w <= _MAX_SIDE):
                    raise ValueError(f"height {_name(h)} / width {_name(w)} not in 1..{_MAX_SIDE}")
                if not _is_id(iid):
                    raise ValueError(f"id {short_repr(iid, 60)} is not an integer or a string")
                if not isinstance(fname, str) or not fname:
                    raise ValueError(f"file_name {short_repr(fname, 60)} is not a non-empty string")
            except (KeyError, TypeError, ValueError, OverflowError) as e:
                raise DatasetError(f"image entry needs id, file_name and positive height/width "
                                   f"({shorten(str(e), 200)})", file=json_file, record=f"images[{i}]",
                                   field="images") from None
            if iid in images:
                raise DatasetError(f"duplicate image id {_name(iid)}", file=json_file, record=f"images[{i}]",
                                   field="id")
            images[iid] = {"file_name": os.path.join(image_root, fname), "image_id": iid, "height": h, "width": w,
                           "annotations": []}
            order.append(iid)

    for i, ann in enumerate(data.get("annotations", [])):
        rec_name = (f"annotation id={_name(ann.get('id', f'#{i}'))} (image_id={_name(ann.get('image_id'))})"
                    if isinstance(ann, dict) else f"annotations[{i}]")
        with guard:
            if not isinstance(ann, dict):
                raise DatasetError("annotation is not an object", file=json_file, record=rec_name, field="annotations")
            iid = ann.get("image_id")
            rec = images.get(iid) if _is_id(iid) else None
            if rec is None:
                raise DatasetError(f"image_id {short_repr(iid, 60)} is not among the images", file=json_file,
                                   record=rec_name, field="image_id")
            cid = ann.get("category_id", cat_ids[0])
            if not _is_id(cid) or cid not in id_map:
                raise DatasetError(f"category_id {short_repr(cid, 60)} is not among the categories "
                                   f"{short_repr(cat_ids)}", file=json_file, record=rec_name, field="category_id")
            segm = ann.get("segmentation")
            if segm is None or segm == []:
                bb = ann.get("bbox")
                if not (isinstance(bb, (list, tuple)) and len(bb) == 4):
                    raise DatasetError("annotation has neither a polygon 'segmentation' nor a 'bbox'",
                                       file=json_file, record=rec_name, field="segmentation")
                try:
                    x, y, bw, bh = (float(v) for v in bb)
                except (TypeError, ValueError, OverflowError) as e:
                    raise DatasetError(f"bbox must be 4 numbers [x, y, w, h], got {short_repr(bb, 120)}",
                                       file=json_file, record=rec_name, field="bbox") from e
                segm = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
            if isinstance(segm, dict):
                raise DatasetError("RLE masks are not text polygons; give 'segmentation' as flat polygons",
                                   file=json_file, record=rec_name, field="segmentation")
            if not isinstance(segm, list) or not segm:
                raise DatasetError(f"'segmentation' must be a list of polygons, got {type(segm).__name__}",
                                   file=json_file, record=rec_name, field="segmentation")
            if all(isinstance(v, (int, float)) for v in segm):  # a single flat polygon without the outer list
                segm = [segm]
            elif all(isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(c, (int, float)) for c in v)
                     for v in segm):  # one polygon as [[x, y], ...] point pairs
                segm = [segm]
            polys = [clean_polygon(p, (rec["height"], rec["width"]), file=json_file, record=rec_name)
                     for p in segm]
        if guard.failed:
            continue
        obj = {"id": ann.get("id", i), "bbox": _bbox_of(polys), "category_id": id_map[cid], "iscrowd": 0,
               "segmentation": [p.reshape(-1).tolist() for p in polys], "ignore": _is_dont_care(ann)}
        t = ann.get("transcription", ann.get("text"))
        if isinstance(t, str):
            obj["transcription"] = t
        rec["annotations"].append(obj)

    records = [images[i] for i in order]
    logger.info("loaded %d images, %d text annotations from %s", len(records),
                sum(len(r["annotations"]) for r in records), json_file)
    return records


# ---------------------------------------------------------------------------- ICDAR 2015 txt
# A coordinate: a decimal number (sign, fraction and exponent allowed; ASCII digits only), or nan / inf /
# infinity, which look like numbers so that they are refused as coordinates instead of ending them.
_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)",
                     re.IGNORECASE)


def _is_number(field: str) -> bool:
    return _NUMBER.fullmatch(field.strip()) is not None


def _read_gt_text(gt_file: str) -> str:
    """The file's text: UTF-8 (a byte-order mark tolerated) or UTF-16 with its byte-order mark.

    Raises `DatasetError` naming the file and, for bytes that are not UTF-8, the line they are on."""
    raw = read_bytes(gt_file, "ground-truth file", "gt")
    encoding = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        before = raw[:e.start].decode(encoding, errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        line = before.count("\n") + 1
        column_field = before.rsplit("\n", 1)[-1].count(",") + 1
        raise DatasetError(f"bytes {raw[e.start:e.start + 4]!r} (field {column_field} of the line) are not "
                           f"{'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text ({e.reason}); save the file as "
                           "UTF-8", file=gt_file, record=f"line {line}", field="encoding") from e


def parse_icdar2015_txt(gt_file) -> list[dict]:
    """Parse one ICDAR-style ground-truth file into [{"points": (P, 2) float64 array (P >= 3), "transcription",
    "ignore", "line"}], keeping every point of every polygon.

    Lines are ``x1,y1,x2,y2,...,xP,yP,transcription``: ICDAR 2015 quadrilaterals (P = 4), Total-Text / CTW
    polygons (any P >= 3). The transcription may contain commas; ``###`` marks don't-care text. The file is
    UTF-8 (a byte-order mark, also at the start of a line, is tolerated) or UTF-16 with a byte-order mark;
    ``\\r\\n`` and ``\\r`` line ends are accepted; blank lines are skipped.

    How coordinates are told from the transcription: the coordinates are the longest run of leading fields
    that are numbers, cut to an even length; everything after them (joined with commas again) is the
    transcription. So:

    * ``...,x4,y4,Genaxis Theatre`` and ``...,x6,y6,###``: 4 and 6 points;
    * ``...,x4,y4,2015`` (a numeric transcription): the run has an odd length (9), so its last number is the
      transcription "2015"; likewise ``...,x4,y4,12,50 EUR`` gives 4 points and "12,50 EUR";
    * a line of numbers only, of even length (``x1,...,y4``): all of them are coordinates, the transcription
      is empty.

    What this rule cannot tell (the format has no quoting): a transcription that starts with an even number of
    comma-separated numbers (``...,y4,1,000`` or ``...,y4,3,14,pi``) gives that many more coordinates, and a
    line missing one coordinate of its last point (``x1,y1,...,y3,x4,word``) gives one point less (the stray
    ``x4`` starts the transcription). ICDAR 2015, Total-Text and CTW transcriptions are words, ``###`` or single
    numbers, which are read right; files with such transcriptions are better converted to COCO-style json,
    where the polygon and the transcription are separate fields.

    ``nan`` / ``inf`` (any case) and numbers beyond the float range count as numbers for the run and are then
    refused as coordinates. A line with fewer than 3 points (a non-number among the first 6 fields), a
    non-finite coordinate, or a file that is not UTF-8 / UTF-16 raises `DatasetError` naming the file, the
    line (record ``"line N"``) and the field (``"points"``, ``"encoding"``), with the field's position.
    """
    gt_file = os.fspath(gt_file)
    text = _read_gt_text(gt_file).replace("\r\n", "\n").replace("\r", "\n")
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip().lstrip("\ufeff").strip()
        if not line:
            continue
        fields = line.split(",")
        run = 0
        while run < len(fields) and _is_number(fields[run]):
            run += 1
        n = run - run % 2
        if n < 6:
            stop = (f"; field {run + 1} ({short_repr(fields[run].strip(), 60)}) is not a number"
                    if run < len(fields) else "")
            raise DatasetError(f"expected 'x1,y1,x2,y2,x3,y3,...,transcription' (at least 3 points), but the line "
                               f"starts with {run} number(s){stop}: {short_repr(line, 120)}", file=gt_file,
                               record=f"line {lineno}", field="points")
        coords = [float(v.strip()) for v in fields[:n]]  # the same stripping as _is_number (\x1c-\x1f too)
        for j, v in enumerate(coords):
            if not math.isfinite(v):
                raise DatasetError(f"coordinate {'xy'[j % 2]}{j // 2 + 1} (field {j + 1}) is "
                                   f"{short_repr(fields[j].strip(), 60)}: coordinates must be finite numbers",
                                   file=gt_file, record=f"line {lineno}", field="points")
        transcription = ",".join(fields[n:]).strip()
        out.append({"points": np.asarray(coords, dtype=np.float64).reshape(-1, 2), "transcription": transcription,
                    "ignore": transcription == DONT_CARE, "line": lineno})
    return out


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) as read_image will return it (EXIF rotation applied), without decoding pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001  (broken EXIF: read_image ignores it too)
                orientation = 1
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read image header ({e})", file=path, field="file_name") from e
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def load_icdar2015(gt_dir, image_root, on_bad_sample: str | None = None) -> list[dict]:
    """Records for every ``gt_<stem>.txt`` in `gt_dir` with its image ``<stem>.<ext>`` in `image_root`."""
    gt_dir, image_root = os.fspath(gt_dir), os.fspath(image_root)
    per_file, per_line = BadSampleGuard(on_bad_sample, "text"), BadSampleGuard(on_bad_sample, "text")
    if not os.path.isdir(gt_dir):
        raise DatasetError("ground-truth directory does not exist", file=gt_dir, field="gt")
    gt_files = sorted((f for f in os.listdir(gt_dir) if f.startswith("gt_") and f.endswith(".txt")), key=_natural_key)
    if not gt_files:
        raise DatasetError("no gt_*.txt files in the ground-truth directory", file=gt_dir, field="gt")
    images = {}
    if os.path.isdir(image_root):
        for f in os.listdir(image_root):
            stem, ext = os.path.splitext(f)
            if ext.lower() in IMAGE_EXTENSIONS:
                images.setdefault(stem, f)
    records, used_ids = [], set()
    for k, gt_name in enumerate(gt_files):
        stem = gt_name[3:-4]
        gt_path = os.path.join(gt_dir, gt_name)
        with per_file:
            if stem not in images:
                raise DatasetError(f"no image '{stem}.*' for this ground-truth file in {image_root}", file=gt_path,
                                   field="file_name")
            file_name = os.path.join(image_root, images[stem])
            h, w = _image_size(file_name)
            m = re.search(r"(\d+)$", stem)
            image_id = int(m.group(1)) if m and int(m.group(1)) not in used_ids else k
            annos = []
            for entry in parse_icdar2015_txt(gt_path):
                with per_line:
                    poly = clean_polygon(entry["points"], (h, w), file=gt_path, record=f"line {entry['line']}",
                                         field="points")
                if per_line.failed:
                    continue
                annos.append({"id": len(annos), "bbox": _bbox_of([poly]), "category_id": 0, "iscrowd": 0,
                              "segmentation": [poly.reshape(-1).tolist()], "ignore": entry["ignore"],
                              "transcription": entry["transcription"]})
        if per_file.failed:
            continue
        used_ids.add(image_id)
        records.append({"file_name": file_name, "image_id": image_id, "height": h, "width": w,
                        "annotations": annos})
    logger.info("loaded %d images, %d text annotations from %s", len(records),
                sum(len(r["annotations"]) for r in records), gt_dir)
    return records


# ---------------------------------------------------------------------------- registration
def _load_any(name: str, json_or_dir: str, image_root: str) -> list[dict]:
    if os.path.isdir(json_or_dir) or not json_or_dir.endswith(".json"):
        MetadataCatalog.get(name).set(thing_classes=["text"], thing_dataset_id_to_contiguous_id={1: 0})
        return load_icdar2015(json_or_dir, image_root)
    return load_text_json(json_or_dir, image_root, name)


def register_text_instances(name: str, json_or_dir, image_root, metadata: dict | None = None) -> None:
    """Register a text dataset: a COCO-style json file, or an ICDAR 2015 directory of gt_*.txt files.

    Loaded (and validated) when first asked for; evaluator_type is "text".
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {name!r}")
    json_or_dir, image_root = os.fspath(json_or_dir), os.fspath(image_root)
    DatasetCatalog.register(name, lambda: _load_any(name, json_or_dir, image_root))
    meta = MetadataCatalog.get(name).set(image_root=image_root, evaluator_type="text", **(metadata or {}))
    if os.path.isdir(json_or_dir) or not json_or_dir.endswith(".json"):
        meta.set(gt_dir=json_or_dir)
    else:
        meta.set(json_file=json_or_dir)


def register_builtin_text(datasets_root: Callable[[], str]) -> None:
    """Register BUILTIN_TEXT under the datasets root (`datasets_root()` is called at load time)."""
    for name, (json_rel, image_rel) in BUILTIN_TEXT.items():
        if name in DatasetCatalog:
            continue

        def json_file(rel=json_rel):
            return os.path.join(datasets_root(), rel)

        def image_root(rel=image_rel):
            return os.path.join(datasets_root(), rel)

        DatasetCatalog.register(name, lambda n=name, j=json_file, i=image_root: _load_any(n, j(), i()))
        meta = MetadataCatalog.get(name).set(evaluator_type="text").set_lazy(image_root=image_root)
        if json_rel.endswith(".json"):
            meta.set_lazy(json_file=json_file)
        else:
            meta.set_lazy(gt_dir=json_file)
