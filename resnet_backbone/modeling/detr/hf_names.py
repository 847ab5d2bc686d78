"""Our DETR's parameter names -> Hugging Face transformers' `DetrForObjectDetection` names (timm ResNet backbone).

Used to give the reference the same weights: the HF parity test (tests/modeling/detr/test_detr_hf_parity.py)
and the benchmark's DETR rows (tools/benchmark.py). Only names and the split of the fused attention in-projection
change; transformers itself is never imported here.

    state = to_hf_state_dict(ours.state_dict())
    hf.load_state_dict(state, strict=False)   # then no missing / unexpected keys (the parity test checks it)
"""
from __future__ import annotations

import re

import torch

__all__ = ["to_hf_state_dict", "hf_name"]

_HEADS = {"input_proj.": "model.input_projection.", "query_embed.": "model.query_position_embeddings.",
          "class_embed.": "class_labels_classifier.", "bbox_embed.": "bbox_predictor.",
          "transformer.decoder.norm.": "model.decoder.layernorm."}
_ATTN = {"self_attn": "self_attn", "multihead_attn": "encoder_attn"}
_FFN = {"linear1": "fc1", "linear2": "fc2"}


def _resnet_name(ours: str) -> str:
    """Our ResNet name -> torchvision / timm name (res2.0.conv1.norm.weight -> layer1.0.bn1.weight)."""
    k = ours.replace("stem.conv1.norm.", "bn1.").replace("stem.conv1.", "conv1.")
    k = re.sub(r"^res(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}.", k)
    k = re.sub(r"conv(\d)\.norm\.", r"bn\1.", k)
    return k.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")


def hf_name(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """One of our (name, tensor) pairs as HF's: usually one pair, three for a fused q/k/v in-projection."""
    if key.startswith("backbone."):
        return {"model.backbone.model." + _resnet_name(key[len("backbone."):]): value}
    for a, b in _HEADS.items():
        if key.startswith(a):
            return {b + key[len(a):]: value}
    m = re.match(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)", key)
    if m is None:
        raise KeyError(f"DETR parameter {key!r} has no Hugging Face name")
    part, n, rest = m.groups()
    pre = f"model.{part}.layers.{n}."
    module, _, tail = rest.partition(".")
    if module in _ATTN:
        if tail.startswith("in_proj_"):
            kind = tail[len("in_proj_"):]
            q, k, v = value.chunk(3, 0)
            return {f"{pre}{_ATTN[module]}.{p}_proj.{kind}": t for p, t in zip("qkv", (q, k, v))}
        return {f"{pre}{_ATTN[module]}.o_proj.{tail.split('.')[-1]}": value}
    norms = {"norm1": "self_attn_layer_norm", "norm3": "final_layer_norm",
             "norm2": "final_layer_norm" if part == "encoder" else "encoder_attn_layer_norm"}
    if module in norms:
        return {f"{pre}{norms[module]}.{tail}": value}
    if module in _FFN:
        return {f"{pre}mlp.{_FFN[module]}.{tail}": value}
    raise KeyError(f"DETR parameter {key!r} has no Hugging Face name")


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our DETR state dict under HF DetrForObjectDetection's names (load it with strict=False: HF's
    num_batches_tracked buffers are absent from our FrozenBN backbone)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        out.update(hf_name(k, v))
    return out
