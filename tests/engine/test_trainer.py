import json
import os

import pytest
import torch
from _tiny_model import TinyTrainer, run_trainer, tiny_cfg

from resnet_backbone.checkpoint.checkpointer import Checkpointer, CheckpointError
from resnet_backbone.engine import NonFiniteLossError
from resnet_backbone.utils.events import read_metrics

_run = run_trainer


def _loss_lines(out_dir):
    lines = read_metrics(os.path.join(out_dir, "metrics.json"))
    return {m["iteration"]: (m["loss_a"], m["loss_b"], m["lr"]) for m in lines if "loss_a" in m}


def test_resume_is_bit_exact(tmp_path):
    straight = _run(tiny_cfg(tmp_path / "a", max_iter=8))
    _run(tiny_cfg(tmp_path / "b", max_iter=5))  # N = 5 iterations (last checkpoint: iteration 3, then final 4)
    resumed = _run(tiny_cfg(tmp_path / "b", max_iter=8), resume=True)
    assert resumed.start_iter == 5
    a, b = _loss_lines(tmp_path / "a"), _loss_lines(tmp_path / "b")
    assert [a[i] for i in range(5, 8)] == [b[i] for i in range(5, 8)]
    sa, sb = straight.unwrapped_model.state_dict(), resumed.unwrapped_model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # a kill between checkpoints: resume from the periodic checkpoint of iteration 3 repeats iteration 4 exactly
    c = tmp_path / "c"
    _run(tiny_cfg(c, max_iter=5))
    with open(c / "last_checkpoint", "w") as f:
        f.write("model_0000003.pth")
    os.remove(c / "model_final.pth")
    resumed2 = _run(tiny_cfg(c, max_iter=8), resume=True)
    assert resumed2.start_iter == 4
    # metrics.json holds each iteration once: the repeated iteration 4 replaced the interrupted run's record
    iters = [m["iteration"] for m in read_metrics(c / "metrics.json") if "loss_a" in m]
    assert iters == list(range(8))
    for k, v in resumed2.unwrapped_model.state_dict().items():
        assert torch.equal(v, sa[k]), k


def test_outputs_written(tmp_path):
    _run(tiny_cfg(tmp_path, max_iter=4))
    files = os.listdir(tmp_path)
    assert {"metrics.json", "model_0000001.pth", "model_final.pth", "last_checkpoint"} <= set(files)
    assert any(f.startswith("events.out.tfevents") for f in files)
    lines = read_metrics(tmp_path / "metrics.json")
    assert [m["iteration"] for m in lines] == [0, 1, 2, 3]
    for key in ("total_loss", "loss_a", "loss_b", "lr", "time", "data_time"):
        assert key in lines[-1]
    assert open(tmp_path / "last_checkpoint").read() == "model_final.pth"
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 3


def test_nan_loss_stops_naming_iteration_and_term(tmp_path):
    class T(TinyTrainer):
        poison = {5: "poison_loss"}

    with pytest.raises(NonFiniteLossError, match=r"iteration 5: loss term\(s\) not finite: loss_b=nan.*model_0000003"):
        _run(tiny_cfg(tmp_path, max_iter=8), cls=T)
    assert open(tmp_path / "last_checkpoint").read() == "model_0000003.pth"
    assert not (tmp_path / "model_final.pth").exists()
    ck = Checkpointer(TinyTrainer.build_model(None), str(tmp_path), save_to_disk=True)
    assert ck.resume_or_load("", resume=True)["iteration"] == 3
    assert max(m["iteration"] for m in read_metrics(tmp_path / "metrics.json")) == 4


def test_nan_gradient_stops(tmp_path):
    class T(TinyTrainer):
        poison = {1: "poison_grad"}

    with pytest.raises(NonFiniteLossError, match=r"iteration 1: gradient\(s\) not finite.*zero.*none"):
        _run(tiny_cfg(tmp_path, max_iter=4, **{"SOLVER.CHECKPOINT_PERIOD": 100}), cls=T)


def test_skip_policy_skips_and_counts(tmp_path):
    class T(TinyTrainer):
        poison = {2: "poison_loss", 3: "poison_grad"}

    t = _run(tiny_cfg(tmp_path, max_iter=5, **{"SOLVER.NONFINITE_POLICY": "skip"}), cls=T)
    assert t.nonfinite_skipped == 2
    last = read_metrics(tmp_path / "metrics.json")[-1]
    assert last["nonfinite_skipped"] == 2
    for p in t.unwrapped_model.parameters():
        assert torch.isfinite(p).all()


def test_unwritable_output_dir_fails_before_training(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="cannot be created"):
        TinyTrainer(tiny_cfg(f / "out"))


