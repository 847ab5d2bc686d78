"""Our ResNet / FPN backbones inside detectron2's models (GeneralizedRCNN, RetinaNet, ...).

Importing this module registers three builders in `detectron2.modeling.BACKBONE_REGISTRY`:

    build_rb_resnet_backbone                 our ResNet             (detectron2: build_resnet_backbone)
    build_rb_resnet_fpn_backbone             our ResNet + FPN (P6)  (detectron2: build_resnet_fpn_backbone)
    build_rb_retinanet_resnet_fpn_backbone   our ResNet + FPN P6/P7 (detectron2: build_retinanet_resnet_fpn_backbone)

so a stock detectron2 config plus `MODEL.BACKBONE.NAME build_rb_resnet_fpn_backbone` trains detectron2's own
detector on our backbone. The builders read detectron2's MODEL.RESNETS / MODEL.FPN / MODEL.BACKBONE.FREEZE_AT keys
(ours have the same names and meaning).

How the returned module satisfies detectron2: detectron2's `build_backbone` asserts `isinstance(b, Backbone)` for
its own Backbone class. A wrapper module would add a level to every parameter name (backbone.body.bottom_up...) and
break detectron2's checkpoints, so instead the module we build is given a class that derives from both our class and
detectron2's Backbone (`as_detectron2_backbone`). Nothing else changes: same object, same parameters, same names
(backbone.bottom_up.res2.0.conv1.weight ...), same forward; `output_shape()` returns detectron2's ShapeSpec and
`size_divisibility` / `padding_constraints` are our module's. The derived classes are cached and are attributes of
this module, so models built this way pickle and deep-copy.

detectron2 is not a dependency of this project: install it yourself (see docs/INTEGRATIONS.md).
"""
from __future__ import annotations

import sys

from torch import nn

try:
    from detectron2.layers import ShapeSpec as D2ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY as D2_BACKBONE_REGISTRY
    from detectron2.modeling import Backbone as D2Backbone
except ImportError as e:  # pragma: no cover - exercised only where detectron2 is missing
    raise ImportError(
        "resnet_backbone.integrations.detectron2 needs detectron2, which is not installed (it is an optional "
        "dependency that is not on PyPI). Install it from source: see docs/INTEGRATIONS.md, "
        f"'Use with detectron2'. Original error: {e}"
    ) from e

from ..config import ConfigError, get_cfg
from ..layers import ShapeSpec
from ..modeling.backbone import BACKBONE_REGISTRY, Backbone

__all__ = [
    "register",
    "as_detectron2_backbone",
    "detectron2_cfg_to_ours",
    "build_rb_resnet_backbone",
    "build_rb_resnet_fpn_backbone",
    "build_rb_retinanet_resnet_fpn_backbone",
]

# The detectron2 config sections our builders read. Every key of these sections is copied into our config;
# a key we do not know is an error rather than being silently ignored.
_COPIED_SECTIONS = ("MODEL.RESNETS", "MODEL.FPN")
_COPIED_KEYS = ("MODEL.BACKBONE.FREEZE_AT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.DEVICE")


def _get(node, dotted: str):
    for part in dotted.split("."):
        node = node[part]
    return node


def detectron2_cfg_to_ours(d2_cfg):
    """Our CfgNode with the backbone-related keys of a detectron2 CfgNode (MODEL.RESNETS, MODEL.FPN, FREEZE_AT, ...).

    Raises ConfigError naming a key of those sections that our config does not have.
    """
    cfg = get_cfg()
    for section in _COPIED_SECTIONS:
        try:
            d2_section = _get(d2_cfg, section)
        except KeyError:
            continue  # an old / trimmed detectron2 config: keep our defaults
        ours = _get(cfg, section)
        for key, value in d2_section.items():
            if key not in ours:
                raise ConfigError(
                    f"detectron2 config key {section}.{key} has no counterpart in resnet_backbone's config "
                    f"(known keys in {section}: {', '.join(sorted(ours.keys()))})"
                )
            ours[key] = _plain(value)
    for dotted in _COPIED_KEYS:
        try:
            value = _get(d2_cfg, dotted)
        except KeyError:
            continue
        section, key = dotted.rsplit(".", 1)
        _get(cfg, section)[key] = _plain(value)
    return cfg


