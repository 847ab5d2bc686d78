"""Comparing two detectors' detections: equal boxes, scores and labels in the same order, except that detections
whose scores tie to within `tie` may come in either order (two implementations' float noise, ~1e-7 on the
scores, decides the order of a tie in NMS and sorting, and differs between CPU kinds)."""
import torch


def assert_same_detections(boxes, scores, labels, ref_boxes, ref_scores, ref_labels, box_atol=1e-3,
                           score_atol=1e-5, tie=1e-6):
    assert len(boxes) == len(ref_boxes), f"{len(boxes)} detections, the reference {len(ref_boxes)}"
    torch.testing.assert_close(scores, ref_scores, atol=score_atol, rtol=0)  # sorted: a swapped tie still fits
    # runs of reference positions whose neighbouring scores tie form one group, compared as a set
    start = 0
    for i in range(1, len(ref_scores) + 1):
        if i < len(ref_scores) and float(ref_scores[i - 1] - ref_scores[i]) < tie:
            continue
        group = slice(start, i)
        close = (boxes[group][:, None] - ref_boxes[group][None]).abs().amax(-1) <= box_atol
        close &= labels[group][:, None] == ref_labels[group][None]
        assert bool(close.any(1).all()) and bool(close.any(0).all()), (
            f"detections {start}..{i - 1} differ: {boxes[group].tolist()} {labels[group].tolist()} vs "
            f"{ref_boxes[group].tolist()} {ref_labels[group].tolist()}")
        start = i
