"""DBNet training targets from text polygons.

For each image DBNet learns two maps at input resolution:

* the probability map: 1 inside every text polygon *shrunk* by the Vatti clipping offset
  D = A (1 - r^2) / L (A area, L perimeter, r = shrink ratio), 0 elsewhere, with a mask that is 0 on
  "don't care" regions (illegible / ``###`` text, polygons too small to learn from);
* the threshold map: inside each polygon *dilated* by the same D, 1 - (distance to the polygon border / D),
  clipped to [0, 1] and rescaled to [thresh_min, thresh_max], so it peaks at thresh_max on the border and
  decays both inward and outward; its mask is the union of the dilated polygons, minus don't-care regions.

Pixel convention: pixel (row i, column j) covers [j, j+1) x [i, i+1) in polygon coordinates; its centre is
(j + 0.5, i + 0.5). Polygons are rasterised at sub-pixel precision (cv2.fillPoly with a fixed-point shift);
OpenCV fills boundary pixels too, so a pixel is filled when its square touches the polygon (a filled region
is at most one pixel wider than the polygon, as with the reference DBNet's integer rasterisation).
Distances for the threshold map are measured from pixel centres to the polygon's edges.
"""
from __future__ import annotations

import cv2
import numpy as np
import pyclipper

__all__ = ["shrink_offset", "offset_polygon", "fill_polygons", "make_db_targets", "polygon_area", "polygon_perimeter"]

_SHIFT = 8  # fixed-point bits for cv2.fillPoly (1/256 pixel)
_CLIPPER_SCALE = 256.0  # pyclipper works on integers: offset at 1/256 pixel precision


def polygon_area(poly: np.ndarray) -> float:
    """Unsigned shoelace area of a (P, 2) polygon."""
    x, y = poly[:, 0].astype(np.float64), poly[:, 1].astype(np.float64)
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def polygon_perimeter(poly: np.ndarray) -> float:
    p = poly.astype(np.float64)
    return float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())


def shrink_offset(poly: np.ndarray, ratio: float) -> float:
    """The Vatti clipping offset D = A (1 - r^2) / L of DBNet (Liao et al., 2020, eq. 5)."""
    length = polygon_perimeter(poly)
    if length <= 0:
        return 0.0
    return polygon_area(poly) * (1.0 - ratio * ratio) / length


