"""Augmentations on torchvision.transforms.v2: boxes, masks and polygons move with the image.

A `Transform` is deterministic (it holds its drawn parameters). `Transform.apply(x)` maps one tv_tensor through
`torchvision.transforms.v2.functional`: a `tv_tensors.Image` (C, H, W), `tv_tensors.BoundingBoxes` (XYXY) or
`tv_tensors.Mask`; the op dispatches on the type (masks are resized nearest, boxes scaled, shifted, flipped).
Polygons have no tv_tensor: `apply_coords` maps (N, 2) points through the same geometry by hand, and
`apply_polygons` uses it. The numpy helpers `apply_image` (H, W, C uint8), `apply_box` ((N, 4) XYXY) convert
to tv_tensors and back.

An `Augmentation` draws a `Transform` from the image size. Every random number comes from `rng` when one is
given (a `numpy.random.Generator` or `RandomState`), otherwise from numpy's global RNG, which the resumable
training loader seeds by (seed, position) (data/build.py): a sample is a pure function of its
position, and v2 never draws from torch's RNG here (only the functional ops are used, with drawn parameters).

Coordinates are continuous pixel coordinates: the image spans [0, W] x [0, H], the centre of pixel (i, j) is
(j + 0.5, i + 0.5). Resizing scales them by new/old size; a horizontal flip maps x to W - x. Boxes are not
clamped to the canvas by the transforms (clamping_mode=None); the caller clips (DatasetMapper does).

Resize (INPUT.RESIZE_METHOD; ResizeShortestEdge sizes, ResizeTransform pixels), three conventions:
- "pil" (the config default): detectron2's ResizeShortestEdge exactly: its output-size rule and PIL's
  Image.resize(BILINEAR) on the uint8 image (PIL's filter widens when shrinking, i.e. antialiases), uint8 out; a
  float image is resized as detectron2 resizes one (F.interpolate, bilinear, align_corners=False). Boxes and
  polygons scale by new/old in float64. Slower: 480x640 -> 800x1067 takes ~9 ms against ~1.3 ms for "bilinear"
  (one CPU thread; nearly all of it PIL's own resize), ~18 ms "torchvision" (float kernel).
- "bilinear": this module's earlier behaviour, kept for results users already have: v2 bilinear without
  antialiasing, uint8 out, within 1 level of the cv2.INTER_LINEAR resize it replaced. Its sides are rounded
  like detectron2's but computed in a different order (one pixel off where a side lands on .5, e.g. 1:2 images
  at 800 / 1333). Antialiasing was tried on this path and left off: it moved pixels by up to 5 levels on the
  quickstart's 192 -> 160 downscale and the measured demo with it (AVX2 emulated) ended at AP50 40.0 against
  41.7 without.
- "torchvision": torchvision's GeneralizedRCNNTransform resize exactly: scale = min(MIN / short, MAX / long),
  sides floor(side * scale), F.interpolate(bilinear, align_corners=False) on the float image; the image comes
  out float32 on the 0-255 scale (not rounded; the detectors normalise any float input with PIXEL_MEAN/STD),
  boxes scaled as resize_boxes (float32 ratios). Transforms after it (flip, rotation, pad) keep the float.
Masks are resized nearest by v2 for all three. The large-scale jitter's ResizeScale follows the method too.

Still hand-written (v2 has no equivalent with this module's geometry): rotation (`RotationTransform`, cv2
warpAffine with the canvas-expansion rule and pixel-centre convention of this module; v2's rotate sizes the
expanded canvas differently), and the polygon point maps (no tv_tensor for polygons).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = ["Transform", "TransformList", "NoOpTransform", "ResizeTransform", "HFlipTransform", "VFlipTransform",
           "RotationTransform", "CropTransform", "PadTransform", "PhotometricTransform", "Augmentation",
           "ResizeShortestEdge", "RESIZE_METHODS", "RandomFlip", "RandomRotation", "RandomCrop", "ResizeScale",
           "FixedSizeCrop", "RandomPhotometricDistort", "apply_augmentations", "apply_augmentations_v2",
           "build_augmentation", "to_tv_image", "from_tv_image", "to_tv_boxes"]


# ---------------------------------------------------------------------------- tv_tensor conversions
def to_tv_image(img: np.ndarray) -> tv_tensors.Image:
    """(H, W, C) or (H, W) uint8 array -> (C, H, W) tv_tensors.Image (shares memory where it can)."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if not img.flags.writeable:  # e.g. decoded read-only: torch must not alias it
        img = img.copy()
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))


