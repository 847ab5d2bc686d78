"""tools/train_net.py end to end on CPU: the real Faster R-CNN (R18-FPN, tiny), the real data pipeline and
COCO evaluation on a few 64 px synthetic shapes images."""
import os

import pytest
import torch
from _tools import TINY_FRCNN_MODEL, load_tool

from resnet_backbone.config import ConfigError
from resnet_backbone.utils.events import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


train_net = load_tool("train_net")

TINY = [
    *TINY_FRCNN_MODEL,
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "DATASETS.TRAIN", "('synthetic_shapes_train',)", "DATASETS.TEST", "('synthetic_shapes_val',)",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01",
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2",
    "SEED", "3", "LOG_PERIOD", "1",
]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("datasets")
    generate_shapes_dataset(str(root / "synthetic_shapes"), "train", 6, image_size=64, seed=0)
    generate_shapes_dataset(str(root / "synthetic_shapes"), "val", 3, image_size=64, seed=1)
    return root


def _run(out, *extra, flags=(), max_iter=4):
    argv = ["--config-file", os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"), *flags, *TINY,
            "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(out), *extra]
    args = train_net.default_argument_parser().parse_args(argv)
    return train_net.main(args)


def test_short_run_writes_everything_then_eval_only(shapes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("RB_DATASETS", str(shapes_root))
    out = tmp_path / "out"
    results = _run(out, "SOLVER.BEST_CHECKPOINT_METRIC", "bbox/AP50", max_iter=3)
    assert "bbox" in results and "AP" in results["bbox"] and "AP50" in results["bbox"]
    files = set(os.listdir(out))
    assert {"config.yaml", "metrics.json", "log.txt", "model_0000001.pth", "model_final.pth", "last_checkpoint",
            "model_best.pth"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert os.path.exists(out / "inference" / "synthetic_shapes_val" / "coco_instances_results.json")
    lines = read_metrics(out / "metrics.json")
    train_lines = [m for m in lines if "total_loss" in m]
    assert [m["iteration"] for m in train_lines] == [0, 1, 2]
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "lr"} <= set(train_lines[-1])
    assert any("bbox/AP" in m for m in lines)
    saved = (out / "config.yaml").read_text()
    assert "DEPTH: 18" in saved and "MAX_ITER: 3" in saved and "SEED: 3" in saved
    # --eval-only on the final weights gives the same numbers as the end of training
    again = _run(tmp_path / "eval", "MODEL.WEIGHTS", str(out / "model_final.pth"), flags=["--eval-only"])
    assert again["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"])


def test_resume_matches_straight_run(shapes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("RB_DATASETS", str(shapes_root))
    no_test = ("DATASETS.TEST", "()")
    _run(tmp_path / "straight", *no_test, max_iter=5)
    # the interrupted run loads data in a worker process: same batches and augmentations as in-process loading
    workers = ("DATALOADER.NUM_WORKERS", "1")
    _run(tmp_path / "split", *no_test, *workers, max_iter=3)
    _run(tmp_path / "split", *no_test, *workers, flags=["--resume"], max_iter=5)

    def losses(d):
        return {m["iteration"]: m["total_loss"] for m in read_metrics(d / "metrics.json") if "total_loss" in m}

    a, b = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert [a[i] for i in (3, 4)] == [b[i] for i in (3, 4)]
    wa = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=True)["model"]
    wb = torch.load(tmp_path / "split" / "model_final.pth", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_bad_override_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITERS.*SOLVER.MAX_ITER"):
        _run(tmp_path / "x", "SOLVER.MAX_ITERS", "3")
    assert not (tmp_path / "x").exists()


def test_expected_results_missed_fails_the_run_naming_the_metric(shapes_root, tmp_path, monkeypatch):
    """TEST.EXPECTED_RESULTS (detectron2's verify_results) after the final evaluation: a miss is an error naming
    the metric, its value and the expectation (one line, exit 2 from the command line: a library error)."""
    from resnet_backbone.engine.trainer import ResultsMismatchError
    from resnet_backbone.utils.cli import is_library_error

    monkeypatch.setenv("RB_DATASETS", str(shapes_root))
    out = tmp_path / "out"
    with pytest.raises(ResultsMismatchError, match=r"TEST.EXPECTED_RESULTS not met: bbox/AP = \d+\.\d{4}, expected "
                                                   r"101.0 \+- 0.5") as e:
        _run(out, "TEST.EXPECTED_RESULTS", "[['bbox', 'AP', 101.0, 0.5]]", max_iter=1)
    assert is_library_error(e.value)
    assert (out / "model_final.pth").exists()  # trained and saved; only the verification failed
