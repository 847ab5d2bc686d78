"""The tools' bad command lines: one error line (exit 2), never a traceback, never a silent overwrite.

Subprocess tests run the real scripts (`python tools/X.py ...`) and check the exit status and stderr; the others
call a tool's main() in this process."""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _tools import load_tool
from PIL import Image

from resnet_backbone.config import ConfigError
from resnet_backbone.utils.cli import ToolError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS_DIR = os.path.join(ROOT, "tools")
BASE_RCNN = os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml")
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]


def _tool(name, *args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RB_TRACEBACK", None)
    return subprocess.run([sys.executable, os.path.join(TOOLS_DIR, f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def _main_block(tree):
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            return node
    return None


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(TOOLS_DIR) if f.endswith(".py")))
def test_every_tool_main_runs_under_run_tool(name):
    with open(os.path.join(TOOLS_DIR, f"{name}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    block = _main_block(tree)
    assert block is not None, f"tools/{name}.py has no __main__ block"
    calls = [n.func.id for n in ast.walk(block) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "run_tool" in calls, f"tools/{name}.py: __main__ does not call run_tool: {ast.unparse(block)}"


# ---------------------------------------------------------------------------- one line, exit 2 (real processes)

def test_train_net_bad_config_key_is_one_line(tmp_path):
    r = _tool("train_net", "--config-file", BASE_RCNN, "SOLVER.MAX_ITERS", "3", "OUTPUT_DIR", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("train_net.py: error: ") and "SOLVER.MAX_ITERS" in lines[0]
    assert "did you mean 'SOLVER.MAX_ITER'" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_analyze_model_bad_config_key_is_one_line():
    r = _tool("analyze_model", "MODEL.RESNETS.DEPHT", "50")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("analyze_model.py: error: "), r.stderr
    assert "MODEL.RESNETS.DEPHT" in lines[0] and "Traceback" not in r.stderr


def test_demo_missing_config_file_is_one_line(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    r = _tool("demo", "--config-file", tmp_path / "nope.yaml", "--input", img, "--output", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo.py: error: ") and "nope.yaml" in lines[0], r.stderr


def test_make_synthetic_dataset_existing_dataset_is_one_line(tmp_path):
    out = tmp_path / "ds"
    args = ["--output", out, "--num-train", "1", "--num-val", "0", "--image-size", "32"]
    assert _tool("make_synthetic_dataset", *args).returncode == 0
    r = _tool("make_synthetic_dataset", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make_synthetic_dataset.py: error: "), r.stderr
    assert str(out / "train.json") in lines[0] and "--overwrite" in lines[0]


# ---------------------------------------------------------------------------- train_net: flags after the overrides

@pytest.fixture(scope="module")
def train_net():
    return load_tool("train_net")


@pytest.mark.parametrize("flag", ["--eval-only", "--resume", "--num-gpus=2"])
def test_train_net_flag_after_overrides_is_named(train_net, tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as info:
        train_net.invoke_main(["--config-file", BASE_RCNN, "OUTPUT_DIR", str(tmp_path / "x"), flag])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"'{flag}' is a flag placed after the KEY VALUE config overrides" in err
    assert "must come before" in err and "before 'OUTPUT_DIR'" in err and "odd number" not in err
    assert not (tmp_path / "x").exists()


def test_train_net_odd_overrides_name_the_key_without_value(train_net):
    with pytest.raises(ConfigError, match="the last key 'SOLVER.MAX_ITER' has no value"):
        train_net.invoke_main(["--config-file", BASE_RCNN, "SEED", "1", "SOLVER.MAX_ITER"])


@pytest.mark.parametrize("argv, named", [
    (["--num-machines", "2"], "--dist-url"),
    (["--machine-rank", "1"], "--machine-rank"),
    (["--num-machines", "0"], "--num-machines"),
])
def test_train_net_launch_arguments_checked_first(train_net, capsys, tmp_path, argv, named):
    with pytest.raises(SystemExit) as info:  # the missing config would fail later: the arguments fail first
        train_net.invoke_main([*argv, "--config-file", str(tmp_path / "missing.yaml")])
    assert info.value.code == 2 and named in capsys.readouterr().err


# ---------------------------------------------------------------------------- analyze_model

@pytest.mark.parametrize("size", [("0", "0"), ("-3", "64"), ("64", "0"), ("x", "64")])
def test_analyze_model_input_size_must_be_positive(size, capsys):
    tool = load_tool("analyze_model")
    with pytest.raises(SystemExit) as info:
        tool.main(["--input-size", *size, *R18])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --input-size: must be a positive integer" in err


def test_analyze_model_unwritable_json_is_named(tmp_path, capsys):
    tool = load_tool("analyze_model")
    bad = tmp_path / "no" / "such" / "dir" / "r.json"
    with pytest.raises(ToolError, match="--json .*r.json.* cannot be written"):
        tool.main(["--input-size", "32", "32", "--json", str(bad), *R18])
    assert "total" in capsys.readouterr().out  # the table was still printed


# ---------------------------------------------------------------------------- make_synthetic_dataset

def _make(out, *extra, seed=0):
    tool = load_tool("make_synthetic_dataset")
    return tool.main(["--output", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "32",
                      "--seed", str(seed), *extra])


def test_make_synthetic_dataset_refuses_to_replace_a_dataset(tmp_path):
    out = tmp_path / "ds"
    assert _make(out) == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(ToolError, match="--overwrite") as info:
        _make(out, seed=5)
    assert str(out / "train.json") in str(info.value) and str(out / "val.json") in str(info.value)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # nothing touched
    assert _make(out, "--overwrite", seed=5) == 0
    assert (out / "train.json").read_bytes() != before[out / "train.json"]
    assert len(json.loads((out / "train.json").read_text())["images"]) == 2


def test_make_synthetic_dataset_images_without_json_count_as_a_dataset(tmp_path):
    (tmp_path / "ds" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "train" / "000000.png").write_bytes(b"x")
    with pytest.raises(ToolError, match=r"ds/train\b.*--overwrite"):
        _make(tmp_path / "ds")


@pytest.mark.parametrize("where", ["output", "parent", "split"])
def test_make_synthetic_dataset_file_in_the_way_is_named(tmp_path, where):
    (tmp_path / "f").write_text("a file")
    if where == "split":
        (tmp_path / "ds").mkdir()
        (tmp_path / "ds" / "train").write_text("a file")
    out = {"output": tmp_path / "f", "parent": tmp_path / "f" / "ds", "split": tmp_path / "ds"}[where]
    with pytest.raises(ToolError) as info:
        _make(out, "--overwrite")
    msg = str(info.value)
    expected = {"output": "is a file, not a folder", "parent": "cannot be created", "split": "is a file where"}
    assert expected[where] in msg
    assert str(tmp_path / ("ds" if where == "split" else "f")) in msg


def test_make_synthetic_dataset_image_size_too_small(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        load_tool("make_synthetic_dataset").main(["--output", str(tmp_path / "ds"), "--image-size", "16"])
    assert info.value.code == 2 and "--image-size must be >= 32" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------------------- plot_metrics

def test_plot_metrics_missing_or_empty_file_is_named(tmp_path):
    tool = load_tool("plot_metrics")
    with pytest.raises(ToolError, match="nope.json"):
        tool.main([str(tmp_path / "nope.json")])
    (tmp_path / "metrics.json").write_text("")
    with pytest.raises(ToolError, match="no metrics records"):
        tool.main([str(tmp_path / "metrics.json")])
