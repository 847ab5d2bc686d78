"""The Trainer's setup and evaluation parts: the test loaders and evaluators (COCO ground truth) built once per
trainer, TEST.PRECISE_BN, SOLVER.REFERENCE_WORLD_SIZE (detectron2's auto_scale_workers) and
TEST.EXPECTED_RESULTS (detectron2's verify_results)."""
import copy
import logging
import math
import os

import pytest
import torch
from _tiny_model import TinyDetector, TinyTrainer, run_trainer, tiny_cfg

from resnet_backbone.config import ConfigError
from resnet_backbone.engine import Trainer
from resnet_backbone.engine.trainer import ResultsMismatchError, verify_results
from resnet_backbone.utils.events import read_metrics


class BoxDetector(TinyDetector):
    """TinyDetector whose eval output is a grid of boxes of every class, scored by the weights (so AP > 0 and it
    depends on them)."""

    def forward(self, batched_inputs):
        if self.training:
            return super().forward(batched_inputs)
        x = torch.stack([d["image"].float() for d in batched_inputs]) / 255.0
        feats = self.backbone(x)  # (N, 8, h, w)
        out = []
        for d, f in zip(batched_inputs, feats):
            h, w = float(d["height"]), float(d["width"])
            boxes, scores = [], []
            for size in (0.15, 0.25, 0.4):
                for cy in torch.linspace(0.1, 0.9, 9):
                    for cx in torch.linspace(0.1, 0.9, 9):
                        r = size / 2
                        boxes.append([(cx - r) * w, (cy - r) * h, (cx + r) * w, (cy + r) * h])
                        iy, ix = int(cy * (f.shape[1] - 1)), int(cx * (f.shape[2] - 1))
                        scores.append(torch.sigmoid(self.head(f[:, iy, ix])).mean())
            boxes = torch.tensor(boxes).repeat(3, 1)
            out.append({"boxes": boxes, "scores": torch.stack(scores).repeat(3),
                        "labels": torch.arange(3).repeat_interleave(len(scores))})
        return out


class BoxTrainer(TinyTrainer):
    @classmethod
    def build_model(cls, cfg):
        return BoxDetector()


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory):
    """A 4-image COCO dataset given by path ("instances.json:images")."""
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    js = generate_shapes_dataset(str(root), "val", 4, image_size=64, seed=1)
    return f"{js}:{root / 'val'}"