def offset_polygon(poly: np.ndarray, distance: float) -> list[np.ndarray]:
    """Offset `poly` by `distance` pixels (> 0 dilates, < 0 shrinks) with round joins (pyclipper).

    Returns the resulting polygons as float (P, 2) arrays; an empty list when a shrink swallows the polygon.
    """
    pco = pyclipper.PyclipperOffset()
    path = np.round(np.asarray(poly, dtype=np.float64) * _CLIPPER_SCALE).astype(np.int64)
    pco.AddPath(path.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    # ArcTolerance is in clipper units: keep round joins within 1/16 pixel of a true arc.
    pco.ArcTolerance = _CLIPPER_SCALE / 16.0
    out = pco.Execute(distance * _CLIPPER_SCALE)
    return [np.asarray(p, dtype=np.float64) / _CLIPPER_SCALE for p in out if len(p) >= 3]


def fill_polygons(canvas: np.ndarray, polygons: list[np.ndarray], value: float) -> np.ndarray:
    """Set to `value` every pixel of `canvas` whose centre lies inside one of `polygons` (in place)."""
    if not polygons:
        return canvas
    pts = [np.round((np.asarray(p, dtype=np.float64) - 0.5) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
           for p in polygons]
    cv2.fillPoly(canvas, pts, value, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas


def _distance_to_border(poly: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Euclidean distance from points (xs, ys) (broadcastable arrays) to the closed polyline `poly`.

    Vectorised over the points; the loop is over the polygon's edges only.
    """
    best = np.full(np.broadcast(xs, ys).shape, np.inf, dtype=np.float64)
    n = len(poly)
    for k in range(n):
        ax, ay = poly[k]
        bx, by = poly[(k + 1) % n]
        dx, dy = bx - ax, by - ay
        seg2 = dx * dx + dy * dy
        if seg2 <= 0:
            d = np.hypot(xs - ax, ys - ay)
        else:
            t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / seg2, 0.0, 1.0)
            d = np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
        np.minimum(best, d, out=best)
    return best


def make_db_targets(
    polygons: list[np.ndarray],
    ignore: list[bool] | np.ndarray | None,
    image_size: tuple[int, int],
    *,
    shrink_ratio: float = 0.4,
    thresh_min: float = 0.3,
    thresh_max: float = 0.7,
    min_text_size: float = 1.0,
    valid_size: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Probability/threshold maps and their loss masks for one image.

    Args:
        polygons: list of (P, 2) float arrays, xy in pixel coordinates of the (padded) input image.
        ignore: per polygon, True for "don't care" text; it is zeroed in every mask.
        image_size: (H, W) of the maps.
        shrink_ratio: r in D = A (1 - r^2) / L.
        thresh_min, thresh_max: range the threshold map is rescaled to.
        min_text_size: a polygon whose shorter bounding-box side is below this is treated as don't care.
        valid_size: (h, w) of the real image inside a padded canvas; pixels outside are masked out.

    Returns:
        dict of float32 (H, W) arrays: "prob_map", "prob_mask", "thresh_map", "thresh_mask".
    """
    h, w = int(image_size[0]), int(image_size[1])
    prob_map = np.zeros((h, w), np.float32)
    prob_mask = np.ones((h, w), np.float32)
    thresh_canvas = np.zeros((h, w), np.float64)  # 1 - normalised distance, before rescaling
    thresh_mask = np.zeros((h, w), np.float32)
    if ignore is None:
        ignore = [False] * len(polygons)
    if len(ignore) != len(polygons):
        raise ValueError(f"make_db_targets: {len(polygons)} polygons but {len(ignore)} ignore flags")

    dont_care: list[np.ndarray] = []
    for poly, ign in zip(polygons, ignore):
        poly = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(poly) < 3:
            continue
        extent = poly.max(axis=0) - poly.min(axis=0)
        area = polygon_area(poly)
        if ign or min(extent) < min_text_size or area < 1e-6:
            dont_care.append(poly)
            continue
        distance = shrink_offset(poly, shrink_ratio)
        shrunk = offset_polygon(poly, -distance)
        if not shrunk:
            dont_care.append(poly)
            continue
        fill_polygons(prob_map, shrunk, 1.0)

        # Threshold map: inside the dilated polygon, 1 - dist/D (clipped), max over polygons.
        dilated = offset_polygon(poly, distance)
        if not dilated or distance <= 0:
            continue
        # Work in the dilated polygon's bounding box (clipped to the canvas), not the whole image.
        pts = np.concatenate(dilated, axis=0)
        c0, r0 = np.maximum(np.floor(pts.min(axis=0)).astype(int) - 1, 0)
        c1, r1 = np.minimum(np.ceil(pts.max(axis=0)).astype(int) + 2, [w, h])
        if c1 <= c0 or r1 <= r0:
            continue
        region = np.zeros((r1 - r0, c1 - c0), np.uint8)
        fill_polygons(region, [d - [c0, r0] for d in dilated], 1)
        inside = region.astype(bool)
        if not inside.any():
            continue
        thresh_mask[r0:r1, c0:c1][inside] = 1.0
        ys = (np.arange(r0, r1, dtype=np.float64) + 0.5)[:, None]
        xs = (np.arange(c0, c1, dtype=np.float64) + 0.5)[None, :]
        closeness = 1.0 - np.clip(_distance_to_border(poly, xs, ys) / distance, 0.0, 1.0)
        crop = thresh_canvas[r0:r1, c0:c1]
        np.maximum(crop, np.where(inside, closeness, 0.0), out=crop)

    thresh_map = (thresh_canvas * (thresh_max - thresh_min) + thresh_min).astype(np.float32)

    # Don't-care regions are excluded from every loss.
    if dont_care:
        fill_polygons(prob_mask, dont_care, 0.0)
        fill_polygons(thresh_mask, dont_care, 0.0)
        fill_polygons(prob_map, dont_care, 0.0)
    if valid_size is not None:
        vh, vw = int(valid_size[0]), int(valid_size[1])
        for m in (prob_mask, thresh_mask):
            m[vh:, :] = 0.0
            m[:, vw:] = 0.0
    return {"prob_map": prob_map, "prob_mask": prob_mask, "thresh_map": thresh_map, "thresh_mask": thresh_mask}