def from_tv_image(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> (H, W, C) contiguous numpy array."""
    return np.ascontiguousarray(img.as_subclass(torch.Tensor).permute(1, 2, 0).cpu().numpy())


def to_tv_boxes(boxes, canvas_size: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """(N, 4) XYXY -> float64 tv_tensors.BoundingBoxes on `canvas_size` (H, W), not clamped by the ops."""
    t = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return tv_tensors.BoundingBoxes(t, format=tv_tensors.BoundingBoxFormat.XYXY,
                                    canvas_size=(int(canvas_size[0]), int(canvas_size[1])), clamping_mode=None)


def _hw(image) -> tuple[int, int]:
    """(H, W) of an (H, W, C) numpy image or a (..., H, W) tensor."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    return int(image.shape[0]), int(image.shape[1])


# ---------------------------------------------------------------------------- random draws
def _np(rng):
    return np.random.mtrand._rand if rng is None else rng


def _uniform(rng, lo: float, hi: float) -> float:
    return float(_np(rng).uniform(lo, hi))


def _randint(rng, lo: int, hi: int) -> int:
    """An integer in [lo, hi)."""
    r = _np(rng)
    return int(r.integers(lo, hi) if isinstance(r, np.random.Generator) else r.randint(lo, hi))


def _rand(rng, size=None):
    r = _np(rng)
    return r.random(size) if isinstance(r, np.random.Generator) else r.rand(*(() if size is None else (size,)))


# ---------------------------------------------------------------------------- transforms
class Transform:
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """One tv_tensor (Image, BoundingBoxes or Mask) -> the transformed one."""
        raise NotImplementedError

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """(N, 2) float array of x, y -> transformed (N, 2). Used for polygons (they have no tv_tensor)."""
        raise NotImplementedError

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w

    def input_size(self) -> tuple[int, int]:
        """(H, W) the transform expects; used as the canvas of numpy boxes given to `apply_box`."""
        return self._in_size

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        out = from_tv_image(self.apply(to_tv_image(img)))
        return out[:, :, 0] if np.asarray(img).ndim == 2 else out

    def apply_box(self, boxes) -> np.ndarray:
        """(N, 4) XYXY -> (N, 4) XYXY: the axis-aligned box enclosing the transformed box."""
        return self.apply(to_tv_boxes(boxes, self.input_size())).as_subclass(torch.Tensor).numpy()

    def apply_polygons(self, polygons: list) -> list:
        return [self.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)) for p in polygons]


class NoOpTransform(Transform):
    _in_size = (1, 1)

    def apply(self, x):
        return x

    def apply_coords(self, coords):
        return np.asarray(coords, dtype=np.float64)

    def apply_image(self, img):
        return img

    def apply_box(self, boxes):
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


class TransformList(Transform):
    def __init__(self, transforms: list[Transform]):
        flat: list[Transform] = []
        for t in transforms:
            flat.extend(t.transforms if isinstance(t, TransformList) else [t])
        self.transforms = [t for t in flat if not isinstance(t, NoOpTransform)]

    def apply(self, x):
        # boxes go box by box through each transform (the enclosing box after each step), as detectron2 does
        for t in self.transforms:
            x = t.apply(x)
        return x

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64)
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords

    def apply_image(self, img):
        for t in self.transforms:
            img = t.apply_image(img)
        return img

    def apply_box(self, boxes):
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


RESIZE_METHODS = ("pil", "bilinear", "torchvision")

_PIL_RESAMPLE = {InterpolationMode.BILINEAR: Image.BILINEAR, InterpolationMode.NEAREST: Image.NEAREST,
                 InterpolationMode.BICUBIC: Image.BICUBIC}
_AXIS_BOX_FORMATS = (tv_tensors.BoundingBoxFormat.XYXY, tv_tensors.BoundingBoxFormat.XYWH,
                     tv_tensors.BoundingBoxFormat.CXCYWH)  # x terms scale by the width ratio, y terms by the height's
_TORCH_MODE = {InterpolationMode.BILINEAR: "bilinear", InterpolationMode.NEAREST: "nearest",
               InterpolationMode.BICUBIC: "bicubic"}


def _check_resize_method(method: str) -> str:
    if method not in RESIZE_METHODS:
        raise ValueError(f"INPUT.RESIZE_METHOD must be one of {RESIZE_METHODS}, got {method!r}")
    return method


def _pil_resize(img: torch.Tensor, new_h: int, new_w: int, resample) -> torch.Tensor:
    """(..., H, W) uint8 tensor -> resized with PIL's Image.resize, as detectron2's ResizeTransform does (3 channels
    as one RGB image, 1 as an "L" image; other channel counts band by band as "L", PIL's per-band arithmetic;
    fromarray infers those modes from the uint8 (H, W, 3) / (H, W) arrays)."""
    h, w = img.shape[-2:]
    lead = img.shape[:-2]
    chw = img.reshape(-1, h, w)
    hwc = np.ascontiguousarray(chw.permute(1, 2, 0).cpu().numpy())
    if hwc.shape[2] == 3:
        out = np.array(Image.fromarray(hwc).resize((new_w, new_h), resample))  # a writable copy
    else:
        out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(hwc[:, :, c]))
                                   .resize((new_w, new_h), resample)) for c in range(hwc.shape[2])], axis=2)
    return torch.from_numpy(out).permute(2, 0, 1).reshape(*lead, new_h, new_w).to(img.device)


