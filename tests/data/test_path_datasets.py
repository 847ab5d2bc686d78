"""Datasets given by path in DATASETS.TRAIN / TEST: 'instances.json:images' (COCO or COCO-style text) and
'gts_dir:images' (ICDAR), registered on the fly with their metadata; missing files named early."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.config.validate import validate_cfg
from resnet_backbone.data import DatasetCatalog, DatasetError, MetadataCatalog
from resnet_backbone.data.builtin import (
    dataset_folder_name,
    parse_dataset_path,
    register_cfg_datasets,
    register_path_dataset,
)

CAT_IDS = [1000007, 5, 42]  # not contiguous, not sorted, one large


def _write_coco(root, name="train.json", image_dir="img"):
    img_dir = root / image_dir
    (img_dir / "sub").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(img_dir / "sub" / "a.png")
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(img_dir / "b.jpg")
    data = {
        "images": [{"id": 11, "file_name": "sub/a.png", "width": 50, "height": 40},
                   {"id": 12, "file_name": "b.jpg", "width": 50, "height": 40}],
        "annotations": [{"id": 1, "image_id": 11, "category_id": 1000007, "bbox": [2, 3, 10, 12]},
                        {"id": 2, "image_id": 11, "category_id": 5, "bbox": [20, 3, 10, 12], "iscrowd": 1},
                        {"id": 3, "image_id": 12, "category_id": 42, "bbox": [5, 5, 20, 20]}],
        "categories": [{"id": c, "name": f"c{c}"} for c in CAT_IDS],
    }
    (root / name).write_text(json.dumps(data))
    return root / name, img_dir


@pytest.fixture
def clean_catalog():
    """Forget the path entries a test registered (the catalogs are process-wide)."""
    from resnet_backbone.data import builtin

    before = set(DatasetCatalog)
    yield
    for name in set(DatasetCatalog) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.pop(name, None)
        builtin._PATH_KINDS.pop(name, None)


def test_parse_rule():
    assert parse_dataset_path("a/train.json:a/img") == ("json", "a/train.json", "a/img")
    assert parse_dataset_path("d:x/t.JSON:img") == ("json", "d:x/t.JSON", "img")  # last ':' after a .json
    assert parse_dataset_path("a/gts:a/images") == ("icdar", "a/gts", "a/images")
    for name in ("coco_2017_val", "my:set", "", "a.json"):
        assert parse_dataset_path(name) is None


def test_parse_prefers_existing_json_and_directories(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    entry = f"{tmp_path}/x.json:imgs/y.json:z"  # the image folder's name has '.json:' in it
    assert parse_dataset_path(entry) == ("json", f"{tmp_path}/x.json", "imgs/y.json:z")
    gts = tmp_path / "gt:s"  # a folder with ':' in its name
    gts.mkdir()
    assert parse_dataset_path(f"{gts}:{tmp_path}/im:g") == ("icdar", str(gts), f"{tmp_path}/im:g")


@settings(max_examples=40, deadline=None)
@given(json_part=st.text("ab:._-", min_size=1, max_size=8), images=st.text("ab:._-/", min_size=1, max_size=12))
def test_parse_fuzz_existing_json_wins(tmp_path_factory, json_part, images):
    """Whatever ':' the json's own name and the image folder contain, an existing json is split off exactly."""
    d = tmp_path_factory.mktemp("p")
    js = d / f"{json_part}.json"
    js.write_text("{}")
    assert parse_dataset_path(f"{js}:{images}") == ("json", str(js), images)


def test_coco_entry_registers_with_metadata_and_original_ids(tmp_path, clean_catalog, monkeypatch):
    js, img = _write_coco(tmp_path)
    monkeypatch.chdir(tmp_path)
    name = "train.json:img"  # relative to the current directory
    meta = MetadataCatalog.get(name)  # metadata first (as the trainer's evaluator asks): registers the entry
    assert meta.evaluator_type == "coco" and meta.json_file == str(js) and meta.image_root == str(img)
    # before the dataset is loaded: from the json's categories, in sorted id order
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 42: 1, 1000007: 2}
    assert meta.thing_classes == ["c5", "c42", "c1000007"]
    recs = DatasetCatalog.get(name)
    assert [r["file_name"] for r in recs] == [str(img / "sub" / "a.png"), str(img / "b.jpg")]
    assert [[a["category_id"] for a in r["annotations"]] for r in recs] == [[2, 0], [1]]
    assert [a["iscrowd"] for a in recs[0]["annotations"]] == [0, 1]
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 42: 1, 1000007: 2}  # the loader agrees


