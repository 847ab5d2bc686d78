"""Geometric augmentations that move boxes and polygons with the image.

A `Transform` is deterministic (it knows its parameters) and maps an image (H, W, C uint8), (N, 2) point
coordinates, (N, 4) XYXY boxes and polygons. An `Augmentation` looks at an image and draws a `Transform`
(random for training). `apply_augmentations(augs, image)` returns the new image and the `TransformList` to
apply to its annotations.

Coordinates are continuous pixel coordinates: the image spans [0, W] x [0, H], the centre of pixel (i, j) is
(j + 0.5, i + 0.5). Resizing scales them by new/old size; a horizontal flip maps x to W - x.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["Transform", "TransformList", "NoOpTransform", "ResizeTransform", "HFlipTransform", "VFlipTransform",
           "RotationTransform", "CropTransform", "Augmentation", "ResizeShortestEdge", "RandomFlip", "RandomRotation",
           "RandomCrop", "apply_augmentations", "build_augmentation"]


class Transform:
    def apply_image(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """(N, 2) float array of x, y -> transformed (N, 2)."""
        raise NotImplementedError

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) XYXY -> (N, 4) XYXY: the axis-aligned box enclosing the transformed box corners."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        idx = np.array([[0, 1], [2, 1], [0, 3], [2, 3]])
        corners = boxes[:, idx].reshape(-1, 2)
        pts = self.apply_coords(corners).reshape(-1, 4, 2)
        return np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)

    def apply_polygons(self, polygons: list) -> list:
        return [self.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)) for p in polygons]

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w


class NoOpTransform(Transform):
    def apply_image(self, img):
        return img

    def apply_coords(self, coords):
        return np.asarray(coords, dtype=np.float64)

    def apply_box(self, boxes):
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


class TransformList(Transform):
    def __init__(self, transforms: list[Transform]):
        self.transforms = [t for t in transforms if not isinstance(t, NoOpTransform)]

    def apply_image(self, img):
        for t in self.transforms:
            img = t.apply_image(img)
        return img

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64)
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords

    def apply_box(self, boxes):
        # box by box through each transform (the enclosing box after each step), as detectron2 does
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for t in self.transforms:
            boxes = t.apply_box(boxes)
        return boxes

    def output_size(self, h, w):
        for t in self.transforms:
            h, w = t.output_size(h, w)
        return h, w

    def __len__(self):
        return len(self.transforms)


def _keep_channels(out: np.ndarray, img: np.ndarray) -> np.ndarray:
    return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out


class ResizeTransform(Transform):
    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: int = cv2.INTER_LINEAR):
        self.h, self.w, self.new_h, self.new_w, self.interp = int(h), int(w), int(new_h), int(new_w), interp

    def apply_image(self, img):
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"ResizeTransform expects an image of {self.h}x{self.w}, got {img.shape[:2]}")
        if (self.new_h, self.new_w) == (self.h, self.w):
            return img
        return _keep_channels(cv2.resize(img, (self.new_w, self.new_h), interpolation=self.interp), img)

    def apply_coords(self, coords):
        coords = np.array(coords, dtype=np.float64).reshape(-1, 2)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords

    def output_size(self, h, w):
        return self.new_h, self.new_w


class HFlipTransform(Transform):
    def __init__(self, width: int):
        self.width = int(width)

    def apply_image(self, img):
        return np.ascontiguousarray(img[:, ::-1])

    def apply_coords(self, coords):
        coords = np.array(coords, dtype=np.float64).reshape(-1, 2)
        coords[:, 0] = self.width - coords[:, 0]
        return coords


class VFlipTransform(Transform):
    def __init__(self, height: int):
        self.height = int(height)

    def apply_image(self, img):
        return np.ascontiguousarray(img[::-1])

    def apply_coords(self, coords):
        coords = np.array(coords, dtype=np.float64).reshape(-1, 2)
        coords[:, 1] = self.height - coords[:, 1]
        return coords


class RotationTransform(Transform):
    """Rotate by `angle` degrees counter-clockwise about the image centre. With `expand`, the canvas grows to hold
    the whole rotated image; otherwise it keeps its size (corners are cut). Uncovered pixels are 0."""

    def __init__(self, h: int, w: int, angle: float, expand: bool = True, interp: int = cv2.INTER_LINEAR):
        self.h, self.w, self.angle, self.expand, self.interp = int(h), int(w), float(angle), expand, interp
        a = math.radians(self.angle)
        c, s = abs(math.cos(a)), abs(math.sin(a))
        if expand:
            self.out_w = int(math.ceil(self.w * c + self.h * s - 1e-6))
            self.out_h = int(math.ceil(self.w * s + self.h * c - 1e-6))
        else:
            self.out_h, self.out_w = self.h, self.w
        # Affine matrix in continuous coordinates: rotate about the input centre, move to the output centre.
        m = cv2.getRotationMatrix2D((self.w / 2.0, self.h / 2.0), self.angle, 1.0)
        m[0, 2] += self.out_w / 2.0 - self.w / 2.0
        m[1, 2] += self.out_h / 2.0 - self.h / 2.0
        self.matrix = m

    def apply_image(self, img):
        if self.angle % 360 == 0:
            return img
        # cv2 maps pixel centres (integer indices); convert the continuous-coordinate matrix to index space
        m = self.matrix.copy()
        m[:, 2] += m[:, 0] * 0.5 + m[:, 1] * 0.5 - 0.5
        out = cv2.warpAffine(img, m, (self.out_w, self.out_h), flags=self.interp, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)
        return _keep_channels(out, img)

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        return coords @ self.matrix[:, :2].T + self.matrix[:, 2]

    def output_size(self, h, w):
        return self.out_h, self.out_w


class CropTransform(Transform):
    """Keep the window [x0, x0 + w) x [y0, y0 + h). Coordinates shift by (-x0, -y0); clipping boxes to the new
    image (and dropping the empty ones) is the caller's job, as for every transform."""

    def __init__(self, x0: int, y0: int, w: int, h: int):
        self.x0, self.y0, self.w, self.h = int(x0), int(y0), int(w), int(h)

    def apply_image(self, img):
        return np.ascontiguousarray(img[self.y0:self.y0 + self.h, self.x0:self.x0 + self.w])

    def apply_coords(self, coords):
        coords = np.array(coords, dtype=np.float64).reshape(-1, 2)
        coords[:, 0] -= self.x0
        coords[:, 1] -= self.y0
        return coords

    def output_size(self, h, w):
        return self.h, self.w