def _interpolate(img: torch.Tensor, new_h: int, new_w: int, mode: str) -> torch.Tensor:
    """(..., H, W) floating tensor -> F.interpolate to (new_h, new_w), align_corners=False, no antialiasing."""
    h, w = img.shape[-2:]
    lead = img.shape[:-2]
    out = torch.nn.functional.interpolate(img.reshape(1, -1, h, w).contiguous(), size=(new_h, new_w), mode=mode,
                                          align_corners=None if mode == "nearest" else False)
    return out.reshape(*lead, new_h, new_w)


class ResizeTransform(Transform):
    """Resize (h, w) -> (new_h, new_w). `method` (INPUT.RESIZE_METHOD) says how the image's pixels are computed:

    - "pil": detectron2's ResizeTransform.apply_image: a uint8 image goes through PIL's Image.resize with `interp`
      (bilinear: PIL's filter, which antialiases when shrinking), uint8 out; a floating image through
      F.interpolate (align_corners=False, no antialiasing), keeping its dtype, as detectron2 does (PIL has no
      float bilinear); other dtypes are refused.
    - "bilinear" (the default of this class and of ResizeScale): v2.functional.resize without antialiasing, dtype kept
      (the behaviour this module always had).
    - "torchvision": GeneralizedRCNNTransform's resize: the image becomes float32 (a floating one keeps its dtype),
      on the same 0-255 scale, not rounded, and is resized by F.interpolate(bilinear, align_corners=False) to
      exactly (new_h, new_w) (what its scale_factor + recompute_scale_factor=True call resizes to). Boxes and
      polygon points are scaled like torchvision's resize_boxes: by float32 ratios new/old, in float32.

    Masks are resized nearest by v2 for every method. Boxes are scaled by new/old per axis: "bilinear" by v2
    (float32-rounded ratios), "pil" in float64 as detectron2, "torchvision" in float32 as resize_boxes."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int,
                 interp: InterpolationMode = InterpolationMode.BILINEAR, method: str = "bilinear"):
        self.h, self.w, self.new_h, self.new_w, self.interp = int(h), int(w), int(new_h), int(new_w), interp
        self.method = _check_resize_method(method)
        if method == "pil" and interp not in _PIL_RESAMPLE:
            raise ValueError(f"ResizeTransform(method='pil'): no PIL filter for {interp}")
        if method == "torchvision" and interp != InterpolationMode.BILINEAR:
            raise ValueError(f"ResizeTransform(method='torchvision') resizes bilinear only, got {interp}")
        self._in_size = (self.h, self.w)

    def _tv_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(width ratio, height ratio) as torchvision's resize_boxes computes them: float32 new / float32 old."""
        def ratio(new, old):
            return torch.tensor(new, dtype=torch.float32) / torch.tensor(old, dtype=torch.float32)
        return ratio(self.new_w, self.w), ratio(self.new_h, self.h)

    def apply(self, x):
        if isinstance(x, tv_tensors.BoundingBoxes):
            if tuple(x.canvas_size) != (self.h, self.w):
                raise ValueError(f"ResizeTransform expects boxes on a {self.h}x{self.w} canvas, got {x.canvas_size}")
        elif _hw(x) != (self.h, self.w):
            raise ValueError(f"ResizeTransform expects an image of {self.h}x{self.w}, got {_hw(x)}")
        same = (self.new_h, self.new_w) == (self.h, self.w)
        if isinstance(x, tv_tensors.Mask) or self.method == "bilinear":
            return x if same else F.resize(x, [self.new_h, self.new_w], interpolation=self.interp, antialias=False)
        if isinstance(x, tv_tensors.BoundingBoxes):
            if same:
                return x
            if x.format not in _AXIS_BOX_FORMATS:  # rotated formats: v2's geometry
                return F.resize(x, [self.new_h, self.new_w], antialias=False)
            b = x.as_subclass(torch.Tensor)
            if self.method == "pil":  # detectron2's apply_coords: x * (new_w / w) in float64
                r = torch.tensor([self.new_w / self.w, self.new_h / self.h] * 2, dtype=torch.float64)
                out = (b.to(torch.float64) * r.to(b.device)).to(b.dtype)
            else:  # torchvision's resize_boxes: float32 boxes times float32 ratios
                rw, rh = self._tv_ratios()
                out = (b.to(torch.float32) * torch.stack([rw, rh, rw, rh]).to(b.device)).to(b.dtype)
            return tv_tensors.wrap(out, like=x, canvas_size=(self.new_h, self.new_w))
        t = x.as_subclass(torch.Tensor)
        if self.method == "pil":
            if t.dtype == torch.uint8:
                out = t if same else _pil_resize(t, self.new_h, self.new_w, _PIL_RESAMPLE[self.interp])
            elif t.is_floating_point():
                out = t if same else _interpolate(t, self.new_h, self.new_w, _TORCH_MODE[self.interp])
            else:
                raise TypeError(f"INPUT.RESIZE_METHOD='pil' resizes uint8 images (PIL) or floating ones "
                                f"(F.interpolate, as detectron2), got {t.dtype}")
        else:  # torchvision
            t = t if t.is_floating_point() else t.to(torch.float32)
            out = t if same else _interpolate(t, self.new_h, self.new_w, "bilinear")
        return tv_tensors.wrap(out, like=x) if isinstance(x, tv_tensors.TVTensor) else out

    def apply_coords(self, coords):
        coords = np.array(coords, dtype=np.float64).reshape(-1, 2)
        if self.method == "torchvision":
            rw, rh = (float(r) for r in self._tv_ratios())
            coords[:, 0] = (coords[:, 0].astype(np.float32) * np.float32(rw)).astype(np.float64)
            coords[:, 1] = (coords[:, 1].astype(np.float32) * np.float32(rh)).astype(np.float64)
            return coords
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords

    def output_size(self, h, w):
        return self.new_h, self.new_w


