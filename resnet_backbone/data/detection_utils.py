"""Reading images safely and turning annotations into `Instances`.

`read_image` returns an HWC uint8 numpy array in the requested channel order and converts whatever PIL can
open: EXIF orientation is applied; grayscale, palette, RGBA/LA (alpha dropped), CMYK, 16-bit and 32-bit
integer images and float images are converted to 8 bits. Every failure (missing, empty, truncated, not an
image, over the decompression-bomb limit, smaller than `MIN_IMAGE_SIDE`) raises `DatasetError` naming the file.
"""
from __future__ import annotations

import contextlib
import os
import struct
import threading
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..structures import Instances
from .errors import DatasetError

__all__ = ["read_image", "set_max_image_pixels", "get_max_image_pixels", "check_image_size",
           "annotations_to_instances", "filter_empty_instances", "polygon_to_array", "MIN_IMAGE_SIDE"]

# PIL's own default limit (about 89.5 megapixels); INPUT.MAX_IMAGE_PIXELS = 0 means this.
_PIL_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)
_max_pixels = _PIL_DEFAULT_MAX_PIXELS
# An image whose width or height is below this cannot hold an annotated object; it is rejected.
MIN_IMAGE_SIDE = 2
_PIL_LIMIT_LOCK = threading.Lock()


def set_max_image_pixels(n: int) -> None:
    """Images with more than `n` pixels are refused (decompression-bomb guard); 0 restores PIL's default.

    Also sets PIL's `Image.MAX_IMAGE_PIXELS` to `n`, so PIL's own check never fires below our limit.
    """
    global _max_pixels
    n = int(n)
    if n < 0:
        raise ValueError(f"INPUT.MAX_IMAGE_PIXELS must be >= 0, got {n}")
    _max_pixels = n if n > 0 else _PIL_DEFAULT_MAX_PIXELS
    Image.MAX_IMAGE_PIXELS = _max_pixels


def get_max_image_pixels() -> int:
    return _max_pixels


def _to_8bit(img: Image.Image, path) -> Image.Image:
    """Convert 16/32-bit integer and float images to 8-bit "L" by scaling their full range."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0):
        out = (arr.astype(np.uint32) >> 8).astype(np.uint8)
    elif img.mode in ("I", "F"):
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise DatasetError("image has non-finite pixel values", file=path, field="pixels")
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        out = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    else:
        raise DatasetError(f"unsupported image mode {img.mode}", file=path, field="mode")
    return Image.fromarray(out, mode="L")


@contextlib.contextmanager
def _pil_limit_at_least(limit: int):
    """PIL refuses, when opening, images over 2x its Image.MAX_IMAGE_PIXELS; our own check is the one that
    decides. PIL's global is raised (under a lock) only when our limit is above PIL's refusal point."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is None or limit <= 2 * pil_limit:
        yield
        return
    with _PIL_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit


def read_image(path, format: str = "BGR", max_pixels: int | None = None) -> np.ndarray:
    """Read `path` into an (H, W, 3) uint8 array in `format` ("BGR" or "RGB"), or (H, W, 1) for "L".

    `max_pixels` overrides the process-wide limit set by `set_max_image_pixels`.
    """
    if format not in ("BGR", "RGB", "L"):
        raise ValueError(f"read_image: format must be 'BGR', 'RGB' or 'L', got {format!r}")
    limit = _max_pixels if not max_pixels else int(max_pixels)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError("image file does not exist", file=path, field="file_name")
    if os.path.isdir(path):
        raise DatasetError("image path is a directory", file=path, field="file_name")
    if os.path.getsize(path) == 0:
        raise DatasetError("image file is empty (0 bytes)", file=path, field="file_name")
    try:
        with warnings.catch_warnings(), _pil_limit_at_least(limit):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > limit:
                    raise DatasetError(f"image is {w}x{h} = {w * h} pixels, over the limit of {limit} "
                                       "(INPUT.MAX_IMAGE_PIXELS; decompression-bomb guard)", file=path, field="pixels")
                if min(w, h) < MIN_IMAGE_SIDE:
                    raise DatasetError(f"image is {w}x{h}; both sides must be >= {MIN_IMAGE_SIDE} pixels",
                                       file=path, field="size")
                img.load()
                img = ImageOps.exif_transpose(img)
    except DatasetError:
        raise
    except UnidentifiedImageError as e:
        raise DatasetError("not an image (PIL cannot identify it)", file=path, field="file_name") from e
    except Image.DecompressionBombError as e:
        raise DatasetError(f"decompression-bomb guard: {e}", file=path, field="pixels") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise DatasetError(f"cannot decode image (truncated or corrupt): {e}", file=path, field="pixels") from e
    except Exception as e:  # any other decoder/EXIF failure on a hostile or broken file is still a bad image
        raise DatasetError(f"cannot decode image (truncated or corrupt): {type(e).__name__}: {e}", file=path,
                           field="pixels") from e

    mode = img.mode
    if mode in ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa", "RGBX"):
        if mode in ("P", "PA"):
            img = img.convert("RGBA")
        if format == "L":
            img = img.convert("L")
        else:
            img = img.convert("RGB")
    else:  # 16-bit / 32-bit / float
        img = _to_8bit(img, path)
        if format != "L":
            img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if format == "L":
        return np.ascontiguousarray(arr[:, :, None])
    if format == "BGR":
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