def _plain(value):
    # detectron2 YAML gives tuples or lists for sequences; our defaults use lists for these keys.
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


_D2_CLASSES: dict[type, type] = {}


def _detectron2_class(cls: type) -> type:
    """A class deriving from `cls` (ours) and detectron2's Backbone, created once per class."""
    if issubclass(cls, D2Backbone):
        return cls
    if cls in _D2_CLASSES:
        return _D2_CLASSES[cls]
    base_output_shape = cls.output_shape

    def output_shape(self):
        return {
            name: D2ShapeSpec(channels=s.channels, height=s.height, width=s.width, stride=s.stride)
            for name, s in base_output_shape(self).items()
        }

    name = f"Detectron2{cls.__name__}"
    new_cls = type(name, (cls, D2Backbone), {
        "output_shape": output_shape,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{cls.__module__}.{cls.__qualname__} that is also a detectron2 Backbone.\n\n{cls.__doc__ or ''}",
    })
    # Reachable as resnet_backbone.integrations.detectron2.<name>, so pickle / copy.deepcopy find it.
    setattr(sys.modules[__name__], name, new_cls)
    _D2_CLASSES[cls] = new_cls
    return new_cls


def as_detectron2_backbone(backbone: nn.Module) -> nn.Module:
    """Make `backbone` (one of ours, and every backbone of ours inside it, e.g. an FPN's `bottom_up`) an instance of
    detectron2's Backbone too, in place, and return it. Parameters, names and forward are unchanged."""
    for module in backbone.modules():
        if isinstance(module, Backbone) and not isinstance(module, D2Backbone):
            module.__class__ = _detectron2_class(type(module))
    if not isinstance(backbone, D2Backbone):
        raise TypeError(f"as_detectron2_backbone: {type(backbone).__name__} is not a resnet_backbone Backbone")
    return backbone


def _build(our_builder: str, d2_cfg, input_shape) -> nn.Module:
    cfg = detectron2_cfg_to_ours(d2_cfg)
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    shape = ShapeSpec(channels=input_shape.channels, height=input_shape.height, width=input_shape.width,
                      stride=input_shape.stride)
    return as_detectron2_backbone(BACKBONE_REGISTRY.get(our_builder)(cfg, shape))


def build_rb_resnet_backbone(cfg, input_shape=None):
    """detectron2 builder: our ResNet from detectron2's MODEL.RESNETS keys (outputs MODEL.RESNETS.OUT_FEATURES)."""
    return _build("build_resnet_backbone", cfg, input_shape)


def build_rb_resnet_fpn_backbone(cfg, input_shape=None):
    """detectron2 builder: our ResNet + FPN with the max-pool P6 top block (Faster R-CNN), outputs p2..p6."""
    return _build("build_resnet_fpn_backbone", cfg, input_shape)


def build_rb_retinanet_resnet_fpn_backbone(cfg, input_shape=None):
    """detectron2 builder: our ResNet + FPN with P6/P7 convs from C5 (RetinaNet), outputs p3..p7."""
    return _build("build_retinanet_resnet_fpn_backbone", cfg, input_shape)


_BUILDERS = (build_rb_resnet_backbone, build_rb_resnet_fpn_backbone, build_rb_retinanet_resnet_fpn_backbone)


def register() -> None:
    """Add our builders to detectron2's BACKBONE_REGISTRY. Idempotent (also across a reload of this module)."""
    for fn in _BUILDERS:
        name = fn.__name__
        if name in D2_BACKBONE_REGISTRY:
            existing = D2_BACKBONE_REGISTRY.get(name)
            if existing is fn:
                continue
            if getattr(existing, "__module__", None) == __name__:
                # This module was reloaded: point the name at the new function.
                D2_BACKBONE_REGISTRY._obj_map[name] = fn
                continue
            raise RuntimeError(
                f"detectron2's BACKBONE_REGISTRY already has a '{name}' from {existing.__module__}; "
                "resnet_backbone will not overwrite it"
            )
        D2_BACKBONE_REGISTRY.register(fn)


register()
