from .build import (
    WarmupCosineLR,
    WarmupMultiStepLR,
    build_grad_clipper,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
)

__all__ = [
    "build_optimizer",
    "build_lr_scheduler",
    "build_grad_clipper",
    "get_default_optimizer_params",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
]
