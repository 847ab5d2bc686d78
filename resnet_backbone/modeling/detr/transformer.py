"""The DETR encoder-decoder transformer.

Differences from a plain nn.Transformer that matter for DETR:
- positional embeddings are added to the queries and keys of every attention layer (never to the values);
  the encoder uses the image's sine encoding, the decoder adds the learned query embedding to its queries;
- the image padding mask is the key_padding_mask of the encoder self-attention and the decoder
  cross-attention, so padded pixels never contribute to a valid position's output;
- the decoder returns the (normed) output of every layer, stacked, for the auxiliary losses.

Parameter names follow the official DETR checkpoint (`encoder.layers.N.self_attn.in_proj_weight`,
`decoder.layers.N.multihead_attn.out_proj.weight`, `decoder.norm.weight`, ...).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ...layers.dropout import Dropout, dropout

__all__ = ["Transformer", "TransformerEncoder", "TransformerDecoder", "TransformerEncoderLayer",
           "TransformerDecoderLayer"]

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose from {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


def attend(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           key_padding_mask: torch.Tensor | None = None, drop=dropout) -> torch.Tensor:
    """`mha(query, key, value, key_padding_mask=..., need_weights=False)[0]` for (L, B, E) tensors.

    In training on CPU with attention dropout, the same computation written out (in-projections, scaled scores,
    padded keys at -inf, softmax, dropout, weighted values, out-projection) so the attention probabilities are
    dropped by layers.dropout's cheaper mask (`drop`); everywhere else the module itself (its fused kernels).
    """
    if not (mha.training and mha.dropout > 0 and query.device.type == "cpu"):
        return mha(query, key, value, key_padding_mask=key_padding_mask, need_weights=False)[0]
    (L, B, E), S, h = query.shape, key.shape[0], mha.num_heads
    d = E // h
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q).view(L, B * h, d).transpose(0, 1)
    k = F.linear(key, w_k, b_k).view(S, B * h, d).transpose(0, 1)
    v = F.linear(value, w_v, b_v).view(S, B * h, d).transpose(0, 1)
    scores = torch.bmm(q * d ** -0.5, k.transpose(1, 2))  # (B*h, L, S)
    if key_padding_mask is not None:
        scores = scores.view(B, h, L, S).masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        scores = scores.view(B * h, L, S)
    attn = drop(scores.softmax(-1), mha.dropout, True)
    out = torch.bmm(attn, v).transpose(0, 1).reshape(L, B, E)
    return mha.out_proj(out)


class _Layer(nn.Module):
    """What both layer kinds share: `attentions` multi-head attentions (self_attn, then multihead_attn), the
    feed-forward linear1 -> activation -> dropout -> linear2, and one LayerNorm + dropout per sub-block
    (norm1 / dropout1, ...). Attribute names are the official checkpoint's."""

    def __init__(self, attentions: int, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 activation: str, normalize_before: bool):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        if attentions == 2:
            self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        for i in range(1, attentions + 2):  # one per attention + the feed-forward
            setattr(self, f"norm{i}", nn.LayerNorm(d_model))
        for i in range(1, attentions + 2):
            setattr(self, f"dropout{i}", Dropout(dropout))
        self.activation = _activation(activation)
        self.normalize_before = normalize_before

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class TransformerEncoderLayer(_Layer):
    """Self-attention + feed-forward, post-norm (default) or pre-norm. Tensors are (S, B, C)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False):
        super().__init__(1, d_model, nhead, dim_feedforward, dropout, activation, normalize_before)

    def forward(self, src: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        if self.normalize_before:
            x = self.norm1(src)
            qk = _with_pos(x, pos)
            src = src + self.dropout1(attend(self.self_attn, qk, qk, x, src_key_padding_mask))
            src = src + self.dropout2(self._ffn(self.norm2(src)))
            return src
        qk = _with_pos(src, pos)
        attn = attend(self.self_attn, qk, qk, src, src_key_padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        src = self.norm2(src + self.dropout2(self._ffn(src)))
        return src


class TransformerDecoderLayer(_Layer):
    """Self-attention over queries, cross-attention to the encoder memory, feed-forward. Tensors (L, B, C)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False):
        super().__init__(2, d_model, nhead, dim_feedforward, dropout, activation, normalize_before)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                memory_key_padding_mask: torch.Tensor | None = None, pos: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None) -> torch.Tensor:
        if self.normalize_before:
            x = self.norm1(tgt)
            qk = _with_pos(x, query_pos)
            tgt = tgt + self.dropout1(attend(self.self_attn, qk, qk, x))
            x = self.norm2(tgt)
            tgt = tgt + self.dropout2(attend(self.multihead_attn, _with_pos(x, query_pos), _with_pos(memory, pos),
                                             memory, memory_key_padding_mask))
            tgt = tgt + self.dropout3(self._ffn(self.norm3(tgt)))
            return tgt
        qk = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(attend(self.self_attn, qk, qk, tgt)))
        cross = attend(self.multihead_attn, _with_pos(tgt, query_pos), _with_pos(memory, pos), memory,
                       memory_key_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(cross))
        tgt = self.norm3(tgt + self.dropout3(self._ffn(tgt)))
        return tgt


class TransformerEncoder(nn.Module):
    def __init__(self, layer: TransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, src, src_key_padding_mask=None, pos=None):
        out = src
        for layer in self.layers:
            out = layer(out, src_key_padding_mask=src_key_padding_mask, pos=pos)
        return out if self.norm is None else self.norm(out)


class TransformerDecoder(nn.Module):
    """Returns (num_layers, L, B, C): every layer's output passed through the shared final norm."""

    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        out = tgt
        per_layer = []
        for layer in self.layers:
            out = layer(out, memory, memory_key_padding_mask=memory_key_padding_mask, pos=pos,
                        query_pos=query_pos)
            per_layer.append(self.norm(out))
        return torch.stack(per_layer)


class Transformer(nn.Module):
    """DETR's encoder-decoder.

    forward(src (B, C, H, W), mask (B, H, W) True on padding, query_embed (Q, C), pos_embed (B, C, H, W))
    returns (hs (num_dec_layers, B, Q, C), memory (B, C, H, W)).
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"Transformer: d_model ({d_model}) must be divisible by nhead ({nhead})")
        if num_decoder_layers < 1:
            raise ValueError("Transformer: needs at least one decoder layer")
        enc_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        # pre-norm leaves the residual stream un-normalized, so the encoder ends with a norm; post-norm does not
        self.encoder = TransformerEncoder(enc_layer, num_encoder_layers,
                                          nn.LayerNorm(d_model) if normalize_before else None)
        dec_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        self.decoder = TransformerDecoder(dec_layer, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        self.nhead = nhead
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, mask: torch.Tensor, query_embed: torch.Tensor,
                pos_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_pos = query_embed.unsqueeze(1).expand(-1, b, -1)  # (Q, B, C)
        mask = mask.flatten(1)  # (B, HW)
        memory = self.encoder(src, src_key_padding_mask=mask, pos=pos_embed)
        tgt = torch.zeros_like(query_pos)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=mask, pos=pos_embed, query_pos=query_pos)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).reshape(b, c, h, w)