class HFlipTransform(Transform):
    def __init__(self, width: int, height: int = 1):
        self.width = int(width)
        self._in_size = (max(1, int(height)), self.width)

    def apply(self, x):
        return F.horizontal_flip(x)

    def apply_coords(self, coords):
        coords = np.array(coords, dtype=np.float64).reshape(-1, 2)
        coords[:, 0] = self.width - coords[:, 0]
        return coords


class VFlipTransform(Transform):
    def __init__(self, height: int, width: int = 1):
        self.height = int(height)
        self._in_size = (self.height, max(1, int(width)))

    def apply(self, x):
        return F.vertical_flip(x)

    def apply_coords(self, coords):
        coords = np.array(coords, dtype=np.float64).reshape(-1, 2)
        coords[:, 1] = self.height - coords[:, 1]
        return coords


class CropTransform(Transform):
    """Keep the window [x0, x0 + w) x [y0, y0 + h) (v2.functional.crop). Coordinates shift by (-x0, -y0);
    clipping boxes to the new image (and dropping the empty ones) is the caller's job."""

    def __init__(self, x0: int, y0: int, w: int, h: int, orig_h: int | None = None, orig_w: int | None = None):
        self.x0, self.y0, self.w, self.h = int(x0), int(y0), int(w), int(h)
        self._in_size = (int(orig_h or self.y0 + self.h), int(orig_w or self.x0 + self.w))

    def apply(self, x):
        return F.crop(x, top=self.y0, left=self.x0, height=self.h, width=self.w)

    def apply_coords(self, coords):
        coords = np.array(coords, dtype=np.float64).reshape(-1, 2)
        coords[:, 0] -= self.x0
        coords[:, 1] -= self.y0
        return coords

    def output_size(self, h, w):
        return self.h, self.w


