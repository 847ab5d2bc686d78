"""data/masks.py and load_coco_json's segmentation checks: RLE strings parsed as pycocotools writes them, bad
polygons and bad RLE named (file, record, field) at load time, good ones rasterised as pycocotools does."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from resnet_backbone.data import DatasetError, load_coco_json
from resnet_backbone.data.masks import check_rle, rle_counts, segmentation_to_mask


def _runs(m: np.ndarray) -> list[int]:
    """Column-major runs of 0s and 1s, starting with 0s (COCO's uncompressed RLE), by numpy."""
    flat = m.reshape(-1, order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])) != 0)
    return np.diff(np.concatenate([[0], edges])).tolist()


def test_rle_strings_parse_as_pycocotools_writes_them():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        rle = mask_util.encode(np.asfortranarray(m))
        runs = rle_counts(rle["counts"].decode("ascii"))
        assert sum(runs) == h * w
        # the runs, re-expanded, are pycocotools' decoded mask
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
        np.testing.assert_array_equal(flat.reshape((w, h)).T, mask_util.decode(rle))


def test_segmentations_rasterise_as_pycocotools():
    m = np.zeros((30, 40), np.uint8)
    m[5:20, 8:33] = 1
    m[22:28, 2:6] = 1
    compressed = mask_util.encode(np.asfortranarray(m))
    for seg in ({"size": [30, 40], "counts": compressed["counts"].decode()}, {"size": [30, 40], "counts": _runs(m)}):
        np.testing.assert_array_equal(segmentation_to_mask(seg, 30, 40), m)
    polys = [[8, 5, 33, 5, 33, 20, 8, 20], [2.5, 22.5, 6, 22, 4, 28.5]]
    ref = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, 30, 40)))
    out = segmentation_to_mask(polys + [[1, 1, 2, 2]], 30, 40)  # a two-point polygon beside them is dropped
    assert out.dtype == np.uint8 and out.sum() > 300
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("seg,match", [
    ({"size": [30, 40], "counts": "0P"}, "ends inside a run"),      # "P": 0x20 set, more follows
    ({"size": [30, 40], "counts": "0O;"}, "negative"),              # "O": the sign bit
    ({"size": [30, 40], "counts": "0\x7f"}, "does not decode"),     # not an RLE character
    ({"size": [30, 40], "counts": [600, 600, 10]}, "cover 1210 pixels"),
    ({"size": [30, 40], "counts": [1300, -100]}, "negative"),
    ({"size": [30, 40], "counts": [1.5, 1198.5]}, "integers"),
    ({"size": [31, 40], "counts": [1240]}, "image is 30x40"),
])
def test_bad_rle_refused(seg, match):
    with pytest.raises(DatasetError, match=match) as ei:
        check_rle(seg, 30, 40, file="f.json", record="annotation id=9")
    assert ei.value.field == "segmentation" and ei.value.record == "annotation id=9"


def _coco(tmp_path, seg):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0,
                             "segmentation": seg}],
            "categories": [{"id": 1, "name": "x"}]}
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return str(p)


@pytest.mark.parametrize("seg,match", [
    ([[2, 2, 12, 2, 12]], "odd number"),
    ([[2, 2, 12, 2]], "3 points"),                                  # the only polygon: 2 points
    ([[2, 2, 12, 2], [1, 1]], "3 points"),                          # none with 3 points
    ([[2, 2, 12, 2, 12, "nan"]], "finite"),
    ({"size": [30, 40], "counts": "0P"}, "does not decode"),
    ({"size": [40, 30], "counts": [1200]}, "image is 30x40"),       # width and height swapped
    ({"size": [30, 40], "counts": [1000]}, "cover 1000 pixels"),
])
def test_bad_segmentation_named_at_load_time(tmp_path, seg, match):
    path = _coco(tmp_path, seg)
    if seg == [[2, 2, 12, 2, 12, "nan"]]:  # json cannot hold NaN as a number: write it as the token NaN
        path_text = open(path).read().replace('"nan"', "NaN")
        open(path, "w").write(path_text)
    with pytest.raises(DatasetError, match=match) as ei:
        load_coco_json(path, str(tmp_path))
    e = ei.value
    assert (e.file, e.record, e.field) == (path, "annotation id=5", "segmentation")
    assert path in str(e) and "annotation id=5" in str(e)


def test_good_segmentations_load(tmp_path):
    m = np.zeros((30, 40), np.uint8)
    m[3:9, 4:11] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    for seg in ({"size": [30, 40], "counts": rle["counts"].decode()}, {"size": [30, 40], "counts": _runs(m)},
                [[2, 2, 12, 2, 12, 12], [1, 1, 2, 2]]):
        (rec,) = load_coco_json(_coco(tmp_path, seg), str(tmp_path))
        got = rec["annotations"][0]["segmentation"]
        assert got == (seg if isinstance(seg, dict) else [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0]])
