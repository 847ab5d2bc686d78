"""The FPN layout of a weight file against the model's: with or without the 3x3 output convs (MODEL.FPN.OUTPUT_CONVS).

An FPN built with MODEL.FPN.OUTPUT_CONVS False has no `fpn_output{k}` modules. Loaded by name, a checkpoint trained
with them would drop those weights as "unexpected" (the network it was trained as is gone), and a checkpoint trained
without them would leave a model that has them at their initialisation: both are refused, naming the file, the
first such key (with its shape) and the setting that fits the file. A file without any FPN weights of that FPN
(backbone weights only) is no layout: it is not checked.
"""
from __future__ import annotations

import re
from typing import Mapping

from . import CheckpointError

__all__ = ["check_fpn_layout"]

# "<prefix>fpn_lateral<k>." / "<prefix>fpn_output<k>.": the prefix says which FPN (e.g. "backbone.")
_LATERAL = re.compile(r"^(.*?)fpn_lateral\d+\.")
_OUTPUT = "fpn_output"


def _shape(t) -> tuple:
    return tuple(getattr(t, "shape", ()))


def check_fpn_layout(state: Mapping, own: Mapping, name: str) -> None:
    """CheckpointError when `state` (the file's tensors in the model's names) holds an FPN of the other layout than
    `own` (the model's state dict) at the same prefix: output conv weights the model has no place for, or every
    lateral of the model's FPN without the output convs the model has (a file with only some FPN tensors is left to
    the loader's missing-key rules). `name`: the file, as messages call it."""
    for prefix in sorted({m.group(1) for k in own if (m := _LATERAL.match(k))}):
        # in state-dict order: the first is the finest level's weight, as a reader looks for it
        ours = [k for k in own if k.startswith(prefix + _OUTPUT)]
        theirs = [k for k in state if k.startswith(prefix + _OUTPUT)]
        if not ours and theirs:
            raise CheckpointError(
                f"'{name}' holds the FPN's 3x3 output convs ({theirs[0]}, shape {_shape(state[theirs[0]])}; "
                f"{len(theirs)} tensors) and the model was built without them (MODEL.FPN.OUTPUT_CONVS False): they "
                "would be dropped; set MODEL.FPN.OUTPUT_CONVS True, the layout this checkpoint was trained with")
        laterals = [k for k in own if k.startswith(prefix + "fpn_lateral") and not k.endswith("num_batches_tracked")]
        if ours and not theirs and all(k in state for k in laterals):  # the whole FPN but its output convs
            raise CheckpointError(
                f"'{name}' holds the FPN's laterals but no 3x3 output convs, and the model has them ({ours[0]}, "
                f"shape {_shape(own[ours[0]])}, missing from the file; {len(ours)} tensors would stay at their "
                "initialisation); set MODEL.FPN.OUTPUT_CONVS False, the layout this checkpoint was trained with")