def test_coco_evaluator_maps_back_to_json_ids(tmp_path, clean_catalog):
    import torch

    from resnet_backbone.evaluation import COCOEvaluator

    js, img = _write_coco(tmp_path)
    name = f"{js}:{img}"
    ev = COCOEvaluator(name, str(tmp_path / "out"))
    ev.reset()
    ev.process([{"image_id": 11}], [{"boxes": torch.tensor([[2.0, 3, 12, 15], [5, 5, 25, 25]]),
                                     "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([2, 1])}])
    ev.process([{"image_id": 12}], [{"boxes": torch.tensor([[5.0, 5, 25, 25]]), "scores": torch.tensor([0.9]),
                                     "labels": torch.tensor([1])}])
    res = ev.evaluate()["bbox"]
    written = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert [r["category_id"] for r in written] == [1000007, 42, 42]
    assert res["AP-c1000007"] == pytest.approx(100.0) and res["AP-c42"] == pytest.approx(100.0)


def test_missing_files_are_named(tmp_path, clean_catalog):
    js, img = _write_coco(tmp_path)
    with pytest.raises(DatasetError, match="annotation json of dataset entry .* does not exist") as e:
        DatasetCatalog.get(f"{tmp_path}/nope.json:{img}")
    assert e.value.file == f"{tmp_path}/nope.json" and e.value.field == "json_file"
    with pytest.raises(DatasetError, match="image folder of dataset entry .* does not exist") as e:
        DatasetCatalog.get(f"{js}:{tmp_path}/no_images")
    assert e.value.file == f"{tmp_path}/no_images" and e.value.field == "image_root"
    with pytest.raises(DatasetError, match="names no image folder"):
        DatasetCatalog.get(f"{js}:")
    with pytest.raises(DatasetError, match="is a directory, not a json file"):
        (tmp_path / "d.json").mkdir()
        DatasetCatalog.get(f"{tmp_path}/d.json:{img}")
    with pytest.raises(DatasetError, match="ground-truth folder of dataset entry .* does not exist") as e:
        DatasetCatalog.get(f"{tmp_path}/gts:{img}")
    assert e.value.field == "gt_dir"
    assert not any(str(tmp_path) in n for n in DatasetCatalog)  # nothing half-registered


def test_unknown_name_keeps_listing_registered_names():
    with pytest.raises(KeyError, match=r"'no_such_set' is not registered; available: .*coco_2017_val.*"
                                       r"instances\.json:path/to/images"):
        DatasetCatalog.get("no_such_set")


def test_validate_cfg_names_key_and_path_before_anything(tmp_path, clean_catalog):
    js, img = _write_coco(tmp_path)
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (f"{tmp_path}/missing.json:{img}",)
    cfg.DATASETS.TEST = (f"{js}:{tmp_path}/missing_img",)
    with pytest.raises(ConfigError) as e:
        validate_cfg(cfg, world_size=1, model=False)  # the datasets only: no detector
    msg = str(e.value)
    assert "2 problems" in msg
    assert f"DATASETS.TRAIN: the annotation json of dataset entry '{tmp_path}/missing.json:{img}' does not " \
           f"exist" in msg and f"'{tmp_path}/missing.json'" in msg
    assert "DATASETS.TEST: the image folder" in msg and f"'{tmp_path}/missing_img'" in msg
    cfg.DATASETS.TRAIN = (f"{js}:{img}",)
    cfg.DATASETS.TEST = (f"{js}:{img}",)
    validate_cfg(cfg, world_size=1, model=False)  # fine now, and registered
    assert f"{js}:{img}" in DatasetCatalog


def _write_text(root):
    img = root / "timg"
    img.mkdir()
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(img / "img_1.jpg")
    data = {"images": [{"id": 1, "file_name": "img_1.jpg", "width": 48, "height": 32}],
            "annotations": [{"id": 1, "image_id": 1, "segmentation": [[2, 2, 20, 2, 20, 10, 2, 10]],
                             "transcription": "hi"},
                            {"id": 2, "image_id": 1, "bbox": [25, 12, 10, 8], "transcription": "###"}]}
    (root / "text.json").write_text(json.dumps(data))
    gts = root / "gts"
    gts.mkdir()
    (gts / "gt_img_1.txt").write_text("2,2,20,2,20,10,2,10,hello\n25,12,35,12,35,20,25,20,###\n")
    return root / "text.json", gts, img


def test_text_model_loads_json_entries_as_text(tmp_path, clean_catalog):
    js, gts, img = _write_text(tmp_path)
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "DBNet"
    cfg.DATASETS.TRAIN = (f"{js}:{img}",)
    cfg.DATASETS.TEST = (f"{gts}:{img}",)
    assert register_cfg_datasets(cfg) == [f"{js}:{img}", f"{gts}:{img}"]
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert MetadataCatalog.get(name).evaluator_type == "text"
        recs = DatasetCatalog.get(name)
        assert len(recs) == 1 and [a["ignore"] for a in recs[0]["annotations"]] == [False, True]
        assert recs[0]["annotations"][0]["transcription"] in ("hi", "hello")
    assert MetadataCatalog.get(f"{gts}:{img}").gt_dir == str(gts)
    assert MetadataCatalog.get(f"{js}:{img}").thing_classes == ["text"]


def test_same_entry_for_a_detector_then_a_text_model(tmp_path, clean_catalog):
    js, _, img = _write_text(tmp_path)
    name = f"{js}:{img}"
    assert register_path_dataset(name) == "coco"
    assert MetadataCatalog.get(name).evaluator_type == "coco"
    assert register_path_dataset(name, text=True) == "text"  # re-registered for the text model
    assert MetadataCatalog.get(name).evaluator_type == "text"
    assert DatasetCatalog.get(name)[0]["annotations"][1]["ignore"] is True


def test_registered_name_wins_and_folder_names(tmp_path, clean_catalog):
    js, img = _write_coco(tmp_path)
    name = f"{js}:{img}"
    DatasetCatalog.register(name, lambda: [{"image_id": 1}])  # the user's own registration of that string
    assert register_path_dataset(name) == "coco"
    assert DatasetCatalog.get(name) == [{"image_id": 1}]
    assert dataset_folder_name("coco_2017_val") == "coco_2017_val"
    folder = dataset_folder_name(name)
    assert "/" not in folder and ":" not in folder and folder.startswith("train.json-")
    assert folder != dataset_folder_name(f"{js}:{tmp_path}") and os.path.basename(folder) == folder
