"""tools/benchmark.py times the same fast paths as before MODEL.FUSE_FROZEN_BN stopped implying the oneDNN prepack:
its rows set MODEL.MKLDNN_PREPACK (or mkldnn=) beside it on the CPU, so the benchmark ratios do not move."""
import argparse

import pytest
from _tools import load_tool

from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.fast_paths import MkldnnConv2d, fast_path_problems, mkldnn_available

bench = load_tool("benchmark")


@pytest.mark.parametrize("device, prepack", [("cpu", True), ("cuda", False)])
def test_fast_cfg_sets_every_fast_path_of_its_device(device, prepack):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = device
    bench._fast_cfg(cfg)
    m = cfg.MODEL
    assert (m.FUSE_FROZEN_BN, m.MKLDNN_PREPACK, m.CHANNELS_LAST) == (True, prepack, True)
    assert fast_path_problems(cfg) == []


class _Built(Exception):
    pass


@pytest.mark.skipif(not mkldnn_available(), reason="torch built without oneDNN")
def test_backbone_row_times_the_prepacked_model(monkeypatch):
    real = bench.optimize_for_inference

    def stop_after_build(*args, **kwargs):
        raise _Built(real(*args, **kwargs))

    monkeypatch.setattr(bench, "optimize_for_inference", stop_after_build)
    with pytest.raises(_Built) as built:
        bench.row_backbone(argparse.Namespace(device="cpu", quick=True, depth=18), bf16=False)
    ours = built.value.args[0]
    assert any(isinstance(m, MkldnnConv2d) for m in ours.modules())
    assert type(ours.res2[0]).__name__ == "FusedResidualBlock"