class PadTransform(Transform):
    """Pad an (h, w) image on the right and bottom to (new_h, new_w) with `pad_value` (masks with 0) using
    v2.functional.pad; coordinates do not move."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int, pad_value: float = 128.0):
        self.h, self.w, self.new_h, self.new_w = int(h), int(w), int(new_h), int(new_w)
        if self.new_h < self.h or self.new_w < self.w:
            raise ValueError(f"PadTransform cannot shrink {self.h}x{self.w} to {self.new_h}x{self.new_w}")
        self.pad_value = float(pad_value)
        self._in_size = (self.h, self.w)

    def apply(self, x):
        padding = [0, 0, self.new_w - self.w, self.new_h - self.h]  # left, top, right, bottom
        if padding == [0, 0, 0, 0]:
            return x
        if isinstance(x, tv_tensors.Mask):
            return F.pad(x, padding, fill=0)
        if isinstance(x, tv_tensors.BoundingBoxes):
            return F.pad(x, padding)
        fill = self.pad_value if x.is_floating_point() else int(round(self.pad_value))
        return F.pad(x, padding, fill=fill)

    def apply_coords(self, coords):
        return np.array(coords, dtype=np.float64).reshape(-1, 2)

    def output_size(self, h, w):
        return self.new_h, self.new_w


class PhotometricTransform(Transform):
    """Brightness, contrast, saturation (factors, 1 = unchanged) and hue (shift in [-0.5, 0.5]) with the v2
    colour ops, in that order, on images only; boxes, masks and points are returned unchanged. `bgr`: the image
    channels are B, G, R (INPUT.FORMAT="BGR"); they are viewed as RGB for the ops and put back. One-channel
    images get brightness and contrast only."""

    def __init__(self, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0, hue: float = 0.0,
                 bgr: bool = True):
        self.brightness, self.contrast, self.saturation, self.hue = (float(brightness), float(contrast),
                                                                     float(saturation), float(hue))
        self.bgr = bool(bgr)
        self._in_size = (1, 1)

    def apply(self, x):
        if isinstance(x, (tv_tensors.BoundingBoxes, tv_tensors.Mask)):
            return x
        img = x.as_subclass(torch.Tensor)
        if img.is_floating_point():  # v2's colour ops take floats on [0, 1]: a 0-255 float image would be clipped
            raise TypeError("PhotometricTransform works on uint8 images; a floating image (e.g. after "
                            "INPUT.RESIZE_METHOD='torchvision') must be distorted before it is resized")
        flip = self.bgr and img.shape[-3] == 3
        # the colour ops are ~10x slower on an (H, W, C)-strided view (what to_tv_image gives): make it (C, H, W)
        img = (img.flip(-3) if flip else img).contiguous()
        if self.brightness != 1.0:
            img = F.adjust_brightness(img, self.brightness)
        if self.contrast != 1.0:
            img = F.adjust_contrast(img, self.contrast)
        if self.saturation != 1.0:
            img = F.adjust_saturation(img, self.saturation)
        if self.hue != 0.0:
            img = F.adjust_hue(img, self.hue)
        if flip:
            img = img.flip(-3)
        return tv_tensors.wrap(img.contiguous(), like=x) if isinstance(x, tv_tensors.TVTensor) else img.contiguous()

    def apply_coords(self, coords):
        return np.asarray(coords, dtype=np.float64).reshape(-1, 2)

    def apply_box(self, boxes):
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


class RotationTransform(Transform):
    """Rotate by `angle` degrees counter-clockwise about the image centre. With `expand`, the canvas grows to hold
    the whole rotated image; otherwise it keeps its size (corners are cut). Uncovered pixels are 0.

    Hand-written (cv2.warpAffine), not v2: v2's rotate sizes the expanded canvas by its own rounding and maps
    integer pixel indices, which would change this module's output sizes and box coordinates. Boxes become the
    box enclosing the rotated corners; masks are warped nearest."""

    def __init__(self, h: int, w: int, angle: float, expand: bool = True, interp: int = cv2.INTER_LINEAR):
        self.h, self.w, self.angle, self.expand, self.interp = int(h), int(w), float(angle), expand, interp
        self._in_size = (self.h, self.w)
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

    def _warp(self, img: np.ndarray, interp: int) -> np.ndarray:
        if self.angle % 360 == 0:
            return img
        # cv2 maps pixel centres (integer indices); convert the continuous-coordinate matrix to index space
        m = self.matrix.copy()
        m[:, 2] += m[:, 0] * 0.5 + m[:, 1] * 0.5 - 0.5
        out = cv2.warpAffine(img, m, (self.out_w, self.out_h), flags=interp, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)
        return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out

    def apply(self, x):
        if isinstance(x, tv_tensors.BoundingBoxes):
            b = x.as_subclass(torch.Tensor).cpu().numpy().astype(np.float64).reshape(-1, 4)
            idx = np.array([[0, 1], [2, 1], [0, 3], [2, 3]])
            pts = self.apply_coords(b[:, idx].reshape(-1, 2)).reshape(-1, 4, 2)
            out = np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)
            return tv_tensors.BoundingBoxes(torch.as_tensor(out, dtype=x.dtype), format=x.format,
                                            canvas_size=(self.out_h, self.out_w), clamping_mode=x.clamping_mode)
        interp = cv2.INTER_NEAREST if isinstance(x, tv_tensors.Mask) else self.interp
        t = x.as_subclass(torch.Tensor)
        lead = t.shape[:-2]
        hwc = t.reshape(-1, *t.shape[-2:]).permute(1, 2, 0).cpu().numpy()
        chans = [self._warp(np.ascontiguousarray(hwc[:, :, i:i + 4]), interp) for i in range(0, hwc.shape[2], 4)]
        out = torch.from_numpy(np.concatenate(chans, axis=2)).permute(2, 0, 1).reshape(*lead, self.out_h, self.out_w)
        return tv_tensors.wrap(out.contiguous(), like=x) if isinstance(x, tv_tensors.TVTensor) else out.contiguous()

    def apply_image(self, img):
        return self._warp(np.asarray(img), self.interp)

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        return coords @ self.matrix[:, :2].T + self.matrix[:, 2]

    def output_size(self, h, w):
        return self.out_h, self.out_w


# ---------------------------------------------------------------------------- augmentations
class Augmentation:
    def get_transform(self, image, rng=None) -> Transform:
        """`image`: (H, W, C) numpy array or (C, H, W) tensor. `rng`: numpy Generator / RandomState, or None for
        numpy's global RNG."""
        raise NotImplementedError


