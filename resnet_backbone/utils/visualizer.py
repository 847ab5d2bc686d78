"""`draw_detections`: boxes or polygons with "name 0.93" labels on an RGB image (PIL drawing)."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_detections", "class_color"]


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


def draw_detections(image_rgb: np.ndarray, boxes, labels, scores, class_names=None, polygons=None,
                    score_thresh: float = 0.5) -> np.ndarray:
    """Draw the detections with score >= score_thresh on a copy of `image_rgb` (HxWx3 uint8, RGB).

    boxes: (N, 4) xyxy; labels: (N,) class ids; scores: (N,); class_names: list indexed by label (ids
    shown when missing); polygons: optional list of N (P, 2) arrays, drawn instead of the boxes.
    Returns an HxWx3 uint8 RGB array.
    """
    img = np.asarray(image_rgb)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"draw_detections: expected an HxWx3 RGB image, got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    boxes = _to_numpy(boxes)
    scores = _to_numpy(scores)
    labels = _to_numpy(labels)
    n = len(scores) if scores is not None else (len(boxes) if boxes is not None else len(polygons or []))
    boxes = np.zeros((n, 4)) if boxes is None else boxes.reshape(-1, 4).astype(float)
    scores = np.ones(n) if scores is None else scores.reshape(-1).astype(float)
    labels = np.zeros(n, dtype=int) if labels is None else labels.reshape(-1).astype(int)
    if polygons is not None and len(polygons) != n:
        raise ValueError(f"draw_detections: {len(polygons)} polygons for {n} detections")

    h, w = img.shape[:2]
    canvas = Image.fromarray(img).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font_size = max(10, min(24, int(round(min(h, w) / 28))))
    font = _font(font_size)
    line_w = max(1, int(round(min(h, w) / 200)))
    order = np.argsort(-scores, kind="stable")
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
        text = f"{name} {scores[i]:.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        tx = float(np.clip(x0, 0, max(w - tw - 4, 0)))
        ty = float(y0 - th - 4) if y0 - th - 4 >= 0 else float(np.clip(y0, 0, max(h - th - 4, 0)))
        draw.rectangle([tx, ty, tx + tw + 4, ty + th + 4], fill=color)
        # black or white text, whichever reads better on the label colour
        lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((tx + 2 - tb[0], ty + 2 - tb[1]), text, fill=(0, 0, 0) if lum > 140 else (255, 255, 255),
                  font=font)
    return np.asarray(canvas)
