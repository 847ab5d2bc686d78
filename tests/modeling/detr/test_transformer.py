import pytest
import torch
from torch import nn

from resnet_backbone.modeling.detr.transformer import Transformer


def _inputs(b=2, c=32, h=4, w=5, q=7):
    src = torch.randn(b, c, h, w)
    pos = torch.randn(b, c, h, w)
    query = torch.randn(q, c)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    return src, mask, query, pos


@pytest.mark.parametrize("pre_norm", [False, True])
def test_shapes_and_every_layer_output(pre_norm):
    tr = Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=64,
                     dropout=0.0, normalize_before=pre_norm).eval()
    src, mask, query, pos = _inputs()
    hs, memory = tr(src, mask, query, pos)
    assert hs.shape == (3, 2, 7, 32)
    assert memory.shape == src.shape
    # every layer's output went through the final decoder norm: zero mean, unit variance per token
    torch.testing.assert_close(hs.mean(-1), torch.zeros(3, 2, 7), atol=1e-5, rtol=0)
    assert not torch.allclose(hs[0], hs[-1])


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padded_positions_do_not_affect_valid_outputs(pre_norm):
    tr = Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64,
                     dropout=0.0, normalize_before=pre_norm).eval()
    src, mask, query, pos = _inputs(b=1)
    mask[0, :, 3:] = True
    hs, memory = tr(src, mask, query, pos)
    src2, pos2 = src.clone(), pos.clone()
    src2[..., 3:] = 100 * torch.randn_like(src2[..., 3:])
    pos2[..., 3:] = torch.randn_like(pos2[..., 3:])
    hs2, memory2 = tr(src2, mask, query, pos2)
    torch.testing.assert_close(hs2, hs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(memory2[..., :3], memory[..., :3], atol=1e-5, rtol=1e-5)
    # without the mask the padding content does change the result
    hs3, _ = tr(src2, torch.zeros_like(mask), query, pos2)
    assert not torch.allclose(hs3, hs, atol=1e-3)


def test_position_embedding_goes_to_queries_and_keys_not_values():
    tr = Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
                     dropout=0.0).eval()
    layer = tr.encoder.layers[0]
    seen = {}

    def hook(_mod, args, kwargs):
        seen["q"], seen["k"], seen["v"] = args[:3]

    handle = layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True)
    src, mask, query, pos = _inputs(b=1, c=16)
    tr(src, mask, query, pos)
    handle.remove()
    flat_src = src.flatten(2).permute(2, 0, 1)
    flat_pos = pos.flatten(2).permute(2, 0, 1)
    torch.testing.assert_close(seen["q"], flat_src + flat_pos)
    torch.testing.assert_close(seen["k"], flat_src + flat_pos)
    torch.testing.assert_close(seen["v"], flat_src)


def test_parameter_names_follow_the_official_layout():
    names = set(dict(Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                 dim_feedforward=32).named_parameters()))
    for key in ["encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.0.self_attn.out_proj.weight",
                "encoder.layers.0.linear1.weight", "encoder.layers.0.norm2.bias",
                "decoder.layers.0.multihead_attn.in_proj_bias", "decoder.layers.0.norm3.weight",
                "decoder.norm.weight"]:
        assert key in names
    assert not any(n.startswith("encoder.norm") for n in names)  # post-norm: no final encoder norm


def test_bad_dims():
    with pytest.raises(ValueError, match="divisible"):
        Transformer(d_model=30, nhead=4)


def test_training_attention_on_cpu_is_the_modules_own_computation():
    """transformer.attend (the written-out attention used in training, for the cheaper dropout mask) equals
    nn.MultiheadAttention with padded keys, outputs and gradients, when both drop nothing."""
    from resnet_backbone.modeling.detr.transformer import attend

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, dropout=0.1).train()
    q, k = torch.randn(7, 2, 32, requires_grad=True), torch.randn(9, 2, 32, requires_grad=True)
    v = torch.randn(9, 2, 32, requires_grad=True)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    ours = attend(mha, q, k, v, pad, drop=lambda x, p, training: x)
    grads_ours = torch.autograd.grad(ours.square().sum(), [q, k, v, mha.in_proj_weight])
    mha.dropout = 0.0
    ref = mha(q, k, v, key_padding_mask=pad, need_weights=False)[0]
    grads_ref = torch.autograd.grad(ref.square().sum(), [q, k, v, mha.in_proj_weight])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    mha.dropout = 0.1  # with dropout, attend drops attention probabilities: outputs differ from the expectation
    assert not torch.allclose(attend(mha, q, k, v, pad), ref)
