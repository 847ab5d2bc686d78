"""Checkpoints: the package error type, safe weight-file reading (reader.py: the one reader), the format registry
(formats.py) and its converters, and the Checkpointer.

`CheckpointError` is defined first: every submodule imports it from here.
"""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, written, converted or applied; the message names the file/key."""


from .converters import convert_checkpoint, convert_state_dict, detect_source, load_backbone_weights  # noqa: E402
from .safe_pickle import load_checkpoint_file, load_pickle  # noqa: E402

__all__ = [
    "CheckpointError",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_source",
    "load_backbone_weights",
    "load_checkpoint_file",
    "load_pickle",
]
