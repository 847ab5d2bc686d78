"""DatasetError messages stay readable whatever the bad value: each part (file, record, field, reason) is
bounded, so a 20 MB file_name cannot fill the log (or stderr) with tens of megabytes."""
import json
import pickle
import traceback

import pytest

from resnet_backbone.data import DatasetError, load_coco_json
from resnet_backbone.data.dataset_mapper import DatasetMapper
from resnet_backbone.data.errors import short_repr, shorten

HUGE = 20 * 1024 * 1024  # 20 MB, as in the reported file


def test_huge_file_record_field_and_reason_are_bounded():
    big = "d" * HUGE + "/img_1.jpg"
    e = DatasetError("reason " + "r" * HUGE, file=big, record="x" * HUGE, field="f" * HUGE)
    msg = str(e)
    assert len(msg) < 2500
    assert msg.startswith("file 'ddd") and "img_1.jpg" in msg  # the start and the tail (the base name) stay
    assert f"({len(big)} characters)" in msg and f"({HUGE} characters)" in msg
    # the attributes keep the full values for programs; the message is what a person reads
    assert e.file == big and e.record == "x" * HUGE
    # the one-argument form (rebuilt in a DataLoader worker) is bounded too
    assert len(str(DatasetError("m" * HUGE))) < 2500
    again = pickle.loads(pickle.dumps(e))
    assert again.file == big and str(again) == msg


def test_short_values_unchanged_and_helpers_bounded():
    e = DatasetError("bbox must be 4 numbers", file="/data/a.json", record="annotation id=3", field="bbox")
    assert str(e) == "file '/data/a.json', record annotation id=3, field 'bbox': bbox must be 4 numbers"
    assert shorten("abc") == "abc" and len(shorten("z" * 10_000)) < 260
    assert short_repr("ab") == "'ab'"
    assert len(short_repr("q" * HUGE)) < 260 and f"({HUGE} characters)" in short_repr("q" * HUGE)
    assert len(short_repr(list(range(100_000)))) < 260
    assert len(short_repr({"k" * 1000: ["v" * 1000] * 1000})) < 260
    assert short_repr(10 ** 5000).startswith("<int")  # repr() itself refuses ints this long


def test_huge_file_name_in_coco_json_gives_a_short_error(tmp_path):
    """The reported case: a 20 MB file_name; the image cannot be found. The whole traceback (the mapper's error
    and the one it chains from) stays small, and still names the image record."""
    name = "p" * HUGE + ".jpg"
    data = {"images": [{"id": 1, "file_name": name, "width": 64, "height": 48}], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}]}
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(data))
    records = load_coco_json(str(path), str(tmp_path))
    with pytest.raises(DatasetError) as ei:
        DatasetMapper(None, True)(records[0])
    text = "".join(traceback.format_exception(ei.value))
    assert len(text) < 20_000, len(text)
    assert "image_id=1" in str(ei.value) and "file_name" in str(ei.value)
    # a non-string huge value is bounded in the loader's own message
    data["images"][0]["file_name"] = ["p" * 1000] * 20_000
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as ei:
        load_coco_json(str(path), str(tmp_path))
    assert len(str(ei.value)) < 2500 and ei.value.field == "file_name" and str(path) in str(ei.value)