class Augmentation:
    def get_transform(self, image: np.ndarray) -> Transform:
        raise NotImplementedError


class ResizeShortestEdge(Augmentation):
    """Resize so the short side is a length drawn from `short_edge_length` ("choice": one of the values; "range":
    an integer in [min, max]) and the long side is at most `max_size`. A length of 0 keeps the image."""

    def __init__(self, short_edge_length, max_size: int = 0, sample_style: str = "range",
                 interp: int = cv2.INTER_LINEAR):
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        short_edge_length = tuple(int(s) for s in short_edge_length)
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got {sample_style!r}")
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(f"'range' sampling needs (min, max) sizes, got {short_edge_length}")
        self.short_edge_length, self.max_size, self.sample_style, self.interp = (
            short_edge_length, int(max_size), sample_style, interp)

    @staticmethod
    def get_output_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
        scale = short_edge / min(h, w)
        new_h, new_w = h * scale, w * scale
        if max_size > 0 and max(new_h, new_w) > max_size:
            s = max_size / max(new_h, new_w)
            new_h, new_w = new_h * s, new_w * s
        return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))

    def get_transform(self, image):
        h, w = image.shape[:2]
        if self.sample_style == "range":
            size = int(np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            size = int(np.random.choice(self.short_edge_length))
        if size == 0:
            return NoOpTransform()
        new_h, new_w = self.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w, self.interp)


class RandomFlip(Augmentation):
    def __init__(self, prob: float = 0.5, horizontal: bool = True, vertical: bool = False):
        if horizontal == vertical:
            raise ValueError("RandomFlip: choose exactly one of horizontal or vertical")
        self.prob, self.horizontal = float(prob), horizontal

    def get_transform(self, image):
        h, w = image.shape[:2]
        if np.random.rand() < self.prob:
            return HFlipTransform(w) if self.horizontal else VFlipTransform(h)
        return NoOpTransform()


