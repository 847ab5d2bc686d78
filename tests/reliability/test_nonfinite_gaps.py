"""Non-finite loss / gradients, the cases tests/engine/test_trainer.py does not cover: Inf (not NaN) loss,
Inf gradients, NaN gradients with gradient clipping on (the clipper runs before the check), bf16 autocast,
and the skip counter surviving a resume."""
import pytest
import torch
from _rel_common import tiny_trainer_cfg
from _tiny_model import TinyDetector, TinyTrainer

from resnet_backbone.engine import NonFiniteLossError
from resnet_backbone.utils.events import read_metrics


class _InfGrad(torch.autograd.Function):
    """Forward 0 (the loss stays finite), backward +Inf."""

    @staticmethod
    def forward(ctx, x):
        return x * 0.0

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


class PoisonDetector(TinyDetector):
    def forward(self, batched_inputs):
        out = super().forward(batched_inputs)
        if self.training and any(d.get("poison_inf_loss") for d in batched_inputs):
            out["loss_b"] = out["loss_b"] + float("inf")
        if self.training and any(d.get("poison_inf_grad") for d in batched_inputs):
            out["loss_a"] = out["loss_a"] + _InfGrad.apply(self.head.weight.sum())
        return out


class PoisonTrainer(TinyTrainer):
    @classmethod
    def build_model(cls, cfg):
        return PoisonDetector()


def _run(cfg, poison, resume=False):
    T = type("T", (PoisonTrainer,), {"poison": poison})
    t = T(cfg)
    t.resume_or_load(resume=resume)
    t.train()
    return t


def test_inf_loss_term_is_named(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"iteration 2: loss term\(s\) not finite: loss_b=inf"):
        _run(tiny_trainer_cfg(tmp_path, max_iter=4), {2: "poison_inf_loss"})


def test_inf_gradient_is_named_with_the_parameter(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"iteration 1: gradient\(s\) not finite \(all loss terms finite\) "
                                                 r"in: head.weight"):
        _run(tiny_trainer_cfg(tmp_path, max_iter=4), {1: "poison_inf_grad"})


@pytest.mark.parametrize("clip_type", ["value", "full_model"])
def test_nan_gradient_caught_with_clipping_enabled(tmp_path, clip_type):
    cfg = tiny_trainer_cfg(tmp_path, max_iter=4, **{"SOLVER.CLIP_GRADIENTS.ENABLED": True,
                                                  "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": clip_type})
    with pytest.raises(NonFiniteLossError, match=r"iteration 2: gradient\(s\) not finite"):
        _run(cfg, {2: "poison_grad"})


def test_nan_loss_under_bf16_autocast(tmp_path):
    cfg = tiny_trainer_cfg(tmp_path, max_iter=4, **{"SOLVER.AMP.ENABLED": "force"})  # bf16 on any CPU
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss term\(s\) not finite: loss_b=nan"):
        _run(cfg, {3: "poison_loss"})


def test_skip_policy_counts_across_a_resume_and_weights_stay_finite(tmp_path):
    poison = {1: "poison_inf_loss", 2: "poison_inf_grad", 6: "poison_grad"}
    skip = {"SOLVER.NONFINITE_POLICY": "skip"}
    first = _run(tiny_trainer_cfg(tmp_path, max_iter=5, **skip), poison)
    assert first.nonfinite_skipped == 2
    t = _run(tiny_trainer_cfg(tmp_path, max_iter=8, **skip), poison, resume=True)
    assert t.start_iter == 5 and t.nonfinite_skipped == 3  # 2 restored from the checkpoint + 1 after the resume
    assert read_metrics(tmp_path / "metrics.json")[-1]["nonfinite_skipped"] == 3
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["nonfinite_skipped"] == 3
    for p in t.unwrapped_model.parameters():
        assert torch.isfinite(p).all()
    # the skipped iterations left the weights exactly where an update-free step leaves them: the same run with
    # the skipped steps' batches marked again reproduces the same weights (skips are deterministic)
    again = _run(tiny_trainer_cfg(tmp_path / "again", max_iter=8, **skip), poison)
    for (k, a), b in zip(again.unwrapped_model.state_dict().items(), t.unwrapped_model.state_dict().values()):
        assert torch.equal(a, b), k