def test_evaluator_and_ground_truth_built_once_per_trainer(tmp_path, shapes_val, monkeypatch):
    """3 evaluations (EVAL_PERIOD 2 over 6 iterations: after 1, 3 and the final 5) build one test loader and one
    COCOEvaluator, which loads the ground truth once; every result equals a freshly built evaluator's on the same
    weights. Before, each evaluation rebuilt all three."""
    from resnet_backbone.evaluation import coco_evaluation

    counts = {"gt": 0, "loader": 0, "evaluator": 0}
    real_gt = coco_evaluation.COCOEvaluator._gt
    monkeypatch.setattr(coco_evaluation.COCOEvaluator, "_gt",
                        lambda self: counts.__setitem__("gt", counts["gt"] + 1) or real_gt(self))
    seen = []

    class T(BoxTrainer):
        @classmethod
        def build_test_loader(cls, cfg, name):
            counts["loader"] += 1
            return super().build_test_loader(cfg, name)

        @classmethod
        def build_evaluator(cls, cfg, name, output_folder=None):
            counts["evaluator"] += 1
            return super().build_evaluator(cfg, name, output_folder)

        def _evaluate(self, it):
            res = super()._evaluate(it)
            # the same weights, everything built afresh (the classmethod API, as --eval-only uses it)
            with torch.random.fork_rng(devices=[]):
                fresh = Trainer.test(self.cfg, self.unwrapped_model)
            seen.append((copy.deepcopy(res), fresh))
            return res

    cfg = tiny_cfg(tmp_path, max_iter=6, **{"DATASETS.TEST": (shapes_val,), "TEST.EVAL_PERIOD": 2,
                                            "INPUT.MIN_SIZE_TEST": 32, "INPUT.MAX_SIZE_TEST": 32})
    t = T(cfg)
    t.resume_or_load(resume=False)
    t.train()
    assert len(seen) == 3
    assert counts["loader"] == 1 and counts["evaluator"] == 1  # the trainer's (the fresh ones are Trainer's)
    assert counts["gt"] == 1 + 3  # the trainer's evaluator loaded it once, each fresh one once
    for res, fresh in seen:
        assert set(res["bbox"]) >= {"AP", "AP50"} and res["bbox"].keys() == fresh["bbox"].keys()
        for k, v in res["bbox"].items():  # nan (a class without detections) equals nan here
            assert v == fresh["bbox"][k] or (math.isnan(v) and math.isnan(fresh["bbox"][k])), k
    assert all(r["bbox"]["AP50"] > 0 for r, _ in seen)  # numbers that depend on the weights, not a constant 0


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_precise_bn_recomputes_statistics_without_touching_training(tmp_path):
    """PRECISE_BN at every EVAL_PERIOD and at the end: the losses are those of a run without it (batch statistics
    in train mode; its batches come from a loader of their own), the final running statistics equal fvcore's
    update_bn_stats over the NUM_ITER batches after the last iteration, and a resumed run is bit-exact."""
    from fvcore.nn.precise_bn import update_bn_stats as fvcore_update_bn_stats

    calls = []

    class T(TinyTrainer):
        def _precise_bn(self, it):
            calls.append(it)
            super()._precise_bn(it)

    on = {"TEST.PRECISE_BN.ENABLED": True, "TEST.PRECISE_BN.NUM_ITER": 3, "TEST.EVAL_PERIOD": 2}
    plain = run_trainer(tiny_cfg(tmp_path / "plain", max_iter=6))
    precise = run_trainer(tiny_cfg(tmp_path / "precise", max_iter=6, **on), cls=T)
    assert calls == [1, 3, 5]

    def losses(d):
        return [(m["loss_a"], m["loss_b"]) for m in read_metrics(os.path.join(d, "metrics.json")) if "loss_a" in m]

    assert losses(tmp_path / "plain") == losses(tmp_path / "precise")
    a, b = _bn_state(plain.unwrapped_model), _bn_state(precise.unwrapped_model)
    assert not torch.allclose(a["backbone.1.running_var"], b["backbone.1.running_var"])
    # fvcore's estimate from the same weights over the same batches (position after iteration 5 = 6 batches)
    ref = copy.deepcopy(precise.unwrapped_model).train()
    fvcore_update_bn_stats(ref, _take(precise.build_train_loader(precise.cfg, 6), 3), num_iters=3)
    for k, v in _bn_state(ref).items():
        if "num_batches" not in k:
            torch.testing.assert_close(b[k], v, rtol=1e-5, atol=1e-6)
    # the checkpoint of iteration 3 holds that iteration's precise statistics: a resume repeats the run exactly
    d = tmp_path / "split"
    run_trainer(tiny_cfg(d, max_iter=4, **on), cls=T)
    resumed = run_trainer(tiny_cfg(d, max_iter=6, **on), cls=T, resume=True)
    assert resumed.start_iter == 4
    for k, v in precise.unwrapped_model.state_dict().items():
        assert torch.equal(v, resumed.unwrapped_model.state_dict()[k]), k


def _take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    raise AssertionError("the loader ended early")


def test_precise_bn_skipped_and_logged_without_training_bn(tmp_path, caplog):
    """FrozenBN everywhere (here: the BatchNorm in eval mode): nothing to recompute, said once in the log."""

    class Frozen(TinyDetector):
        def train(self, mode=True):
            super().train(mode)
            self.backbone[1].eval()
            return self

    class T(TinyTrainer):
        @classmethod
        def build_model(cls, cfg):
            return Frozen()

    with caplog.at_level(logging.INFO, logger="resnet_backbone.engine.trainer"):
        t = run_trainer(tiny_cfg(tmp_path, max_iter=4, **{"TEST.PRECISE_BN.ENABLED": True,
                                                          "TEST.EVAL_PERIOD": 2}), cls=T)
    assert sum("PreciseBN skipped" in r.getMessage() for r in caplog.records) == 1
    assert not any("recomputed" in r.getMessage() for r in caplog.records)
    assert t.unwrapped_model.backbone[1].num_batches_tracked.item() == 0


def _d2_auto_scale():
    d2 = pytest.importorskip("detectron2.engine.defaults", reason="detectron2 is not importable (see /tmp/d2)")
    return d2.DefaultTrainer.auto_scale_workers


@pytest.mark.parametrize("ref, world", [(8, 16), (8, 2), (4, 3), (2, 2), (0, 4)])
def test_auto_scale_workers_matches_detectron2(ref, world):
    d2_scale = _d2_auto_scale()  # skips when detectron2 is not importable
    from detectron2.config import get_cfg as d2_get_cfg
    values = {"SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "SOLVER.MAX_ITER": 90000,
              "SOLVER.STEPS": (60000, 80000), "SOLVER.WARMUP_ITERS": 1000, "SOLVER.CHECKPOINT_PERIOD": 5000,
              "TEST.EVAL_PERIOD": 333, "SOLVER.REFERENCE_WORLD_SIZE": ref}
    ours, theirs = tiny_cfg("", **values), d2_get_cfg()
    for k, v in values.items():
        *path, leaf = k.split(".")
        node = theirs
        for p in path:
            node = node[p]
        node[leaf] = v
    ours.freeze()
    a, b = Trainer.auto_scale_workers(ours, world), d2_scale(theirs, world)
    assert (a is ours) == (b is theirs)
    for k in values:
        *path, leaf = k.split(".")
        x, y = a, b
        for p in path:
            x, y = x[p], y[p]
        assert x[leaf] == y[leaf] and type(x[leaf]) is type(y[leaf]), k
    assert a.is_frozen()


