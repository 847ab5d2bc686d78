from .build import META_ARCH_REGISTRY, build_model

# Importing a detector module registers it. One line per module:
from . import faster_rcnn  # noqa: F401,E402
from . import detr  # noqa: F401,E402
from . import dbnet  # noqa: F401,E402
