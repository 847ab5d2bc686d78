"""Comparing two detectors' detections: equal boxes, scores and labels in the same order, except that detections
whose scores tie to within `tie` may come in either order (two implementations' float noise, ~1e-7 on the
scores, decides the order of a tie in NMS and sorting, and differs between CPU kinds)."""
import torch


def assert_same_detections(boxes, scores, labels, ref_boxes, ref_scores, ref_labels, box_atol=1e-3,
                           score_atol=1e-5, tie=1e-6):
    assert len(boxes) == len(ref_boxes), f"{len(boxes)} detections, the reference {len(ref_boxes)}"
    torch.testing.assert_close(scores, ref_scores, atol=score_atol, rtol=0)  # sorted: a swapped tie still fits
    # runs of reference positions whose neighbouring scores tie form one group, compared as a set
    start = 0
    for i in range(1, len(ref_scores) + 1):
        if i < len(ref_scores) and float(ref_scores[i - 1] - ref_scores[i]) < tie:
            continue
        group = slice(start, i)
        close = (boxes[group][:, None] - ref_boxes[group][None]).abs().amax(-1) <= box_atol
        close &= labels[group][:, None] == ref_labels[group][None]
        assert bool(close.any(1).all()) and bool(close.any(0).all()), (
            f"detections {start}..{i - 1} differ: {boxes[group].tolist()} {labels[group].tolist()} vs "
            f"{ref_boxes[group].tolist()} {ref_labels[group].tolist()}")
        start = i


def random_images(sizes, dtype=torch.float32) -> list[torch.Tensor]:
    """One (3, h, w) image of uniform 0-255 values per (h, w) in `sizes`, the same for every call (seed 1)."""
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).to(dtype) for h, w in sizes]


def save_detectron2_files(model, out) -> tuple[str, str]:
    """`model` (a detectron2 model) saved as detectron2 users get it, under the folder `out`: its
    DetectionCheckpointer's model_final.pth and the model zoo's .pkl layout ({"model": numpy arrays, "__author__"});
    returns (pth, pkl)."""
    import pickle

    from detectron2.checkpoint import DetectionCheckpointer

    DetectionCheckpointer(model, save_dir=str(out)).save("model_final")
    pkl = out / "model_final_zoo.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in model.state_dict().items()},
                     "__author__": "Detectron2 Model Zoo"}, f)
    return str(out / "model_final.pth"), str(pkl)


def ours_from_weights(config: str, weights: str, *overrides):
    """Our detector of `config` (a file under configs/) with MODEL.WEIGHTS `weights` and `overrides` (key, value,
    ...), the weights loaded whole through the Checkpointer (`allow_partial=False`: every tensor used)."""
    from resnet_backbone.checkpoint.checkpointer import Checkpointer
    from resnet_backbone.config import get_cfg
    from resnet_backbone.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.WEIGHTS", weights, *overrides])
    model = build_model(cfg)
    Checkpointer(model).load_weights(weights, allow_partial=False)
    return model


def randomize_bn(model: torch.nn.Module) -> None:
    """Random statistics and affine in every BatchNorm2d of a freshly built torchvision model, so that BN is not
    the identity (in place, under no_grad by the caller)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)


def frozen_bn(module: torch.nn.Module) -> None:
    """BatchNorm2d -> torchvision's FrozenBatchNorm2d (what its pretrained backbones hold), keeping the values."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, k).copy_(getattr(child, k).detach())
            setattr(module, name, frozen)
        else:
            frozen_bn(child)


def detectron2_config_file(d2, config: str) -> str:
    """detectron2's own config file `config`: in an installed package (model_zoo/configs) or a source checkout
    (configs/); skips the test when neither has it."""
    from pathlib import Path

    import pytest

    package = Path(d2.__file__).resolve().parent
    for path in (package / "model_zoo" / "configs" / config, package.parent / "configs" / config):
        if path.is_file():
            return str(path)
    pytest.skip(f"detectron2's {config} not found next to {package}")