def test_reference_world_size_scales_the_trainer(tmp_path):
    """REFERENCE_WORLD_SIZE 2 on one process: half the batch and the LR, twice the iterations (and the other
    periods), as detectron2's DefaultTrainer does; the caller's config is left as it was."""
    cfg = tiny_cfg(tmp_path, max_iter=3, **{"SOLVER.REFERENCE_WORLD_SIZE": 2, "SOLVER.IMS_PER_BATCH": 4,
                                            "SOLVER.STEPS": (2,), "SOLVER.CHECKPOINT_PERIOD": 2})
    t = TinyTrainer(cfg)
    assert (t.cfg.SOLVER.IMS_PER_BATCH, t.cfg.SOLVER.BASE_LR, t.max_iter) == (2, 0.025, 6)
    assert tuple(t.cfg.SOLVER.STEPS) == (4,) and t.cfg.SOLVER.CHECKPOINT_PERIOD == 4
    assert t.cfg.SOLVER.WARMUP_ITERS == 4 and t.cfg.SOLVER.REFERENCE_WORLD_SIZE == 1
    assert cfg.SOLVER.IMS_PER_BATCH == 4 and cfg.SOLVER.MAX_ITER == 3
    cfg.SOLVER.IMS_PER_BATCH = 3  # not a multiple of the reference world size: refused, naming both keys
    with pytest.raises(ConfigError, match=r"SOLVER.IMS_PER_BATCH: 3 images .* SOLVER.REFERENCE_WORLD_SIZE 2"):
        TinyTrainer(cfg)


def test_verify_results_names_the_metric(tmp_path):
    results = {"bbox": {"AP": 40.0, "AP50": 60.0}}
    cfg = tiny_cfg(tmp_path, **{"TEST.EXPECTED_RESULTS": [["bbox", "AP", 40.1, 0.2], ["bbox", "AP50", 60.0, 0.0]]})
    verify_results(cfg, results)  # within tolerance
    cfg.TEST.EXPECTED_RESULTS = [["bbox", "AP", 41.0, 0.5], ["bbox", "APs", 1.0, 1.0]]
    with pytest.raises(ResultsMismatchError, match=r"bbox/AP = 40.0000, expected 41.0 \+- 0.5; bbox/APs missing"):
        verify_results(cfg, results)
    cfg.TEST.EXPECTED_RESULTS = [["bbox", "AP", 41.0, 0.5]]
    with pytest.raises(ResultsMismatchError, match="not finite"):
        verify_results(cfg, {"bbox": {"AP": float("nan")}})
    cfg.TEST.EXPECTED_RESULTS = [["bbox", "AP", 41.0]]  # a malformed row is a config problem, named
    from resnet_backbone.config.validate import find_cfg_problems

    assert any(p.startswith("TEST.EXPECTED_RESULTS: entry 0 must be") for p in find_cfg_problems(cfg, 1, model=False))


def test_train_loaders_of_one_trainer_read_the_dataset_once(monkeypatch):
    """PreciseBN builds a train loader at every evaluation: DATASETS.TRAIN's dicts (a COCO json parse) are read
    by the first one only, and every loader gets those same dicts."""
    from types import SimpleNamespace

    from resnet_backbone.data import build as data_build
    from resnet_backbone.engine.trainer import Trainer

    reads, built = [], []
    monkeypatch.setattr(data_build, "get_detection_dataset_dicts",
                        lambda *a, **k: reads.append(a) or [{"id": len(reads)}])
    monkeypatch.setattr(data_build, "build_detection_train_loader",
                        lambda cfg, dataset=None, seed=None, start_iter=0: built.append((dataset, seed, start_iter)))
    fake = SimpleNamespace(_train_dicts=None, seed=7)
    cfg = tiny_cfg("")
    for start in (0, 6, 12):
        Trainer.build_train_loader(fake, cfg, start)
    assert len(reads) == 1 and [s for _, _, s in built] == [0, 6, 12]
    assert all(d is built[0][0] and seed == 7 for d, seed, _ in built) and built[0][0] == [{"id": 1}]
