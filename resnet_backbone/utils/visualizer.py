"""On an RGB image (PIL drawing): `draw_detections` (boxes or polygons with "name 0.93" labels, instance masks
as a translucent class-coloured fill with an outline) and `draw_ground_truth` (annotations: boxes or text
polygons with class names, masks as for detections; crowd boxes and don't-care text dashed in grey)."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_detections", "draw_ground_truth", "class_color", "IGNORED_COLOR", "MASK_ALPHA"]

#: the colour of crowd boxes and don't-care text (drawn dashed, whatever their class)
IGNORED_COLOR = (150, 150, 150)
#: the opacity of a mask's fill (its outline is opaque)
MASK_ALPHA = 0.45


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per class id (golden-ratio hue steps)."""
    h = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no scalable default font
        return ImageFont.load_default()


def _to_numpy(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_rgb_uint8(image_rgb, who: str) -> np.ndarray:
    img = np.asarray(image_rgb)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"{who}: expected an HxWx3 RGB image, got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def _check_masks(masks, n: int, h: int, w: int, who: str):
    """(N, H, W) masks (tensor or array, bool or 0/1; None entries allowed in a list) -> list of bool arrays or
    None, checked against the N instances and the image size."""
    if masks is None:
        return None
    if hasattr(masks, "detach") or isinstance(masks, np.ndarray):
        masks = list(_to_numpy(masks))
    if len(masks) != n:
        raise ValueError(f"{who}: {len(masks)} masks for {n} instances")
    out = []
    for m in masks:
        m = None if m is None else _to_numpy(m).astype(bool)
        if m is not None and m.shape != (h, w):
            raise ValueError(f"{who}: a mask of shape {m.shape} on an image of {h}x{w}")
        out.append(m)
    return out


def _outline(m: np.ndarray, width: int) -> np.ndarray:
    """The pixels of `m` within `width` pixels of its border (4-neighbour erosion, `width` times)."""
    inner = m.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return m & ~inner


def _paint_masks(img: np.ndarray, items, line_w: int) -> np.ndarray:
    """`items`: (mask, colour) pairs, painted in order on a copy of `img`: the fill blended at MASK_ALPHA, then
    the outline opaque."""
    out = img.astype(np.float32)
    for m, color in items:
        if m is None or not m.any():
            continue
        c = np.asarray(color, np.float32)
        out[m] = out[m] * (1.0 - MASK_ALPHA) + c * MASK_ALPHA
        out[_outline(m, line_w)] = c
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _line_width(h: int, w: int) -> int:
    return max(1, int(round(min(h, w) / 200)))


def _canvas(img: np.ndarray):
    """A PIL canvas over an RGB uint8 image, its drawer, and the font and line width for the image's size:
    (canvas, draw, font, line_width, h, w)."""
    h, w = img.shape[:2]
    canvas = Image.fromarray(img).convert("RGB")
    font_size = max(10, min(24, int(round(min(h, w) / 28))))
    return canvas, ImageDraw.Draw(canvas), _font(font_size), _line_width(h, w), h, w


def _label(draw, text: str, x0: float, y0: float, color, font, h: int, w: int) -> None:
    """`text` on a filled `color` tag just above (x0, y0), kept inside the image."""
    tb = draw.textbbox((0, 0), text, font=font)
    tw, th = tb[2] - tb[0], tb[3] - tb[1]
    tx = float(np.clip(x0, 0, max(w - tw - 4, 0)))
    ty = float(y0 - th - 4) if y0 - th - 4 >= 0 else float(np.clip(y0, 0, max(h - th - 4, 0)))
    draw.rectangle([tx, ty, tx + tw + 4, ty + th + 4], fill=color)
    # black or white text, whichever reads better on the label colour
    lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((tx + 2 - tb[0], ty + 2 - tb[1]), text, fill=(0, 0, 0) if lum > 140 else (255, 255, 255), font=font)


def _dashed_closed(draw, pts, color, width: int, dash: float) -> None:
    """A closed polyline through `pts` ((P, 2)) drawn as dashes of `dash` pixels with gaps as long."""
    pts = np.asarray(pts, dtype=float).reshape(-1, 2)
    ring = np.concatenate([pts, pts[:1]])
    offset = 0.0  # where the dash pattern stands at the start of each segment (continuous around corners)
    for a, b in zip(ring[:-1], ring[1:]):
        length = float(np.hypot(*(b - a)))
        if length == 0:
            continue
        t = -offset
        while t < length:
            s0, s1 = max(t, 0.0), min(t + dash, length)
            if s1 > s0:
                p0, p1 = a + (b - a) * (s0 / length), a + (b - a) * (s1 / length)
                draw.line([tuple(p0), tuple(p1)], fill=color, width=width)
            t += 2 * dash
        offset = (offset + length) % (2 * dash)


def draw_detections(image_rgb: np.ndarray, boxes, labels, scores, class_names=None, polygons=None,
                    score_thresh: float = 0.5, masks=None) -> np.ndarray:
    """Draw the detections with score >= score_thresh on a copy of `image_rgb` (HxWx3 uint8, RGB).

    boxes: (N, 4) xyxy; labels: (N,) class ids; scores: (N,); class_names: list indexed by label (ids
    shown when missing); polygons: optional list of N (P, 2) arrays, drawn instead of the boxes; masks:
    optional (N, H, W) bool (a Mask R-CNN's "masks"), each filled translucent in its class colour with an
    opaque outline, under the boxes and labels (higher scores on top). Returns an HxWx3 uint8 RGB array.
    """
    img = _as_rgb_uint8(image_rgb, "draw_detections")
    boxes = _to_numpy(boxes)
    scores = _to_numpy(scores)
    labels = _to_numpy(labels)
    n = len(scores) if scores is not None else (len(boxes) if boxes is not None else len(polygons or []))
    boxes = np.zeros((n, 4)) if boxes is None else boxes.reshape(-1, 4).astype(float)
    scores = np.ones(n) if scores is None else scores.reshape(-1).astype(float)
    labels = np.zeros(n, dtype=int) if labels is None else labels.reshape(-1).astype(int)
    if polygons is not None and len(polygons) != n:
        raise ValueError(f"draw_detections: {len(polygons)} polygons for {n} detections")

    order = np.argsort(-scores, kind="stable")
    masks = _check_masks(masks, n, *img.shape[:2], "draw_detections")
    if masks is not None:
        img = _paint_masks(img, [(masks[i], class_color(labels[i])) for i in order[::-1] if scores[i] >= score_thresh],
                           _line_width(*img.shape[:2]))
    canvas, draw, font, line_w, h, w = _canvas(img)
    for i in order[::-1]:  # highest score drawn last (on top)
        if scores[i] < score_thresh:
            continue
        color = class_color(labels[i])
        if polygons is not None:
            pts = np.asarray(polygons[i], dtype=float).reshape(-1, 2)
            if len(pts) < 2:
                continue
            draw.line([tuple(p) for p in pts] + [tuple(pts[0])], fill=color, width=line_w + 1)
            x0, y0 = pts[:, 0].min(), pts[:, 1].min()
        else:
            x0, y0, x1, y1 = boxes[i]
            draw.rectangle([x0, y0, x1, y1], outline=color, width=line_w + 1)
        name = str(labels[i])
        if class_names is not None and 0 <= labels[i] < len(class_names):
            name = str(class_names[labels[i]])
        _label(draw, f"{name} {scores[i]:.2f}", x0, y0, color, font, h, w)
    return np.asarray(canvas)


def draw_ground_truth(image_rgb: np.ndarray, boxes, labels, class_names=None, polygons=None, crowd=None,
                      ignore=None, masks=None) -> np.ndarray:
    """Draw annotations on a copy of `image_rgb` (HxWx3 uint8 RGB; HxW or HxWx1 grey is accepted).

    boxes: (N, 4) xyxy; labels: (N,) class ids (named by `class_names` when given); polygons: optional list of
    N (P, 2) arrays (an entry None: that instance's box), drawn instead of the boxes (text); crowd / ignore:
    optional (N,) bools. A crowd box is drawn dashed in IGNORED_COLOR with the label "name (crowd)"; a don't-care
    instance (ignore) dashed in IGNORED_COLOR with "### (don't care)". masks: optional (N, H, W) bool, or a list
    of N (H, W) masks with None for an instance without one: filled translucent (class colour; IGNORED_COLOR for
    crowd / don't care) with an outline, under the boxes. Returns an HxWx3 uint8 RGB array.
    """
    img = _as_rgb_uint8(image_rgb, "draw_ground_truth")
    boxes = _to_numpy(boxes)
    boxes = np.zeros((0, 4)) if boxes is None else boxes.reshape(-1, 4).astype(float)
    n = len(boxes)
    labels = np.zeros(n, dtype=int) if labels is None else _to_numpy(labels).reshape(-1).astype(int)
    crowd = np.zeros(n, bool) if crowd is None else _to_numpy(crowd).reshape(-1).astype(bool)
    ignore = np.zeros(n, bool) if ignore is None else _to_numpy(ignore).reshape(-1).astype(bool)
    for what, arr in (("labels", labels), ("crowd", crowd), ("ignore", ignore)):
        if len(arr) != n:
            raise ValueError(f"draw_ground_truth: {len(arr)} {what} for {n} boxes")
    if polygons is not None and len(polygons) != n:
        raise ValueError(f"draw_ground_truth: {len(polygons)} polygons for {n} boxes")

    # ignored ones first, so that the instances that count are drawn on top
    order = sorted(range(n), key=lambda k: not (crowd[k] or ignore[k]))
    masks = _check_masks(masks, n, *img.shape[:2], "draw_ground_truth")
    if masks is not None:
        img = _paint_masks(img, [(masks[i], IGNORED_COLOR if crowd[i] or ignore[i] else class_color(labels[i]))
                                 for i in order], _line_width(*img.shape[:2]))
    canvas, draw, font, line_w, h, w = _canvas(img)
    dash = max(3.0, 3.0 * line_w)
    for i in order:
        x0, y0, x1, y1 = boxes[i]
        pts = None
        if polygons is not None and polygons[i] is not None:
            pts = np.asarray(polygons[i], dtype=float).reshape(-1, 2)
            if len(pts) < 2:
                pts = None
        if pts is None:
            pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)
        # an edge on the image border (x1 = width) is drawn on the last pixel column / row, not outside
        pts = np.clip(pts, 0, [max(w - 1, 0), max(h - 1, 0)])
        lx, ly = pts[:, 0].min(), pts[:, 1].min()
        name = str(labels[i])
        if class_names is not None and 0 <= labels[i] < len(class_names):
            name = str(class_names[labels[i]])
        if crowd[i] or ignore[i]:
            _dashed_closed(draw, pts, IGNORED_COLOR, line_w + 1, dash)
            text = "### (don't care)" if ignore[i] else f"{name} (crowd)"
            _label(draw, text, lx, ly, IGNORED_COLOR, font, h, w)
            continue
        color = class_color(labels[i])
        draw.line([tuple(p) for p in pts] + [tuple(pts[0])], fill=color, width=line_w + 1)
        _label(draw, name, lx, ly, color, font, h, w)
    return np.asarray(canvas)
