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
break detectron2's checkpoints, so the builders construct, with our own builders, instances of two classes defined
here that derive from both our class and detectron2's Backbone:

    Detectron2ResNet(ResNet, detectron2.modeling.Backbone)   what build_rb_resnet_backbone returns, and every
                                                             FPN's bottom_up below
    Detectron2FPN(FPN, detectron2.modeling.Backbone)         what both FPN builders return (P6 / P6-P7 top block)

They add no state: same parameters, same names (backbone.bottom_up.res2.0.conv1.weight ...), same forward;
`output_shape()` returns detectron2's ShapeSpec and `size_divisibility` / `padding_constraints` are our module's.
They are ordinary module-level classes, importable by name, so a detectron2 model holding our backbone deep-copies
and pickles, and a whole pickled model (`torch.save(model)`) loads in a new process: unpickling imports this module,
which imports detectron2 and registers the builders.

detectron2 is not a dependency of this project (install it yourself, see docs/INTEGRATIONS.md). Without it this
module still imports (`HAVE_DETECTRON2` is False; `detectron2_cfg_to_ours` works on any CfgNode), and using
anything that needs detectron2 (the two classes, the builders, `register`, `as_detectron2_backbone`) raises an
ImportError that says how to install it.
"""
from __future__ import annotations

import importlib
import sys

from torch import nn

from ..config import ConfigError, get_cfg
from ..layers import ShapeSpec
from ..modeling.backbone import (
    FPN,
    Backbone,
    ResNet,
    build_resnet_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)

try:
    from detectron2.layers import ShapeSpec as D2ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY as D2_BACKBONE_REGISTRY
    from detectron2.modeling import Backbone as D2Backbone
except ImportError as e:  # detectron2 is optional
    _DETECTRON2_IMPORT_ERROR: ImportError | None = e
else:
    _DETECTRON2_IMPORT_ERROR = None

HAVE_DETECTRON2 = _DETECTRON2_IMPORT_ERROR is None

# The detectron2-facing classes, defined below only where detectron2 imports.
_DETECTRON2_CLASSES = ("Detectron2ResNet", "Detectron2FPN")

__all__ = [
    "HAVE_DETECTRON2",
    "register",
    "as_detectron2_backbone",
    "detectron2_cfg_to_ours",
    "build_rb_resnet_backbone",
    "build_rb_resnet_fpn_backbone",
    "build_rb_retinanet_resnet_fpn_backbone",
] + (list(_DETECTRON2_CLASSES) if HAVE_DETECTRON2 else [])


def _require_detectron2(what: str) -> None:
    if _DETECTRON2_IMPORT_ERROR is not None:
        raise ImportError(
            f"resnet_backbone.integrations.detectron2.{what} needs detectron2, which could not be imported (it is "
            "an optional dependency that is not on PyPI). Install it from source: see docs/INTEGRATIONS.md, "
            f"'Use with detectron2'. Original error: {_DETECTRON2_IMPORT_ERROR}"
        ) from _DETECTRON2_IMPORT_ERROR


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


if HAVE_DETECTRON2:

    def _to_detectron2_shapes(shapes: dict[str, ShapeSpec]) -> dict[str, D2ShapeSpec]:
        return {name: D2ShapeSpec(channels=s.channels, height=s.height, width=s.width, stride=s.stride)
                for name, s in shapes.items()}

    class Detectron2ResNet(ResNet, D2Backbone):
        """resnet_backbone's ResNet that is also a detectron2 Backbone (built by build_rb_resnet_backbone).

        Same constructor, parameters, names and forward as ResNet; output_shape() gives detectron2's ShapeSpec.
        """

        def output_shape(self) -> dict[str, D2ShapeSpec]:
            return _to_detectron2_shapes(super().output_shape())

    class Detectron2FPN(FPN, D2Backbone):
        """resnet_backbone's FPN that is also a detectron2 Backbone (built by build_rb_resnet_fpn_backbone and
        build_rb_retinanet_resnet_fpn_backbone; its bottom_up is a Detectron2ResNet).

        Same constructor, parameters, names and forward as FPN; output_shape() gives detectron2's ShapeSpec.
        """

        def output_shape(self) -> dict[str, D2ShapeSpec]:
            return _to_detectron2_shapes(super().output_shape())

else:

    def __getattr__(name: str):
        # Without detectron2 the classes are not defined; say why instead of a bare AttributeError.
        if name in _DETECTRON2_CLASSES:
            _require_detectron2(name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_detectron2_backbone(backbone: nn.Module) -> nn.Module:
    """Give a backbone of ours that is already built (a ResNet or FPN, and an FPN's `bottom_up`) its detectron2
    class (Detectron2ResNet / Detectron2FPN), in place, and return it.

    The build_rb_* builders do not use this: they construct those classes directly. It is for a module you already
    have (built by our own builder, loaded from one of our checkpoints). Only `__class__` changes, to a subclass
    that adds no state, so parameters, names and forward are unchanged, and the result pickles like a built one.
    A subclass of ResNet / FPN of your own is refused: define `class X(YourClass, detectron2.modeling.Backbone)`.
    """
    _require_detectron2("as_detectron2_backbone")
    targets = {ResNet: Detectron2ResNet, FPN: Detectron2FPN}
    if not isinstance(backbone, Backbone):
        raise TypeError(f"as_detectron2_backbone: {type(backbone).__name__} is not a resnet_backbone Backbone")
    changes = []
    for module in backbone.modules():
        if not isinstance(module, Backbone) or isinstance(module, D2Backbone):
            continue
        target = targets.get(type(module))
        if target is None:
            raise TypeError(
                f"as_detectron2_backbone: no detectron2 class for {type(module).__module__}."
                f"{type(module).__qualname__} (known: ResNet, FPN); define a module-level class deriving from it "
                "and detectron2.modeling.Backbone instead"
            )
        changes.append((module, target))
    for module, target in changes:  # all checked first: nothing changes when one is refused
        module.__class__ = target
    return backbone


def _live():
    """This module as imported now. detectron2's registry keeps the builder functions of the first import (it has
    no public way to replace an entry); after a reload or a fresh re-import they must build the current classes."""
    module = sys.modules.get(__name__)
    return module if module is not None else importlib.import_module(__name__)


def _build(kind: str, d2_cfg, input_shape) -> nn.Module:
    _require_detectron2(f"build_rb_{kind}")
    cfg = detectron2_cfg_to_ours(d2_cfg)
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    shape = ShapeSpec(channels=input_shape.channels, height=input_shape.height, width=input_shape.width,
                      stride=input_shape.stride)
    if kind == "resnet_backbone":
        return build_resnet_backbone(cfg, shape, resnet_class=Detectron2ResNet)
    builder = {"resnet_fpn_backbone": build_resnet_fpn_backbone,
               "retinanet_resnet_fpn_backbone": build_retinanet_resnet_fpn_backbone}[kind]
    return builder(cfg, shape, fpn_class=Detectron2FPN, resnet_class=Detectron2ResNet)


def build_rb_resnet_backbone(cfg, input_shape=None):
    """detectron2 builder: our ResNet from detectron2's MODEL.RESNETS keys (outputs MODEL.RESNETS.OUT_FEATURES),
    as a Detectron2ResNet."""
    return _live()._build("resnet_backbone", cfg, input_shape)


def build_rb_resnet_fpn_backbone(cfg, input_shape=None):
    """detectron2 builder: our ResNet + FPN with the max-pool P6 top block (Faster R-CNN), outputs p2..p6,
    as a Detectron2FPN."""
    return _live()._build("resnet_fpn_backbone", cfg, input_shape)


def build_rb_retinanet_resnet_fpn_backbone(cfg, input_shape=None):
    """detectron2 builder: our ResNet + FPN with P6/P7 convs from C5 (RetinaNet), outputs p3..p7,
    as a Detectron2FPN."""
    return _live()._build("retinanet_resnet_fpn_backbone", cfg, input_shape)


_BUILDERS = (build_rb_resnet_backbone, build_rb_resnet_fpn_backbone, build_rb_retinanet_resnet_fpn_backbone)


def register() -> None:
    """Add our builders to detectron2's BACKBONE_REGISTRY, through its public `register` only.

    Idempotent, also across a reload or re-import of this module: a builder of this module already registered
    under the name is kept (detectron2's registry cannot replace an entry; the kept function builds with this
    module's current code) and this module's name is pointed at it. A name taken by anything else is an error.
    """
    _require_detectron2("register")
    for fn in _BUILDERS:
        name = fn.__name__
        if name not in D2_BACKBONE_REGISTRY:
            D2_BACKBONE_REGISTRY.register(fn)
            continue
        existing = D2_BACKBONE_REGISTRY.get(name)
        if existing is fn:
            continue
        if getattr(existing, "__module__", None) == __name__ and getattr(existing, "__qualname__", None) == name:
            globals()[name] = existing
            continue
        raise RuntimeError(
            f"detectron2's BACKBONE_REGISTRY already has a '{name}' from {getattr(existing, '__module__', '?')}; "
            "resnet_backbone will not overwrite it"
        )


if HAVE_DETECTRON2:
    register()
