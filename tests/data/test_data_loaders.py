"""build_detection_train_loader / build_detection_test_loader on a synthetic COCO dataset: batch sizes, workers,
every test image once, bad samples raise (naming the file) or are skipped and counted."""
import itertools
import os

import pytest

from resnet_backbone.config import get_cfg
from resnet_backbone.data import (
    DatasetCatalog,
    DatasetError,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    register_coco_instances,
)
from resnet_backbone.data.errors import bad_sample_counts
from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    json_file = generate_shapes_dataset(root, "train", 8, image_size=64, seed=1)
    return json_file, str(root / "train")


def _register(name, json_file, image_root):
    for cat in (DatasetCatalog, MetadataCatalog):
        if name in cat:
            cat.remove(name)
    register_coco_instances(name, {}, json_file, image_root)


def _cfg(name, workers=0, batch=2, grouping=True):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (48, 64)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.INPUT.MIN_SIZE_TEST = 48
    cfg.INPUT.MAX_SIZE_TEST = 100
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    cfg.SEED = 3
    return cfg


@pytest.mark.parametrize("workers,grouping", [(0, True), (2, True), (0, False)])
def test_train_loader_batches(dataset, workers, grouping):
    _register("test_loaders_train", *dataset)
    loader = build_detection_train_loader(_cfg("test_loaders_train", workers, 3, grouping))
    batches = list(itertools.islice(iter(loader), 10))  # 30 images > 8: the stream is infinite
    for b in batches:
        assert isinstance(b, list) and len(b) == 3
        for d in b:
            assert d["image"].dtype.is_floating_point is False and d["image"].shape[0] == 3
            assert min(d["image"].shape[1:]) in (48, 64) and len(d["instances"]) > 0
            h, w = d["image"].shape[1:]
            boxes = d["instances"].gt_boxes
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            assert d["instances"].gt_classes.max() < 3
        if grouping:
            assert len({d["image"].shape[2] > d["image"].shape[1] for d in b}) == 1
    ids = [d["image_id"] for b in batches for d in b]
    assert set(ids) == set(range(1, 9))


def test_train_loader_rejects_indivisible_batch(dataset):
    _register("test_loaders_train", *dataset)
    cfg = _cfg("test_loaders_train")
    cfg.SOLVER.IMS_PER_BATCH = 0
    with pytest.raises(ValueError, match="IMS_PER_BATCH"):
        build_detection_train_loader(cfg)


@pytest.mark.parametrize("workers", [0, 2])
def test_test_loader_every_image_once(dataset, workers):
    _register("test_loaders_test", *dataset)
    loader = build_detection_test_loader(_cfg("test_loaders_test", workers=workers), "test_loaders_test")
    batches = list(loader)
    assert all(len(b) == 1 for b in batches)
    assert sorted(b[0]["image_id"] for b in batches) == list(range(1, 9))
    assert all("instances" not in b[0] and min(b[0]["image"].shape[1:]) == 48 for b in batches)


def _break_one_image(tmp_path, json_file, image_root):
    """A copy of the dataset with image 3 truncated."""
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(image_root, root)
    p = root / "000002.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return str(root), str(p)


def test_bad_image_raises_naming_file(dataset, tmp_path):
    json_file, image_root = dataset
    root, bad = _break_one_image(tmp_path, json_file, image_root)
    _register("test_loaders_broken", json_file, root)
    cfg = _cfg("test_loaders_broken")
    with pytest.raises(DatasetError) as ei:
        list(build_detection_test_loader(cfg, "test_loaders_broken"))
    assert bad in str(ei.value)
    with pytest.raises(DatasetError) as ei:  # through a worker process too
        list(itertools.islice(iter(build_detection_train_loader(_cfg("test_loaders_broken", workers=1))), 8))
    assert bad in str(ei.value)


def test_bad_image_skipped_and_counted(dataset, tmp_path, caplog):
    json_file, image_root = dataset
    root, bad = _break_one_image(tmp_path, json_file, image_root)
    _register("test_loaders_skip", json_file, root)
    cfg = _cfg("test_loaders_skip")
    cfg.DATALOADER.ON_BAD_SAMPLE = "skip"
    before = bad_sample_counts().get("mapper", 0)
    batches = [b for b in build_detection_test_loader(cfg, "test_loaders_skip") if b]
    assert sorted(b[0]["image_id"] for b in batches) == [1, 2, 4, 5, 6, 7, 8]
    assert bad_sample_counts()["mapper"] - before == 1
    assert os.path.basename(bad) in caplog.text
    # training keeps going: the bad image is replaced by another sample (counted by the training loader)
    before_train = bad_sample_counts().get("train_loader", 0)
    train = list(itertools.islice(iter(build_detection_train_loader(cfg)), 8))
    assert all(len(b) == 2 for b in train) and 3 not in {d["image_id"] for b in train for d in b}
    assert bad_sample_counts()["train_loader"] - before_train >= 2  # 8 x 2 = 2 epochs of 8: met twice


def test_train_loader_with_crop_and_repeat_factor_sampler(dataset):
    _register("test_loaders_rfs", *dataset)
    cfg = _cfg("test_loaders_rfs", grouping=False)
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.9
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "relative"
    cfg.INPUT.CROP.SIZE = [0.5, 0.5]
    for b in itertools.islice(iter(build_detection_train_loader(cfg)), 4):
        for d in b:
            h, w = d["image"].shape[1:]
            boxes = d["instances"].gt_boxes
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    cfg.DATALOADER.SAMPLER_TRAIN = "Nope"
    with pytest.raises(ValueError, match="SAMPLER_TRAIN"):
        build_detection_train_loader(cfg)