def test_bf16_autocast_on_cpu_and_metrics(tmp_path):
    # "force": bf16 on any CPU (emulated where it is not native), so this runs the autocast path everywhere
    t = _run(tiny_cfg(tmp_path, max_iter=3, **{"SOLVER.AMP.ENABLED": "force"}))
    assert t.amp.dtype == torch.bfloat16
    assert torch.bfloat16 in t.unwrapped_model.seen_dtypes
    assert all(isinstance(m["total_loss"], float) for m in read_metrics(tmp_path / "metrics.json"))


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_cpu_and_is_logged_once(tmp_path, native, caplog):
    import logging

    from resnet_backbone.utils.machine import override_machine

    with override_machine(cpu_bf16_native=native), caplog.at_level(logging.INFO, "resnet_backbone.engine.trainer"):
        t = _run(tiny_cfg(tmp_path, max_iter=2, **{"SOLVER.AMP.ENABLED": "auto"}))
    assert t.amp.dtype == (torch.bfloat16 if native else torch.float32)
    assert (torch.bfloat16 in t.unwrapped_model.seen_dtypes) == native
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Training precision")]
    assert len(lines) == 1
    assert ("bfloat16 autocast, native" in lines[0]) if native else ("float32, since CPU" in lines[0])


def test_explicit_bf16_on_a_cpu_without_it_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    from resnet_backbone.config import ConfigError
    from resnet_backbone.utils.machine import override_machine

    built = []
    monkeypatch.setattr(TinyTrainer, "build_model", classmethod(lambda cls, cfg: built.append(1)))
    with override_machine(cpu_bf16_native=False), \
            pytest.raises(ConfigError, match=r"SOLVER.AMP.ENABLED True asks for bfloat16 .* no native bfloat16 .*"
                                             r"SOLVER.AMP.ENABLED force"):
        TinyTrainer(tiny_cfg(tmp_path, **{"SOLVER.AMP.ENABLED": True}))
    assert built == []


def test_eval_results_and_best_checkpoint(tmp_path):
    from resnet_backbone.evaluation import DatasetEvaluator

    class Ev(DatasetEvaluator):
        calls = 0

        def reset(self):
            self.n = 0

        def process(self, inputs, outputs):
            self.n += len(inputs)

        def evaluate(self):
            Ev.calls += 1
            return {"bbox": {"AP": float(Ev.calls), "n": float(self.n)}}

    class T(TinyTrainer):
        @classmethod
        def build_test_loader(cls, cfg, name):
            from _tiny_model import make_records, tiny_mapper

            return [[tiny_mapper(r)] for r in make_records(5)]

        @classmethod
        def build_evaluator(cls, cfg, name, output_folder=None):
            return Ev()

    cfg = tiny_cfg(tmp_path, max_iter=4, **{"TEST.EVAL_PERIOD": 2, "SOLVER.BEST_CHECKPOINT_METRIC": "bbox/AP"})
    cfg.DATASETS.TEST = ("mem",)
    res = _run(cfg, cls=T).last_results
    assert res == {"bbox": {"AP": 2.0, "n": 5.0}}
    evals = [m for m in read_metrics(tmp_path / "metrics.json") if "bbox/AP" in m]
    assert [(m["iteration"], m["bbox/AP"]) for m in evals] == [(1, 1.0), (3, 2.0)]
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["best_metric"] == 2.0
    json.dumps(res)


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path):
    first = _run(tiny_cfg(tmp_path, max_iter=4))
    w = {k: v.clone() for k, v in first.unwrapped_model.state_dict().items()}
    mtime = os.path.getmtime(tmp_path / "model_final.pth")
    again = _run(tiny_cfg(tmp_path, max_iter=4), resume=True)
    assert again.start_iter == 4
    assert os.path.getmtime(tmp_path / "model_final.pth") == mtime
    for k, v in again.unwrapped_model.state_dict().items():
        assert torch.equal(v, w[k]), k


def test_syncbn_reverted_to_bn_for_cpu_ddp():
    from torch import nn

    from resnet_backbone.engine.trainer import _revert_sync_batchnorm

    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.SyncBatchNorm(4)))
    m[1][0].running_mean.fill_(2.0)
    assert _revert_sync_batchnorm(m) == 1
    assert type(m[1][0]) is nn.BatchNorm2d and m[1][0].running_mean[0] == 2.0


def test_nonfinite_error_survives_a_bad_last_checkpoint_pointer():
    """The non-finite loss is the error to report: a last_checkpoint the checkpointer refuses (here: pointing
    outside OUTPUT_DIR) must not replace it with a CheckpointError."""
    import types

    from resnet_backbone.checkpoint import CheckpointError
    from resnet_backbone.engine.trainer import NonFiniteLossError, Trainer

    def refuse():
        raise CheckpointError("last_checkpoint names '/elsewhere/model.pth', outside OUTPUT_DIR")

    fake = types.SimpleNamespace(
        optimizer=types.SimpleNamespace(zero_grad=lambda set_to_none=True: None),
        cfg=types.SimpleNamespace(SOLVER=types.SimpleNamespace(NONFINITE_POLICY="error")), nonfinite_policy="error",
        iter=7, _last_checkpoint_path=None,
        checkpointer=types.SimpleNamespace(has_checkpoint=lambda: True, get_checkpoint_file=refuse))
    with pytest.raises(NonFiniteLossError, match=r"iteration 7: loss is nan.*unknown \(last_checkpoint names"):
        Trainer._nonfinite(fake, "loss is nan")