def check_image_size(record: dict, image: np.ndarray) -> None:
    """Raise DatasetError if the record's width/height differ from the image's (after EXIF rotation)."""
    h, w = image.shape[:2]
    file = record.get("file_name")
    rid = record.get("image_id")
    if "width" in record and int(record["width"]) != w:
        raise DatasetError(f"record says width {record['width']} but the image (after EXIF orientation) is "
                           f"{w}x{h} (WxH)", file=file, record=f"image_id={rid}", field="width")
    if "height" in record and int(record["height"]) != h:
        raise DatasetError(f"record says height {record['height']} but the image (after EXIF orientation) is "
                           f"{w}x{h} (WxH)", file=file, record=f"image_id={rid}", field="height")


def polygon_to_array(poly) -> np.ndarray:
    """A flat [x0, y0, x1, y1, ...] list (or an (P, 2) array) as a float32 (P, 2) array."""
    return np.asarray(poly, dtype=np.float32).reshape(-1, 2)


def _largest_polygon(polys: list[np.ndarray]) -> np.ndarray:
    def area(p):
        x, y = p[:, 0], p[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))

    return max(polys, key=area)


def annotations_to_instances(annos: list[dict], image_size: tuple[int, int]) -> Instances:
    """Annotations with "bbox" as absolute XYXY (already transformed) and contiguous "category_id" -> Instances.

    Fields: gt_boxes (N, 4) float32, gt_classes (N,) int64; gt_polygons (one (P, 2) float32 array per instance:
    the annotation's polygon, its largest one if it has several, or its box corners if it has none) when any
    annotation carries polygon "segmentation"; gt_ignore (N,) bool when any annotation has "ignore".
    """
    boxes = np.asarray([a["bbox"] for a in annos], dtype=np.float32).reshape(-1, 4)
    classes = torch.as_tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
    inst = Instances(image_size, gt_boxes=torch.as_tensor(boxes), gt_classes=classes)
    if any(isinstance(a.get("segmentation"), list) and a["segmentation"] for a in annos):
        polys = []
        for a, b in zip(annos, boxes):
            seg = a.get("segmentation")
            if isinstance(seg, list) and seg:
                arrs = [polygon_to_array(p) for p in seg]
                polys.append(arrs[0] if len(arrs) == 1 else _largest_polygon(arrs))
            else:
                x0, y0, x1, y1 = b.tolist()
                polys.append(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32))
        inst.gt_polygons = polys
    if any("ignore" in a for a in annos):
        inst.gt_ignore = torch.as_tensor([bool(a.get("ignore", False)) for a in annos], dtype=torch.bool)
    return inst


def filter_empty_instances(instances: Instances, min_size: float = 1e-5) -> Instances:
    """Drop instances whose box has width or height <= min_size."""
    if len(instances) == 0:
        return instances
    b = instances.gt_boxes
    keep = ((b[:, 2] - b[:, 0]) > min_size) & ((b[:, 3] - b[:, 1]) > min_size)
    if bool(keep.all()):
        return instances
    return instances[keep]