class ResizeShortestEdge(Augmentation):
    """Resize so the short side is a length drawn from `short_edge_length` ("choice": one of the values; "range":
    an integer in [min, max]) and the long side is at most `max_size` (0: no limit). A length of 0 keeps the image.

    `method` (INPUT.RESIZE_METHOD; see ResizeTransform for the pixels) also sets the output-size rule:
    "pil": detectron2's ResizeShortestEdge.get_output_shape (short side = length, long side = length / short *
    long, both scaled down to max_size if the long one exceeds it, then int(x + 0.5)); "bilinear": this module's
    earlier rule (each side times length / short, then the same max_size cap and rounding: one pixel off
    detectron2's where a side lands on .5 up to float error, e.g. a 1:2 image at 800 / 1333 gets 667 against 666);
    "torchvision": GeneralizedRCNNTransform's (scale = min(length / short, max_size / long) as a Python float,
    each side floor(side * scale), as F.interpolate's recompute_scale_factor does). The length is drawn the same
    way for every method (torchvision's torch_choice picks among its min sizes; ours from numpy's RNG)."""

    def __init__(self, short_edge_length, max_size: int = 0, sample_style: str = "range",
                 interp: InterpolationMode = InterpolationMode.BILINEAR, method: str = "pil"):
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        short_edge_length = tuple(int(s) for s in short_edge_length)
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got {sample_style!r}")
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(f"'range' sampling needs (min, max) sizes, got {short_edge_length}")
        self.short_edge_length, self.max_size, self.sample_style, self.interp = (
            short_edge_length, int(max_size), sample_style, interp)
        self.method = _check_resize_method(method)

    @staticmethod
    def get_output_shape(h: int, w: int, short_edge: int, max_size: int, method: str = "pil") -> tuple[int, int]:
        """(new_h, new_w) for an (h, w) image, short side `short_edge`, long side at most `max_size` (0: no cap)."""
        _check_resize_method(method)
        if method == "torchvision":
            scale = short_edge / min(h, w)
            if max_size > 0:
                scale = min(scale, max_size / max(h, w))
            return max(1, math.floor(float(h) * scale)), max(1, math.floor(float(w) * scale))
        if method == "pil":  # detectron2's arithmetic, step by step (the float results decide the .5 cases)
            size = short_edge * 1.0
            scale = size / min(h, w)
            new_h, new_w = (size, scale * w) if h < w else (scale * h, size)
        else:
            scale = short_edge / min(h, w)
            new_h, new_w = h * scale, w * scale
        if max_size > 0 and max(new_h, new_w) > max_size:
            s = max_size * 1.0 / max(new_h, new_w)
            new_h, new_w = new_h * s, new_w * s
        return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))

    def get_transform(self, image, rng=None):
        h, w = _hw(image)
        if self.sample_style == "range":
            size = _randint(rng, self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = int(_np(rng).choice(self.short_edge_length))
        if size == 0:
            return NoOpTransform()
        new_h, new_w = self.get_output_shape(h, w, size, self.max_size, self.method)
        return ResizeTransform(h, w, new_h, new_w, self.interp, self.method)


class RandomFlip(Augmentation):
    def __init__(self, prob: float = 0.5, horizontal: bool = True, vertical: bool = False):
        if horizontal == vertical:
            raise ValueError("RandomFlip: choose exactly one of horizontal or vertical")
        self.prob, self.horizontal = float(prob), horizontal

    def get_transform(self, image, rng=None):
        h, w = _hw(image)
        if _rand(rng) < self.prob:
            return HFlipTransform(w, h) if self.horizontal else VFlipTransform(h, w)
        return NoOpTransform()


class RandomRotation(Augmentation):
    """Rotate by an angle drawn uniformly from `angle` = (min, max) degrees (a single number a means (-a, a))."""

    def __init__(self, angle, expand: bool = True, interp: int = cv2.INTER_LINEAR):
        if isinstance(angle, (int, float)):
            angle = (-abs(float(angle)), abs(float(angle)))
        self.angle, self.expand, self.interp = (float(angle[0]), float(angle[1])), expand, interp

    def get_transform(self, image, rng=None):
        h, w = _hw(image)
        a = _uniform(rng, self.angle[0], self.angle[1])
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

    def get_crop_size(self, h: int, w: int, rng=None) -> tuple[int, int]:
        a, b = self.crop_size
        if self.crop_type == "relative":
            return max(1, int(h * a + 0.5)), max(1, int(w * b + 0.5))
        if self.crop_type == "relative_range":
            fa, fb = np.asarray([a, b]) + _rand(rng, 2) * (1 - np.asarray([a, b]))
            return max(1, int(h * fa + 0.5)), max(1, int(w * fb + 0.5))
        if self.crop_type == "absolute":
            return min(int(a), h), min(int(b), w)
        lo, hi = int(a), int(b)
        if hi < lo:
            raise ValueError(f"INPUT.CROP.SIZE for 'absolute_range' must be (min, max), got {self.crop_size}")
        return _randint(rng, min(h, lo), min(h, hi) + 1), _randint(rng, min(w, lo), min(w, hi) + 1)

    def get_transform(self, image, rng=None):
        h, w = _hw(image)
        ch, cw = self.get_crop_size(h, w, rng)
        if (ch, cw) == (h, w):
            return NoOpTransform()
        y0 = _randint(rng, 0, h - ch + 1)
        x0 = _randint(rng, 0, w - cw + 1)
        return CropTransform(x0, y0, cw, ch, h, w)


class ResizeScale(Augmentation):
    """Large-scale jitter, step 1 (detectron2's ResizeScale): draw s uniformly in [min_scale, max_scale] and
    resize, keeping the aspect ratio, to fit in (s * target_height, s * target_width), with ResizeTransform's
    `method` (build_augmentation passes INPUT.RESIZE_METHOD; detectron2's ResizeScale resizes with PIL, "pil")."""

    def __init__(self, min_scale: float, max_scale: float, target_height: int, target_width: int,
                 interp: InterpolationMode = InterpolationMode.BILINEAR, method: str = "bilinear"):
        if not (0 < float(min_scale) <= float(max_scale)):
            raise ValueError(f"INPUT.LSJ.SCALE_RANGE must be (min, max) with 0 < min <= max, "
                             f"got ({min_scale}, {max_scale})")
        if int(target_height) < 1 or int(target_width) < 1:
            raise ValueError(f"INPUT.LSJ.SIZE must be positive, got ({target_height}, {target_width})")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.target_height, self.target_width, self.interp = int(target_height), int(target_width), interp
        self.method = _check_resize_method(method)

    def get_transform(self, image, rng=None):
        h, w = _hw(image)
        s = _uniform(rng, self.min_scale, self.max_scale)
        scale = min(s * self.target_height / h, s * self.target_width / w)
        new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if (new_h, new_w) == (h, w):
            return NoOpTransform()
        return ResizeTransform(h, w, new_h, new_w, self.interp, method=self.method)


class FixedSizeCrop(Augmentation):
    """Large-scale jitter, step 2 (detectron2's FixedSizeCrop): a random crop_size window of an image larger than
    crop_size (one uniform draw places the window along both axes), then, if `pad`, pad right/bottom to exactly
    crop_size with `pad_value`."""

    def __init__(self, crop_size, pad: bool = True, pad_value: float = 128.0):
        crop_size = tuple(int(v) for v in crop_size)
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"INPUT.LSJ.SIZE must be two positive integers (H, W), got {crop_size}")
        self.crop_size, self.pad, self.pad_value = crop_size, bool(pad), float(pad_value)

    def get_transform(self, image, rng=None):
        h, w = _hw(image)
        ch, cw = self.crop_size
        max_off = np.maximum(np.subtract((h, w), (ch, cw)), 0)
        off = np.round(max_off * _uniform(rng, 0.0, 1.0)).astype(int)
        out_h, out_w = min(ch, h), min(cw, w)
        tfms: list[Transform] = []
        if (out_h, out_w) != (h, w):
            tfms.append(CropTransform(int(off[1]), int(off[0]), out_w, out_h, h, w))
        if self.pad and (out_h, out_w) != (ch, cw):
            tfms.append(PadTransform(out_h, out_w, ch, cw, self.pad_value))
        return TransformList(tfms)


