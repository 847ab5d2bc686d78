"""pycocotools itself, as the reference the evaluation tests compare with."""
import contextlib
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def detections_to_coco(inputs, outputs, category_of) -> list[dict]:
    """Our eval outputs ({"boxes" xyxy, "scores", "labels"} per input) as COCO results; `category_of[label]` is
    the json's category id of a contiguous label."""
    return [{"image_id": inp["image_id"], "category_id": category_of[int(label)], "score": float(score),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for inp, out in zip(inputs, outputs)
            for b, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist())]


def pycocotools_bbox_stats(json_file, results: list[dict]):
    """COCOeval's 12 bbox stats (AP, AP50, ... as fractions) of `results` against `json_file`, quietly."""
    return pycocotools_stats(json_file, results, "bbox")


def pycocotools_stats(json_file, results: list[dict], iou_type: str):
    """COCOeval's 12 stats of `iou_type` ("bbox" or "segm") for `results` against `json_file`, quietly. Each task
    sees only its own field, as COCO's protocol and detectron2 have it (a segm result with a "bbox" would get its
    area from the box in loadRes)."""
    other = "segmentation" if iou_type == "bbox" else "bbox"
    results = [{k: v for k, v in r.items() if k != other} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_file))
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats
