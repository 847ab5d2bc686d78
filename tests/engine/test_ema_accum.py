"""MODEL_EMA (engine/ema.py) and SOLVER.GRAD_ACCUM_STEPS in the Trainer: the EMA math, what evaluation and
--eval-only see, accumulation == one big batch, bit-exact resume with both on, bad configs."""
import os

import pytest
import torch
from _tiny_model import TinyTrainer, run_trainer, tiny_cfg
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resnet_backbone.checkpoint.checkpointer import Checkpointer, CheckpointError
from resnet_backbone.config import ConfigError
from resnet_backbone.engine.ema import ModelEMA
from resnet_backbone.utils.events import read_metrics

_run = run_trainer


def _clone(sd):
    return {k: v.detach().clone() for k, v in sd.items()}


class Recording(TinyTrainer):
    """Records the model state after every optimizer step (the trajectory the EMA averages)."""

    def run_step(self):
        if not hasattr(self, "trajectory"):
            self.trajectory = [_clone(self.unwrapped_model.state_dict())]  # the state the EMA started from
        super().run_step()
        self.trajectory.append(_clone(self.unwrapped_model.state_dict()))


def _hand_ema(trajectory, decay, start_iter=0):
    """float64 EMA over trajectory[1:] starting from trajectory[0]; integer tensors copied."""
    ema = {k: v.double() if v.is_floating_point() else v.clone() for k, v in trajectory[0].items()}
    for it, state in enumerate(trajectory[1:]):
        d = decay if it >= start_iter else 0.0
        for k, v in state.items():
            ema[k] = d * ema[k] + (1 - d) * v.double() if v.is_floating_point() else v.clone()
    return ema


def _assert_close_state(ema, ref, atol=1e-6):
    assert ema.keys() == ref.keys()
    for k in ref:
        if ref[k].is_floating_point():
            assert ema[k].dtype == torch.float32, k
            torch.testing.assert_close(ema[k].double(), ref[k], rtol=1e-5, atol=atol, msg=k)
        else:
            assert torch.equal(ema[k], ref[k]), k


# ----------------------------------------------------------------------------------------------- EMA math
def test_ema_of_parameters_and_bn_buffers_equals_hand_computed_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = ModelEMA(model, decay=0.8, start_iter=2)
    traj = [_clone(model.state_dict())]
    for it in range(6):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        ema.update(model, it)
        traj.append(_clone(model.state_dict()))
    _assert_close_state(ema.state, _hand_ema(traj, 0.8, start_iter=2))
    # BN statistics are averaged too (not copied), the step counter is copied
    assert not torch.allclose(ema.state["1.running_mean"], model.state_dict()["1.running_mean"])
    assert ema.state["1.num_batches_tracked"].item() == 6


def test_ema_of_a_bfloat16_model_is_kept_in_float32():
    model = nn.Linear(3, 2).to(torch.bfloat16)
    ema = ModelEMA(model, decay=0.5)
    old = model.weight.float().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 0)
    assert ema.state["weight"].dtype == torch.float32
    ref = 0.5 * old + 0.5 * model.weight.float()
    assert torch.allclose(ema.state["weight"], ref)


@settings(max_examples=30, deadline=None)
@given(decay=st.floats(0.01, 0.999), steps=st.integers(1, 8), start=st.integers(0, 4), seed=st.integers(0, 10**6))
def test_ema_recurrence_property(decay, steps, start, seed):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, 2)
    ema = ModelEMA(model, decay=decay, start_iter=start)
    traj = [_clone(model.state_dict())]
    for it in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        ema.update(model, it)
        traj.append(_clone(model.state_dict()))
    _assert_close_state(ema.state, _hand_ema(traj, decay, start), atol=1e-5)


def test_applied_to_swaps_in_the_ema_and_restores_the_model_exactly():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = _clone(model.state_dict())
    with ema.applied_to(model):
        for k, v in model.state_dict().items():
            assert torch.equal(v, ema.state[k].to(v.dtype)), k
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------------------------- EMA in the trainer
def _ema_cfg(out, **kw):
    return tiny_cfg(out, **{"MODEL_EMA.ENABLED": True, "MODEL_EMA.DECAY": 0.7, **kw})


def test_trainer_ema_follows_the_optimizer_steps(tmp_path):
    t = _run(_ema_cfg(tmp_path, max_iter=5), cls=Recording)
    assert len(t.trajectory) == 6
    _assert_close_state(t.ema.state, _hand_ema(t.trajectory, 0.7))
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    for k, v in t.ema.state.items():
        assert torch.equal(final["model_ema"][k], v), k
        assert torch.equal(final["model"][k], t.unwrapped_model.state_dict()[k]), k  # raw weights kept apart
    assert not torch.equal(final["model_ema"]["head.weight"], final["model"]["head.weight"])


class _EvalSeen(Recording):
    seen: list = []

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        cls.seen.append(_clone(model.state_dict()))
        return {"bbox": {"AP": float(len(cls.seen))}}


def test_evaluation_and_best_checkpoint_use_the_ema_weights_and_eval_only_loads_them(tmp_path):
    _EvalSeen.seen = []
    cfg = _ema_cfg(tmp_path, max_iter=4, **{"TEST.EVAL_PERIOD": 2, "SOLVER.BEST_CHECKPOINT_METRIC": "bbox/AP"})
    cfg.DATASETS.TEST = ("mem",)
    t = _run(cfg, cls=_EvalSeen)
    assert len(_EvalSeen.seen) == 2  # after iteration 1 and at the end
    ema_after_1 = _hand_ema(t.trajectory[:3], 0.7)
    _assert_close_state(_EvalSeen.seen[0], ema_after_1)
    for k, v in _EvalSeen.seen[1].items():
        assert torch.equal(v, t.ema.state[k]), k
    # training went on with the raw weights, restored exactly after each evaluation
    for k, v in t.unwrapped_model.state_dict().items():
        assert torch.equal(v, t.trajectory[-1][k]), k
    assert not torch.equal(_EvalSeen.seen[1]["head.weight"], t.trajectory[-1]["head.weight"])
    # --eval-only (tools/train_net.py: use_ema_weights=MODEL_EMA.ENABLED) loads the evaluated weights
    for name in ("model_final.pth", "model_best.pth"):
        model = TinyTrainer.build_model(None)
        Checkpointer(model, str(tmp_path), use_ema_weights=True).resume_or_load(str(tmp_path / name), resume=False,
                                                                                allow_partial=False)
        for k, v in model.state_dict().items():
            assert torch.equal(v, _EvalSeen.seen[1][k]), (name, k)
    # --eval-only --resume (last_checkpoint -> model_final.pth) too; without EMA the raw weights
    model = TinyTrainer.build_model(None)
    Checkpointer(model, str(tmp_path), use_ema_weights=True).resume_or_load("", resume=True, allow_partial=False)
    assert torch.equal(model.head.weight, _EvalSeen.seen[1]["head.weight"])
    model = TinyTrainer.build_model(None)
    Checkpointer(model, str(tmp_path)).resume_or_load(str(tmp_path / "model_final.pth"), resume=False)
    assert torch.equal(model.head.weight, t.trajectory[-1]["head.weight"])


def test_eval_only_with_ema_on_a_checkpoint_without_ema_loads_the_model_weights(tmp_path, caplog):
    t = _run(tiny_cfg(tmp_path, max_iter=2))
    model = TinyTrainer.build_model(None)
    with caplog.at_level("WARNING"):
        Checkpointer(model, str(tmp_path), use_ema_weights=True).resume_or_load(
            str(tmp_path / "model_final.pth"), resume=False, allow_partial=False)
    assert "holds no EMA weights" in caplog.text
    assert torch.equal(model.head.weight, t.unwrapped_model.head.weight)


def test_ema_starts_from_loaded_weights_not_the_initialisation(tmp_path):
    first = _run(tiny_cfg(tmp_path / "a", max_iter=3))  # no EMA in this checkpoint
    loaded = _clone(first.unwrapped_model.state_dict())
    # fine-tuning from MODEL.WEIGHTS
    t = TinyTrainer(_ema_cfg(tmp_path / "b", **{"MODEL.WEIGHTS": str(tmp_path / "a" / "model_final.pth")}))
    t.resume_or_load(resume=False)
    for k, v in loaded.items():
        assert torch.equal(t.ema.state[k].to(v.dtype), v), k
    # resuming (with EMA newly switched on) from a checkpoint that has no model_ema
    t = TinyTrainer(_ema_cfg(tmp_path / "a", max_iter=5))
    t.resume_or_load(resume=True)
    assert t.start_iter == 3
    for k, v in loaded.items():
        assert torch.equal(t.ema.state[k].to(v.dtype), v), k


@pytest.mark.parametrize("bad", ["shape", "nan", "missing"])
def test_a_broken_model_ema_in_a_checkpoint_is_refused_naming_file_and_tensor(tmp_path, bad):
    _run(_ema_cfg(tmp_path, max_iter=2))
    path = tmp_path / "model_final.pth"
    data = torch.load(path, weights_only=True)
    if bad == "shape":
        data["model_ema"]["head.weight"] = torch.zeros(3, 3)
    elif bad == "nan":
        data["model_ema"]["head.weight"][0, 0] = float("nan")
    else:
        del data["model_ema"]["head.weight"]
    torch.save(data, path)
    t = TinyTrainer(_ema_cfg(tmp_path, max_iter=4))
    with pytest.raises(CheckpointError, match=r"model_final\.pth.*'model_ema'.*head\.weight"):
        t.resume_or_load(resume=True)


# --------------------------------------------------------------------------------- gradient accumulation
class LinearDetector(nn.Module):
    """No batch-dependent layer (no BN, no dropout): a batch's mean loss is the mean of per-image losses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.head = nn.Linear(3, 2)
        self.seen_dtypes = []

    def forward(self, batched_inputs):
        x = torch.stack([d["image"].float() for d in batched_inputs]).mean(dim=(2, 3)) / 255.0
        out = self.head(x)
        self.seen_dtypes.append(out.dtype)
        if not self.training:
            return [{} for _ in batched_inputs]
        tgt = torch.stack([d["target"] for d in batched_inputs])
        return {"loss_a": (out[:, 0] - tgt).float().square().mean(), "loss_b": out[:, 1].float().abs().mean() * 0.1}


class LinearTrainer(TinyTrainer):
    @classmethod
    def build_model(cls, cfg):
        return LinearDetector()


def _losses(d):
    return {m["iteration"]: (m["loss_a"], m["loss_b"], m["lr"]) for m in read_metrics(d / "metrics.json")
            if "loss_a" in m}


def test_two_micro_batches_of_one_equal_one_batch_of_two(tmp_path):
    big = _run(tiny_cfg(tmp_path / "big", max_iter=5, **{"SOLVER.IMS_PER_BATCH": 2}), cls=LinearTrainer)
    acc = _run(tiny_cfg(tmp_path / "acc", max_iter=5, **{"SOLVER.IMS_PER_BATCH": 1, "SOLVER.GRAD_ACCUM_STEPS": 2}),
               cls=LinearTrainer)
    one = _run(tiny_cfg(tmp_path / "one", max_iter=5, **{"SOLVER.IMS_PER_BATCH": 1}), cls=LinearTrainer)
    for k, v in big.unwrapped_model.state_dict().items():
        torch.testing.assert_close(acc.unwrapped_model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one.unwrapped_model.head.weight, big.unwrapped_model.head.weight)
    lb, la = _losses(tmp_path / "big"), _losses(tmp_path / "acc")
    assert sorted(la) == list(range(5))  # MAX_ITER counts optimizer steps
    for i in range(5):
        assert la[i][2] == lb[i][2]  # the LR schedule too
        assert la[i][:2] == pytest.approx(lb[i][:2], rel=1e-5, abs=1e-7)  # logged: mean over the micro-batches
    assert torch.load(tmp_path / "acc" / "model_final.pth", weights_only=True)["data_position"] == 10


def test_accumulation_under_bf16_autocast(tmp_path):
    t = _run(tiny_cfg(tmp_path, max_iter=3, **{"SOLVER.AMP.ENABLED": "force", "SOLVER.IMS_PER_BATCH": 1,
                                               "SOLVER.GRAD_ACCUM_STEPS": 3}), cls=LinearTrainer)
    assert t.unwrapped_model.seen_dtypes == [torch.bfloat16] * 9  # 3 steps x 3 micro-batches, all autocast
    assert all(torch.isfinite(p).all() for p in t.unwrapped_model.parameters())


def test_nonfinite_loss_in_a_micro_batch(tmp_path):
    from resnet_backbone.engine import NonFiniteLossError

    class T(Recording):
        poison = {2: "poison_loss"}  # loader position 2 = iteration 1, first of its two micro-batches

    with pytest.raises(NonFiniteLossError, match=r"iteration 1: loss term\(s\) not finite: loss_b=nan"):
        _run(tiny_cfg(tmp_path / "e", max_iter=4, **{"SOLVER.GRAD_ACCUM_STEPS": 2}), cls=T)
    # "skip": the step is skipped but its micro-batches are consumed, so a resume matches the straight run
    skip = {"SOLVER.GRAD_ACCUM_STEPS": 2, "SOLVER.NONFINITE_POLICY": "skip", "MODEL_EMA.ENABLED": True,
            "MODEL_EMA.DECAY": 0.5}
    straight = _run(tiny_cfg(tmp_path / "a", max_iter=6, **skip), cls=T)
    assert straight.nonfinite_skipped == 1
    params = [n for n, _ in straight.unwrapped_model.named_parameters()]
    assert all(torch.equal(straight.trajectory[2][n], straight.trajectory[1][n]) for n in params)
    # the skipped step (iteration 1) changed neither the weights (its forward did move the BN statistics, as
    # without accumulation) nor the EMA
    _assert_close_state(straight.ema.state, _hand_ema(straight.trajectory[:2] + straight.trajectory[3:], 0.5))
    _run(tiny_cfg(tmp_path / "b", max_iter=3, **skip), cls=T)
    resumed = _run(tiny_cfg(tmp_path / "b", max_iter=6, **skip), resume=True, cls=T)
    assert resumed.nonfinite_skipped == 1
    for k, v in straight.unwrapped_model.state_dict().items():
        assert torch.equal(resumed.unwrapped_model.state_dict()[k], v), k


# ------------------------------------------------------------------------------------ bit-exact resume
def _assert_same(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_resume_is_bit_exact_with_ema_and_accumulation(tmp_path):
    kw = {"MODEL_EMA.ENABLED": True, "MODEL_EMA.DECAY": 0.9, "MODEL_EMA.START_ITER": 1, "SOLVER.GRAD_ACCUM_STEPS": 3,
          "SOLVER.IMS_PER_BATCH": 2}
    _run(tiny_cfg(tmp_path / "a", max_iter=8, **kw))
    _run(tiny_cfg(tmp_path / "b", max_iter=5, **kw))
    resumed = _run(tiny_cfg(tmp_path / "b", max_iter=8, **kw), resume=True)
    assert resumed.start_iter == 5 and resumed._data_start == 15
    # killed between checkpoints: resumed from iteration 3's periodic checkpoint
    c = tmp_path / "c"
    _run(tiny_cfg(c, max_iter=5, **kw))
    (c / "last_checkpoint").write_text("model_0000003.pth")
    os.remove(c / "model_final.pth")
    _run(tiny_cfg(c, max_iter=8, **kw), resume=True)
    a = torch.load(tmp_path / "a" / "model_final.pth", weights_only=True)
    for d in (tmp_path / "b", c):
        b = torch.load(d / "model_final.pth", weights_only=True)
        for key in ("model", "model_ema", "optimizer", "scheduler", "iteration", "data_position"):
            _assert_same(a[key], b[key], key)
        la, lb = _losses(tmp_path / "a"), _losses(d)
        assert [la[i] for i in range(5, 8)] == [lb[i] for i in range(5, 8)]
    assert a["data_position"] == 24 and a["grad_accum_steps"] == 3


# ----------------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("key,value", [("MODEL_EMA.DECAY", 1.0), ("MODEL_EMA.DECAY", 0.0), ("MODEL_EMA.DECAY", -0.5),
                                       ("MODEL_EMA.DECAY", 1.5), ("MODEL_EMA.DECAY", float("nan")),
                                       ("SOLVER.GRAD_ACCUM_STEPS", 0), ("SOLVER.GRAD_ACCUM_STEPS", -2),
                                       ("SOLVER.GRAD_ACCUM_STEPS", 1.5), ("MODEL_EMA.START_ITER", -1)])
def test_bad_ema_or_accumulation_config_is_refused_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"{key.replace('.', r'[.]')}: "):
        TinyTrainer(tiny_cfg(tmp_path, **{"MODEL_EMA.ENABLED": True, key: value}))


def test_bad_ema_config_from_the_command_line(tmp_path):
    from resnet_backbone.config import get_cfg
    from resnet_backbone.config.validate import validate_cfg

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "1.0", "SOLVER.GRAD_ACCUM_STEPS", "0"])
    with pytest.raises(ConfigError, match=r"(?s)SOLVER\.GRAD_ACCUM_STEPS: .*MODEL_EMA\.DECAY: .*0 < value < 1"):
        validate_cfg(cfg, world_size=1)

