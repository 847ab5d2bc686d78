"""Running an exported model: load the file `export_model` wrote and call it on an image.

    model = load_exported("output/export")          # the folder (reads export.json) or the model file
    out = model(image)                               # float32 (3, H, W) 0-255 in INPUT.FORMAT, already resized
    out["boxes"], out["scores"], out["labels"]       # numpy arrays (DBNet: "prob", "thresh"; backbone: "res2"..)
    regions = db_polygons(out["prob"], **model.metadata["db_postprocess"])   # DBNet's polygons

TorchScript runs through torch.jit.load, an ExportedProgram through torch.export.load, ONNX through an
onnxruntime InferenceSession on the CPU (`run_onnx(session, image)` is the one call a benchmark needs).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..modeling.text.postprocess import db_postprocess
from .exporter import MODEL_FILES, ExportError

__all__ = ["ExportedModel", "load_exported", "run_onnx", "onnx_session", "db_polygons"]


def onnx_session(path: str, threads: int | None = None):
    """An onnxruntime InferenceSession on the CPU for `path` (`threads`: intra-op threads, default ORT's)."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - pinned in requirements.txt
        raise ExportError("running an ONNX export needs onnxruntime (pip install -r requirements.txt)") from e
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session, image) -> dict[str, np.ndarray]:
    """Run an onnxruntime session of an exported model on one input (tensor or array): {output name: array}."""
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


class ExportedModel:
    """An exported file with its export.json: `__call__(image)` -> {output name: numpy array}."""

    def __init__(self, path: str, threads: int | None = None):
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        meta_path = os.path.join(folder, "export.json")
        if not os.path.isfile(meta_path):
            raise ExportError(f"{meta_path}: no export.json beside the exported model (write it with export_model)")
        with open(meta_path) as f:
            self.metadata = json.load(f)
        self.format = self.metadata.get("format")
        if self.format not in MODEL_FILES:
            raise ExportError(f"{meta_path}: key 'format' is {self.format!r}, expected one of {', '.join(MODEL_FILES)}")
        self.path = path if not os.path.isdir(path) else os.path.join(folder, self.metadata["file"])
        if not os.path.isfile(self.path):
            raise ExportError(f"{self.path}: the exported model named in {meta_path} does not exist")
        self.output_names = list(self.metadata["outputs"])
        if self.format == "onnx":
            self._run = onnx_session(self.path, threads)
        elif self.format == "exported_program":
            self._run = torch.export.load(self.path).module()
        else:
            self._run = torch.jit.load(self.path, map_location="cpu")

    def __call__(self, image) -> dict[str, np.ndarray]:
        if self.format == "onnx":
            return run_onnx(self._run, image)
        x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image, dtype=torch.float32)
        with torch.no_grad():
            out = self._run(x)
        return {k: v.detach().cpu().numpy() for k, v in zip(self.output_names, out)}


def load_exported(path: str, threads: int | None = None) -> ExportedModel:
    """The exported model in folder `path` (or the model file `path`, export.json beside it)."""
    return ExportedModel(path, threads)


def db_polygons(prob, output_size: tuple[int, int] | None = None, **postprocess_args) -> dict:
    """DBNet's post-processing on an exported "prob" map (H, W): what `DBNet.postprocess` returns for one image,
    as numpy: {"polygons" (min-area quads), "contours", "boxes" (K, 4) xyxy, "scores", "labels"}. `output_size`
    (height, width) rescales to the original image; `postprocess_args` are export.json's "db_postprocess"."""
    prob = prob.detach().float().cpu().numpy() if isinstance(prob, torch.Tensor) else np.asarray(prob, np.float32)
    r = db_postprocess(prob, output_size=output_size, **postprocess_args)
    quads = r["quads"]
    boxes = np.array([[q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()] for q in quads],
                     dtype=np.float32).reshape(-1, 4)
    return {"polygons": quads, "contours": r["polygons"], "boxes": boxes, "scores": r["scores"],
            "labels": np.zeros(len(quads), dtype=np.int64)}
