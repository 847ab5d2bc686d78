"""A synthetic text-detection dataset: words rendered with PIL fonts, labelled with rotated quadrilaterals.

Two kinds of page, chosen per image:

* scene-like: a textured background (colour gradient, noise, random blobs and strokes, slightly blurred)
  with a few words at varied sizes, angles (-45..45 degrees) and colours, none overlapping;
* document-like: a paper-coloured page with faint ruling, lines of dark words at a common small skew.

A few words are "don't care": tiny or faint (low contrast, blurred); they are labelled with transcription
``###`` and ``"ignore": true`` (how ICDAR marks illegible text). Fonts: PIL's built-in scalable default font
(`ImageFont.load_default(size=...)`) and DejaVu TrueType fonts when the system has them.

Output (the layout the builtin "synthetic_text_*" datasets expect):
``<output_dir>/<split>/<000000>.png`` and ``<output_dir>/<split>.json`` (COCO style: images, annotations with
"segmentation" = [flat quad], "bbox", "area", "iscrowd" 0, "transcription", "ignore"; one category "text").
The same (split, num_images, image_size, seed) always produces the same files.
"""
from __future__ import annotations

import glob
import os
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from shapely.geometry import Polygon

from .common import start_split, write_coco_json

__all__ = ["generate_text_dataset", "render_text_image", "available_fonts"]

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part over new sound take only little work know place year live me back give most very "
    "after thing our just name good sentence man think say great where help through much before line right "
    "too mean old any same tell boy follow came want show also around form three small set put end does "
    "another well large must big even such because turn here why ask went men read need land different home "
    "us move try kind hand picture again change off play spell air away animal house point page letter mother "
    "answer found study still learn should America world STOP EXIT OPEN SALE Hotel Coffee Bank Taxi Police "
    "2024 100 42 7 ResNet DBNet FPN Detect OCR Text Street Road Main North Invoice Total Date Page"
).split()
_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@lru_cache(maxsize=1)
def available_fonts() -> tuple[str, ...]:
    """DejaVu TrueType font files on this system ("" stands for PIL's built-in default font)."""
    found = []
    for pattern in ("/usr/share/fonts/truetype/dejavu/DejaVu*.ttf", "/usr/share/fonts/dejavu/DejaVu*.ttf",
                    "/usr/share/fonts/TTF/DejaVu*.ttf", "/Library/Fonts/DejaVu*.ttf"):
        found.extend(sorted(glob.glob(pattern)))
    # skip the ExtraLight face: its strokes are too thin to read at small sizes
    found = [f for f in found if "ExtraLight" not in f]
    return ("",) + tuple(dict.fromkeys(found))


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    if not path:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


def _random_word(rng: np.random.Generator) -> str:
    if rng.random() < 0.8:
        return str(_WORDS[rng.integers(len(_WORDS))])
    n = int(rng.integers(2, 8))
    return "".join(_CHARS[i] for i in rng.integers(len(_CHARS), size=n))


