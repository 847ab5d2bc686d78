from .backbone import Backbone
from .build import BACKBONE_REGISTRY, build_backbone

# Importing a backbone module registers its builders. One line per module:
from . import fpn  # noqa: F401,E402
from .resnet import ResNet, build_resnet_backbone  # noqa: F401,E402
