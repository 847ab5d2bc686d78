"""tools/analyze_model.py: parameters and FLOPs per stage."""
import json
import os

import pytest
from _tools import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_tool = load_tool


@pytest.fixture(scope="module")
def r50_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "r50.json"
    tool = _tool("analyze_model")
    result = tool.main(["--config-file", os.path.join(ROOT, "configs/ImageNet/R_50_torchvision.yaml"),
                        "--input-size", "224", "224", "--json", str(out), "MODEL.RESNETS.NORM", "BN"])
    assert json.loads(out.read_text())["total"]["params"] == result["total"]["params"]
    return result


def test_r50_flops_and_params(r50_report, capsys):
    total = r50_report["total"]
    assert abs(total["gmac"] - 4.1) <= 0.02 * 4.1, total["gmac"]
    assert total["params"] == 25_557_032  # torchvision's resnet50 count (BN affines are parameters)
    rows = {r["name"]: r for r in r50_report["rows"]}
    assert list(rows) == ["stem", "res2", "res3", "res4", "res5", "linear", "(own ops)"]  # own: global avg pool
    assert sum(r["params"] for r in rows.values()) == total["params"]
    assert rows["linear"]["params"] == 2048 * 1000 + 1000
    assert abs(total["params"] - rows["linear"]["params"] - 23.5e6) < 0.05e6  # ~23.5M without the head
    # each stage's FLOPs are the well-known per-stage numbers (res4 is the heaviest)
    assert max(rows, key=lambda k: rows[k]["gmac"]) == "res4"
    assert rows["(own ops)"]["gmac"] * 1e9 == 2048 * 7 * 7
    assert abs(sum(r["gmac"] for r in rows.values()) - total["gmac"]) < 1e-6
    assert r50_report["outputs"]["res5"] == [1, 2048, 7, 7] and r50_report["outputs"]["linear"] == [1, 1000]


def test_table_printed():
    tool = _tool("analyze_model")
    cfg = tool.setup_cfg(os.path.join(ROOT, "configs/Base-ResNet.yaml"),
                         ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    from resnet_backbone.modeling.backbone import build_backbone

    result = tool.analyze(build_backbone(cfg), (64, 96))
    table = tool.format_table(result)
    assert "res5" in table and "total" in table and "GMac" in table
    assert result["outputs"]["res5"] == [1, 512, 2, 3]
    # ResNet-18 at 224x224 is 1.82 GMac; at 64x96 the conv cost scales with the pixel count (approximately)
    assert 1.82 * (64 * 96) / (224 * 224) * 0.8 < result["total"]["gmac"] < 1.82 * (64 * 96) / (224 * 224) * 1.2


def test_bad_override_key_is_named():
    from resnet_backbone.config import ConfigError

    tool = _tool("analyze_model")
    with pytest.raises(ConfigError, match="MODEL.RESNETS.DEPHT"):
        tool.setup_cfg("", ["MODEL.RESNETS.DEPHT", "50"])
