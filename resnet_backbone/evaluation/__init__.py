"""Evaluation: the DatasetEvaluator interface, the inference loop and COCO box AP."""
from .coco_evaluation import COCOEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_on_dataset

__all__ = ["COCOEvaluator", "DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset"]
