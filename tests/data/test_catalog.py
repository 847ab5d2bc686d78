"""DatasetCatalog / MetadataCatalog semantics and the built-in names (lazy, env read at load time)."""
import copy
import json

import pytest

from resnet_backbone.data import DatasetCatalog, MetadataCatalog
from resnet_backbone.data.catalog import Metadata
from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset


def test_register_get_list_remove():
    name = "test_catalog_tmp"
    calls = []
    DatasetCatalog.register(name, lambda: calls.append(1) or [{"image_id": 1}])
    try:
        assert calls == []  # lazy
        assert name in DatasetCatalog.list()
        assert DatasetCatalog.get(name) == [{"image_id": 1}] and calls == [1]
        with pytest.raises(KeyError, match="already registered"):
            DatasetCatalog.register(name, list)
        with pytest.raises(TypeError):
            DatasetCatalog.register("test_catalog_bad", [1, 2])
    finally:
        DatasetCatalog.remove(name)
    with pytest.raises(KeyError, match="not registered.*available"):
        DatasetCatalog.get(name)


def test_metadata_set_get_conflict():
    m = Metadata(name="x").set(thing_classes=["a", "b"])
    assert m.thing_classes == ["a", "b"] and m.get("nope", 3) == 3
    m.set(thing_classes=["a", "b"])  # same value: fine
    with pytest.raises(ValueError, match="thing_classes"):
        m.set(thing_classes=["b", "a"])
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = m.missing
    assert MetadataCatalog.get("test_catalog_meta") is MetadataCatalog.get("test_catalog_meta")
    assert m.as_dict() == {"name": "x", "thing_classes": ["a", "b"]}


def test_builtin_names_resolve_env_at_load_time(tmp_path, monkeypatch):
    for name in ("coco_2017_train", "coco_2017_val", "synthetic_shapes_train", "synthetic_shapes_val"):
        assert name in DatasetCatalog and MetadataCatalog.get(name).evaluator_type == "coco"
    monkeypatch.setenv("RB_DATASETS", str(tmp_path))
    # loading sets thing_classes on the shared metadata: work on a copy, restored after the test
    monkeypatch.setitem(MetadataCatalog, "synthetic_shapes_val",
                        copy.deepcopy(MetadataCatalog.get("synthetic_shapes_val")))
    meta = MetadataCatalog.get("synthetic_shapes_val")
    assert meta.json_file == str(tmp_path / "synthetic_shapes" / "val.json")
    assert meta.image_root == str(tmp_path / "synthetic_shapes" / "val")
    assert MetadataCatalog.get("coco_2017_train").json_file == str(
        tmp_path / "coco" / "annotations" / "instances_train2017.json")
    generate_shapes_dataset(tmp_path / "synthetic_shapes", "val", 3, image_size=48, seed=0)
    recs = DatasetCatalog.get("synthetic_shapes_val")
    assert len(recs) == 3 and recs[0]["file_name"].startswith(str(tmp_path / "synthetic_shapes" / "val"))
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert json.loads(open(meta.json_file).read())["categories"][1]["id"] == 3
