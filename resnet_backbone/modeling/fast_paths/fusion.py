"""The fused-inference protocol between the model code and the fast-path passes.

A module with a faster inference form offers it as a method

    fuse_for_inference(fuse_conv) -> nn.Module | None

that returns the module to use in its place (a new one, or itself changed in place), or None when it has no fused
form here. The pass supplies `fuse_conv(conv, activation)` (for the oneDNN prepack: `mkldnn.pack_conv`), which
returns a module computing

    fused(x) == act(conv(x))        fused(x, other, accumulate=False) == act(conv(x) + other)

(act: None or "relu"; accumulate=True lets it write the result into `other`, which the caller promises nobody reads
afterwards), or None when that conv cannot be fused (it carries a norm or an activation of its own, it is not a
plain convolution, ...). A module some of whose convs cannot be fused returns None, and the pass swaps its plain
convs one by one instead.

Offered by our ResNet's BasicStem, BasicBlock and BottleneckBlock (the fused forms live next to them, in
backbone/resnet.py), by the ResNet (which knows that inside a stage a block's input is read by that block alone),
and by the FPN (whose lateral convs take the top-down add). A subclass inherits its base's fused form as long as it
computes what its base computes (`computes_as`); one that changes the computation overrides `fuse_for_inference`
(or is left unfused, never fused wrongly).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

__all__ = ["Fusable", "computes_as"]


@runtime_checkable
class Fusable(Protocol):
    def fuse_for_inference(self, fuse_conv) -> nn.Module | None: ...


def computes_as(module: nn.Module, base: type, methods: tuple[str, ...] = ("forward",)) -> bool:
    """True when `module` is a `base` whose class resolves every one of `methods` to `base`'s own: a subclass that
    changed none of them computes what `base` computes, so `base`'s fused form fits it."""
    cls = type(module)
    return isinstance(module, base) and all(getattr(cls, m) is getattr(base, m) for m in methods)