class RandomPhotometricDistort(Augmentation):
    """Photometric distortion (ColorJitter's ranges): brightness, contrast, saturation factors drawn in
    [1 - s, 1 + s] and a hue shift in [-hue, hue]; a strength of 0 leaves that property alone (no draw)."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                 image_format: str = "BGR"):
        for name, v, hi in (("BRIGHTNESS", brightness, 1.0), ("CONTRAST", contrast, 1.0),
                            ("SATURATION", saturation, 1.0), ("HUE", hue, 0.5)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= hi):
                raise ValueError(f"INPUT.PHOTOMETRIC.{name} must be a number in [0, {hi}], got {v!r}")
        self.brightness, self.contrast, self.saturation, self.hue = (float(brightness), float(contrast),
                                                                     float(saturation), float(hue))
        self.bgr = image_format == "BGR"

    def get_transform(self, image, rng=None):
        def factor(s):
            return _uniform(rng, 1.0 - s, 1.0 + s) if s > 0 else 1.0

        b, c, s = factor(self.brightness), factor(self.contrast), factor(self.saturation)
        hue = _uniform(rng, -self.hue, self.hue) if self.hue > 0 else 0.0
        if (b, c, s, hue) == (1.0, 1.0, 1.0, 0.0):
            return NoOpTransform()
        return PhotometricTransform(b, c, s, hue, bgr=self.bgr)


def apply_augmentations_v2(augs: list[Augmentation], image: torch.Tensor, rng=None
                           ) -> tuple[torch.Tensor, TransformList]:
    """(C, H, W) image tensor -> the augmented image and the `TransformList` to apply to boxes, masks (`.apply`)
    and polygons (`.apply_polygons`)."""
    tfms = []
    for aug in augs:
        t = aug.get_transform(image, rng)
        image = t.apply(image)
        tfms.append(t)
    return image, TransformList(tfms)


def apply_augmentations(augs: list[Augmentation], image: np.ndarray, rng=None) -> tuple[np.ndarray, TransformList]:
    """(H, W, C) numpy image -> the augmented numpy image and its `TransformList`."""
    out, tfm = apply_augmentations_v2(augs, to_tv_image(image), rng)
    out = from_tv_image(out)
    return (out[:, :, 0] if np.asarray(image).ndim == 2 else out), tfm


def build_augmentation(cfg, is_train: bool) -> list[Augmentation]:
    """INPUT.* -> augmentations.

    Training: [photometric if INPUT.PHOTOMETRIC.ENABLED], then either large-scale jitter (INPUT.LSJ.ENABLED:
    flip, ResizeScale in SCALE_RANGE of SIZE, FixedSizeCrop to SIZE padded with PAD_VALUE; MIN/MAX_SIZE_TRAIN
    are not used) or [crop if INPUT.CROP.ENABLED], multi-scale resize, flip, rotation if INPUT.ROTATION_ANGLE.
    Test: resize to MIN_SIZE_TEST / MAX_SIZE_TEST. Both resizes (train and test) follow INPUT.RESIZE_METHOD
    ("pil", "bilinear" or "torchvision", see ResizeShortestEdge / ResizeTransform); the large-scale jitter's
    ResizeScale always resizes "bilinear" (v2, uint8) and rotation is cv2's warpAffine, whatever the method."""
    method = cfg.INPUT.RESIZE_METHOD
    if method not in RESIZE_METHODS:
        raise ValueError(f"INPUT.RESIZE_METHOD must be one of {RESIZE_METHODS}, got {method!r}")
    if not is_train:
        return [ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice", method=method)]
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("none", "horizontal", "vertical"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'none', 'horizontal' or 'vertical', got {flip!r}")
    flips = [RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical")] if flip != "none" else []
    augs: list[Augmentation] = []
    ph, lsj = cfg.INPUT.PHOTOMETRIC, cfg.INPUT.LSJ
    # pixels only: first, so LSJ padding keeps its value and the image is still uint8 (a "torchvision" resize
    # makes it float)
    if ph.ENABLED:
        augs.append(RandomPhotometricDistort(ph.BRIGHTNESS, ph.CONTRAST, ph.SATURATION, ph.HUE, cfg.INPUT.FORMAT))
    if lsj.ENABLED:
        if cfg.INPUT.CROP.ENABLED or cfg.INPUT.ROTATION_ANGLE:
            raise ValueError("INPUT.LSJ.ENABLED cannot be combined with INPUT.CROP.ENABLED or INPUT.ROTATION_ANGLE "
                             "(large-scale jitter does its own crop to a fixed size); turn one of them off")
        size = list(lsj.SIZE)
        if len(size) != 2:
            raise ValueError(f"INPUT.LSJ.SIZE must be (H, W), got {lsj.SIZE}")
        if len(list(lsj.SCALE_RANGE)) != 2:
            raise ValueError(f"INPUT.LSJ.SCALE_RANGE must be (min, max), got {lsj.SCALE_RANGE}")
        lo, hi = lsj.SCALE_RANGE
        return augs + flips + [ResizeScale(lo, hi, size[0], size[1], method=method),
                               FixedSizeCrop(size, pad=True, pad_value=lsj.PAD_VALUE)]
    if cfg.INPUT.CROP.ENABLED:  # crop first, then resize (as detectron2)
        augs.append(RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    augs.append(ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                   cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, method=method))
    augs += flips
    if cfg.INPUT.ROTATION_ANGLE:
        augs.append(RandomRotation(float(cfg.INPUT.ROTATION_ANGLE)))
    return augs
