"""Export for deployment: TorchScript, ONNX (run by onnxruntime) and torch.export (docs/EXPORT.md).

`export_model(cfg, weights, format, output_dir)` writes the exported file and export.json; `load_exported(dir)`
runs it; `db_polygons` is DBNet's polygon post-processing on the exported maps.
"""
from .exporter import FORMATS, PARTS, ExportError, build_export_graph, check_exportable, export_model
from .runtime import ExportedModel, db_polygons, load_exported, onnx_session, run_onnx

__all__ = ["FORMATS", "PARTS", "ExportError", "ExportedModel", "build_export_graph", "check_exportable",
           "db_polygons", "export_model", "load_exported", "onnx_session", "run_onnx"]