class RandomRotation(Augmentation):
    """Rotate by an angle drawn uniformly from `angle` = (min, max) degrees (a single number a means (-a, a))."""

    def __init__(self, angle, expand: bool = True, interp: int = cv2.INTER_LINEAR):
        if isinstance(angle, (int, float)):
            angle = (-abs(float(angle)), abs(float(angle)))
        self.angle, self.expand, self.interp = (float(angle[0]), float(angle[1])), expand, interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        a = float(np.random.uniform(self.angle[0], self.angle[1]))
        if a % 360 == 0:
            return NoOpTransform()
        return RotationTransform(h, w, a, self.expand, self.interp)


class RandomCrop(Augmentation):
    """A random window of the image, sized as detectron2's INPUT.CROP: "relative" (fractions (h, w) of the image),
    "relative_range" (fractions drawn uniformly in [crop_size, 1]), "absolute" (pixels, capped by the image),
    "absolute_range" (pixels drawn in [crop_size[0], crop_size[1]], capped by the image)."""

    TYPES = ("relative", "relative_range", "absolute", "absolute_range")

    def __init__(self, crop_type: str, crop_size):
        if crop_type not in self.TYPES:
            raise ValueError(f"INPUT.CROP.TYPE must be one of {self.TYPES}, got {crop_type!r}")
        crop_size = tuple(float(v) for v in crop_size)
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"INPUT.CROP.SIZE must be two positive numbers, got {crop_size}")
        if crop_type.startswith("relative") and max(crop_size) > 1:
            raise ValueError(f"INPUT.CROP.SIZE for '{crop_type}' must be fractions in (0, 1], got {crop_size}")
        self.crop_type, self.crop_size = crop_type, crop_size

    def get_crop_size(self, h: int, w: int) -> tuple[int, int]:
        a, b = self.crop_size
        if self.crop_type == "relative":
            return max(1, int(h * a + 0.5)), max(1, int(w * b + 0.5))
        if self.crop_type == "relative_range":
            fa, fb = np.asarray([a, b]) + np.random.rand(2) * (1 - np.asarray([a, b]))
            return max(1, int(h * fa + 0.5)), max(1, int(w * fb + 0.5))
        if self.crop_type == "absolute":
            return min(int(a), h), min(int(b), w)
        lo, hi = int(a), int(b)
        if hi < lo:
            raise ValueError(f"INPUT.CROP.SIZE for 'absolute_range' must be (min, max), got {self.crop_size}")
        return (int(np.random.randint(min(h, lo), min(h, hi) + 1)),
                int(np.random.randint(min(w, lo), min(w, hi) + 1)))

    def get_transform(self, image):
        h, w = image.shape[:2]
        ch, cw = self.get_crop_size(h, w)
        if (ch, cw) == (h, w):
            return NoOpTransform()
        y0 = int(np.random.randint(h - ch + 1))
        x0 = int(np.random.randint(w - cw + 1))
        return CropTransform(x0, y0, cw, ch)


def apply_augmentations(augs: list[Augmentation], image: np.ndarray) -> tuple[np.ndarray, TransformList]:
    tfms = []
    for aug in augs:
        t = aug.get_transform(image)
        image = t.apply_image(image)
        tfms.append(t)
    return image, TransformList(tfms)


def build_augmentation(cfg, is_train: bool) -> list[Augmentation]:
    """INPUT.* -> augmentations. Training: [crop if INPUT.CROP.ENABLED], multi-scale resize, flip, rotation if
    INPUT.ROTATION_ANGLE. Test: resize to MIN_SIZE_TEST / MAX_SIZE_TEST."""
    if is_train:
        augs: list[Augmentation] = [ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                                       cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
        if cfg.INPUT.CROP.ENABLED:  # crop first, then resize (as detectron2)
            augs.insert(0, RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        flip = cfg.INPUT.RANDOM_FLIP
        if flip not in ("none", "horizontal", "vertical"):
            raise ValueError(f"INPUT.RANDOM_FLIP must be 'none', 'horizontal' or 'vertical', got {flip!r}")
        if flip != "none":
            augs.append(RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
        if cfg.INPUT.ROTATION_ANGLE:
            augs.append(RandomRotation(float(cfg.INPUT.ROTATION_ANGLE)))
        return augs
    return [ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