def _textured_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    t = np.linspace(0.0, 1.0, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0.0, 1.0, h)[:, None, None]
    img = (c0 * (1 - t) + c1 * t) * np.ones((h, w, 1))
    img = img + rng.normal(0, rng.uniform(3, 18), size=(h, w, 3))
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 7))):  # blobs and strokes: clutter that is not text
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(w // 20 + 1, w // 4 + 2)), int(rng.integers(h // 20 + 1, h // 4 + 2)))
            cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(canvas, p0, p1, color, int(rng.integers(1, 4)))
    k = int(rng.choice([1, 3, 5]))
    return cv2.GaussianBlur(canvas, (k, k), 0) if k > 1 else canvas


def _paper_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([rng.uniform(225, 255), rng.uniform(220, 252), rng.uniform(205, 245)])
    img = base * np.ones((h, w, 3)) + rng.normal(0, 3, size=(h, w, 3))
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:  # faint ruling
        step = int(rng.integers(max(h // 12, 6), max(h // 6, 8)))
        for y in range(step, h, step):
            cv2.line(canvas, (0, y), (w - 1, y), (200, 205, 230), 1)
    return canvas


def _render_word(word: str, font: ImageFont.FreeTypeFont, angle: float):
    """Alpha mask (uint8) of `word` rotated by `angle` degrees (counter-clockwise) and its tight quad."""
    left, top, right, bottom = font.getbbox(word)
    pad = 4
    tile = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(tile).text((pad - left, pad - top), word, fill=255, font=font)
    ink = tile.getbbox()
    if ink is None:
        return None, None
    x0, y0, x1, y1 = ink
    quad = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    alpha = np.asarray(tile)
    th, tw = alpha.shape
    m = cv2.getRotationMatrix2D((tw / 2.0, th / 2.0), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(tw * cos + th * sin)), int(np.ceil(tw * sin + th * cos))
    m[0, 2] += nw / 2.0 - tw / 2.0
    m[1, 2] += nh / 2.0 - th / 2.0
    rotated = cv2.warpAffine(alpha, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0)
    quad = quad @ m[:, :2].T + m[:, 2]
    return rotated, quad


def _contrasting_color(rng: np.random.Generator, background_mean: np.ndarray, faint: bool) -> np.ndarray:
    lum = float(background_mean.mean())
    if faint:  # barely visible: a colour close to the background
        return np.clip(background_mean + rng.uniform(-25, 25, size=3), 0, 255)
    for _ in range(20):
        c = rng.uniform(0, 255, size=3)
        if abs(c.mean() - lum) > 90:
            return c
    return np.full(3, 0.0 if lum > 127 else 255.0)


def _paste(canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, color: np.ndarray, blur: int = 0) -> None:
    a = alpha.astype(np.float32) / 255.0
    if blur:
        a = cv2.GaussianBlur(a, (blur, blur), 0)
    h, w = a.shape
    region = canvas[y:y + h, x:x + w].astype(np.float32)
    region = region * (1 - a[..., None]) + color[None, None, :].astype(np.float32) * a[..., None]
    canvas[y:y + h, x:x + w] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def _place_scene_words(rng, canvas, fonts, size_range, n_words, placed):
    h, w = canvas.shape[:2]
    out = []
    for _ in range(n_words):
        dont_care = rng.random() < 0.12
        for _attempt in range(30):
            word = _random_word(rng)
            lo, hi = size_range
            size = int(rng.integers(max(6, lo // 2), max(7, lo))) if dont_care and rng.random() < 0.5 \
                else int(rng.integers(lo, hi + 1))
            font = _font(str(fonts[rng.integers(len(fonts))]), size)
            angle = float(rng.uniform(-45, 45)) if rng.random() < 0.6 else float(rng.uniform(-8, 8))
            alpha, quad = _render_word(word, font, angle)
            if alpha is None or alpha.shape[0] >= h - 2 or alpha.shape[1] >= w - 2:
                continue
            x = int(rng.integers(0, w - alpha.shape[1]))
            y = int(rng.integers(0, h - alpha.shape[0]))
            poly = quad + [x, y]
            shape = Polygon(poly)
            if any(shape.buffer(2).intersects(p) for p in placed):
                continue
            faint = dont_care and size >= lo
            mean = canvas[y:y + alpha.shape[0], x:x + alpha.shape[1]].reshape(-1, 3).mean(axis=0)
            _paste(canvas, alpha, x, y, _contrasting_color(rng, mean, faint), blur=5 if faint else 0)
            placed.append(shape)
            out.append((poly, word, dont_care))
            break
    return out


def _place_document_words(rng, canvas, fonts, size_range, placed):
    h, w = canvas.shape[:2]
    out = []
    font_path = str(fonts[rng.integers(len(fonts))])
    size = int(rng.integers(size_range[0], max(size_range[0] + 1, (size_range[0] + size_range[1]) // 2 + 1)))
    font = _font(font_path, size)
    skew = float(rng.uniform(-6, 6))
    color = np.array([rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(0, 90)])
    margin = max(4, w // 16)
    y = margin + int(rng.integers(0, max(1, h // 10)))
    line_gap = int(size * rng.uniform(1.6, 2.2))
    while y + line_gap < h - margin:
        x = margin + int(rng.integers(0, max(1, w // 8)))
        while True:
            word = _random_word(rng)
            dont_care = rng.random() < 0.08
            alpha, quad = _render_word(word, font, skew)
            if alpha is None:
                break
            if x + alpha.shape[1] > w - margin or y + alpha.shape[0] > h:
                break
            poly = quad + [x, y]
            shape = Polygon(poly)
            if not any(shape.buffer(1).intersects(p) for p in placed):
                _paste(canvas, alpha, x, y,
                       _contrasting_color(rng, canvas[y:y + 4, x:x + 4].reshape(-1, 3).mean(0), True)
                       if dont_care else color, blur=5 if dont_care else 0)
                placed.append(shape)
                out.append((poly, word, dont_care))
            x += alpha.shape[1] + int(size * rng.uniform(0.3, 0.9))
            if rng.random() < 0.15:
                break  # ragged line ends
        y += line_gap
    return out


def render_text_image(rng: np.random.Generator, image_size: int = 256, kind: str | None = None,
                      words_per_image: tuple[int, int] = (2, 7)):
    """One synthetic image (H, W, 3) uint8 RGB and its words: list of (quad (4, 2), transcription, dont_care)."""
    h = w = int(image_size)
    fonts = available_fonts()
    kind = kind or ("document" if rng.random() < 0.3 else "scene")
    size_range = (max(8, int(0.07 * h)), max(10, int(0.16 * h)))
    placed: list[Polygon] = []
    if kind == "document":
        canvas = _paper_background(rng, h, w)
        words = _place_document_words(rng, canvas, fonts, (max(8, int(0.05 * h)), max(10, int(0.09 * h))), placed)
    elif kind == "scene":
        canvas = _textured_background(rng, h, w)
        n = int(rng.integers(words_per_image[0], words_per_image[1] + 1))
        words = _place_scene_words(rng, canvas, fonts, size_range, n, placed)
    else:
        raise ValueError(f"render_text_image: kind must be 'scene' or 'document', got {kind!r}")
    return canvas, words


def generate_text_dataset(output_dir, split: str, num_images: int, image_size: int = 256, seed: int = 0, *,
                          words_per_image: tuple[int, int] = (2, 7), kinds: tuple[str, ...] = ("scene", "document"),
                          progress: bool = False) -> str:
    """Write `num_images` synthetic text images and `<output_dir>/<split>.json`; returns the json path."""
    output_dir, image_dir, rng, iterator = start_split(output_dir, split, num_images, image_size, seed, progress,
                                                       desc=f"synthetic text ({split})")
    images, annotations = [], []
    for i in iterator:
        if set(kinds) == {"scene", "document"}:
            kind = "document" if rng.random() < 0.3 else "scene"  # mostly scene text, some pages
        else:
            kind = kinds[0] if len(kinds) == 1 else kinds[int(rng.integers(len(kinds)))]
        canvas, words = render_text_image(rng, image_size, kind, words_per_image)
        file_name = f"{i:06d}.png"
        Image.fromarray(canvas).save(os.path.join(image_dir, file_name))
        images.append({"id": i, "file_name": file_name, "height": int(image_size), "width": int(image_size)})
        for quad, word, dont_care in words:
            quad = np.clip(quad, 0, image_size)
            x0, y0 = quad.min(axis=0)
            x1, y1 = quad.max(axis=0)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": 1,
                "segmentation": [[round(float(v), 2) for v in quad.reshape(-1)]],
                "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                "area": round(float(Polygon(quad).area), 2), "iscrowd": 0,
                "transcription": "###" if dont_care else word, "ignore": bool(dont_care),
            })
    data = {"info": {"description": "resnet_backbone synthetic text", "seed": int(seed), "split": split},
            "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "text"}]}
    return write_coco_json(output_dir, split, data)
