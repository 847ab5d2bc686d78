"""COCO instance segmentations (polygons, RLE) checked and turned into masks with pycocotools.

A COCO "segmentation" is either a list of flat polygons [x0, y0, x1, y1, ...] in continuous pixel coordinates
(pixel (i, j) spans [j, j + 1] x [i, i + 1]; one instance may have several polygons, their union is the mask) or
a run-length encoding {"size": [height, width], "counts": ...} in column-major order, runs alternating 0 / 1
starting with 0: "counts" a list of integers (uncompressed) or COCO's compressed string. Both are rasterised by
pycocotools.mask (frPyObjects / merge / decode), the rasteriser COCOeval uses, so training targets and evaluation
see the same pixels.

Checks (each a `DatasetError` naming file, record and the field "segmentation"): a polygon must be a flat list of
finite numbers of even length; polygons with fewer than 3 points are dropped, and an annotation none of whose
polygons has 3 points is an error; an RLE needs "size" = [height, width] equal to the image's and "counts" that
decode to non-negative runs covering exactly height * width pixels (pycocotools' decoder does not check this and
writes past its buffer on a bad RLE, so it is checked here first).
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .errors import DatasetError, short_repr

__all__ = ["check_polygons", "check_rle", "rle_counts", "polygons_to_mask", "rle_to_mask", "segmentation_to_mask"]

_FIELD = "segmentation"
_MAX_RUN = (1 << 32) - 1  # pycocotools stores runs as 32-bit unsigned integers


def _finite(v) -> bool:
    if not isinstance(v, Real) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check_polygons(seg, *, file=None, record=None) -> list[list[float]]:
    """A list of flat polygons -> the polygons with >= 3 points, as float lists ([] for an empty list)."""
    if not isinstance(seg, list):
        raise DatasetError(f"segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}",
                           file=file, record=record, field=_FIELD)
    polys = []
    for j, p in enumerate(seg):
        if isinstance(p, np.ndarray):
            p = p.reshape(-1).tolist()
        if not isinstance(p, (list, tuple)):
            raise DatasetError(f"segmentation[{j}] must be a flat list [x0, y0, x1, y1, ...], got "
                               f"{type(p).__name__}", file=file, record=record, field=_FIELD)
        if not all(_finite(v) for v in p):
            raise DatasetError(f"segmentation[{j}] must contain only finite numbers", file=file, record=record,
                               field=_FIELD)
        if len(p) % 2:
            raise DatasetError(f"segmentation[{j}] has an odd number of coordinates ({len(p)})", file=file,
                               record=record, field=_FIELD)
        if len(p) >= 6:
            polys.append([float(v) for v in p])
    if seg and not polys:
        raise DatasetError(f"no polygon of the segmentation has 3 points or more ({short_repr(seg)}): not a valid "
                           "polygon", file=file, record=record, field=_FIELD)
    return polys


def _parse_rle_string(s: bytes) -> list[int]:
    """COCO's compressed RLE string (maskApi.c rleToString: 5 bits a character, offset 48, 0x20 = more, 0x10 =
    sign on the last character, runs from the fourth on stored as the difference to the run two before)."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("the string ends inside a run")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(s[p])!r} at {p} is not an RLE character ('0' .. 'o')")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_counts(counts, *, file=None, record=None) -> list[int]:
    """The runs of an RLE's "counts" (a list of integers or a compressed str / bytes)."""
    if isinstance(counts, (str, bytes)):
        try:
            raw = counts.encode("ascii") if isinstance(counts, str) else counts
            return _parse_rle_string(raw)
        except (UnicodeEncodeError, ValueError) as e:
            reason = "not ASCII" if isinstance(e, UnicodeEncodeError) else str(e)
            raise DatasetError(f"RLE 'counts' string does not decode: {reason}", file=file, record=record,
                               field=_FIELD) from None
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise DatasetError(f"RLE 'counts' list must hold integers, got {short_repr(counts)}", file=file,
                               record=record, field=_FIELD)
        return list(counts)
    raise DatasetError(f"RLE 'counts' must be a string or a list, got {type(counts).__name__}", file=file,
                       record=record, field=_FIELD)


def check_rle(seg, height: int | None = None, width: int | None = None, *, file=None, record=None) -> dict:
    """Check an RLE dict against the image's (height, width) (when given) and return it unchanged."""
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise DatasetError("RLE segmentation needs 'counts' and 'size'", file=file, record=record, field=_FIELD)
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size)):
        raise DatasetError(f"RLE 'size' must be [height, width], got {short_repr(size)}", file=file, record=record,
                           field=_FIELD)
    h, w = size
    if height is not None and width is not None and (h, w) != (int(height), int(width)):
        raise DatasetError(f"RLE 'size' is [{h}, {w}] but the image is {int(height)}x{int(width)} (height x width)",
                           file=file, record=record, field=_FIELD)
    runs = rle_counts(seg["counts"], file=file, record=record)
    if any(r < 0 or r > _MAX_RUN for r in runs):
        raise DatasetError("RLE 'counts' has a negative (or over 32-bit) run", file=file, record=record, field=_FIELD)
    if sum(runs) != h * w:
        raise DatasetError(f"RLE 'counts' cover {sum(runs)} pixels, 'size' [{h}, {w}] has {h * w}", file=file,
                           record=record, field=_FIELD)
    return seg


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
    """Flat polygons (each >= 3 points) -> (height, width) uint8 0/1 mask, their union (pycocotools)."""
    from pycocotools import mask as mask_util

    polys = [np.asarray(p, dtype=np.float64).reshape(-1) for p in polygons]
    if not polys:
        return np.zeros((height, width), np.uint8)
    rle = mask_util.merge(mask_util.frPyObjects([p.tolist() for p in polys], int(height), int(width)))
    return np.ascontiguousarray(mask_util.decode(rle), dtype=np.uint8)


def rle_to_mask(seg: dict) -> np.ndarray:
    """A checked RLE dict (str / bytes or list counts) -> (height, width) uint8 0/1 mask (pycocotools)."""
    from pycocotools import mask as mask_util

    h, w = (int(v) for v in seg["size"])
    counts = seg["counts"]
    if isinstance(counts, list):  # uncompressed: pycocotools compresses it first
        rle = mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return np.ascontiguousarray(mask_util.decode(rle), dtype=np.uint8)


def segmentation_to_mask(seg, height: int, width: int, *, file=None, record=None) -> np.ndarray:
    """A COCO segmentation (polygons or RLE), checked, -> (height, width) uint8 0/1 mask."""
    if isinstance(seg, dict):
        return rle_to_mask(check_rle(seg, height, width, file=file, record=record))
    return polygons_to_mask(check_polygons(seg, file=file, record=record), height, width)
