"""kill -9 at random moments of a real tools/train_net.py run, each time continued with --resume: the final
weights (and optimizer state) equal an uninterrupted run's, bit for bit, on CPU.

The training processes are forked from one prepared interpreter (tests/reliability/_train_child.py `loop`)
so that a kill round costs a fraction of a second instead of an interpreter start. In the slow variant the run
is finished by a fresh interpreter with --resume and the reference run is a fresh interpreter too; the short
variant forks those from the loop process as well (one interpreter start in all)."""
import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "_train_child.py")


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("datasets")
    generate_shapes_dataset(str(root / "synthetic_shapes"), "train", 6, image_size=32, seed=0)
    return root


def _env(root):
    return dict(os.environ, RB_DATASETS=str(root), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _popen(root, *args):
    return subprocess.Popen([sys.executable, CHILD, *map(str, args)], env=_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(p, timeout):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return out


def _final(d):
    return torch.load(os.path.join(d, "model_final.pth"), map_location="cpu", weights_only=True)


def _assert_same_state(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def kill_loop(tmp_path, root, n_kills, max_iter, seed, budget_s, fresh_interpreters, extra=()):
    """`extra`: config overrides (KEY, VALUE, ...) for every run, the reference included."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    if fresh_interpreters:  # reference run and the final --resume each in a new interpreter
        ref = _popen(root, "run", straight, max_iter, *extra)
        loop = _popen(root, "loop", killed, max_iter, n_kills, seed, budget_s, "-", *extra)
        summary = json.loads(_wait(loop, budget_s + 300).strip().splitlines()[-1])
        _wait(_popen(root, "run", killed, max_iter, "--resume", *extra), 300)
        _wait(ref, 300)
    else:  # one interpreter start: the loop process also finishes the run and makes the reference, forked
        loop = _popen(root, "loop", killed, max_iter, n_kills, seed, budget_s, straight, *extra)
        summary = json.loads(_wait(loop, budget_s + 300).strip().splitlines()[-1])
    a, b = _final(straight), _final(killed)
    assert a["iteration"] == b["iteration"] == max_iter - 1
    _assert_same_state(a["model"], b["model"], "model")
    _assert_same_state(a["optimizer"], b["optimizer"], "optimizer")
    _assert_same_state(a["scheduler"], b["scheduler"], "scheduler")
    assert ("model_ema" in a) == ("model_ema" in b)
    if "model_ema" in a:  # MODEL_EMA.ENABLED: the EMA of the weights too
        _assert_same_state(a["model_ema"], b["model_ema"], "model_ema")
    assert a.get("data_position") == b.get("data_position")
    # every checkpoint left behind is whole, and no temp file outlived the run
    names = os.listdir(killed)
    assert not [n for n in names if ".tmp" in n]
    for n in names:
        if n.endswith(".pth"):
            torch.load(killed / n, map_location="cpu", weights_only=True)
    # the resumed run's metrics line up with the uninterrupted run's for the last iterations
    from resnet_backbone.utils.events import read_metrics

    def losses(d):
        return {m["iteration"]: m["total_loss"] for m in read_metrics(d / "metrics.json") if "total_loss" in m}

    la, lb = losses(straight), losses(killed)
    assert la[max_iter - 1] == lb[max_iter - 1]
    summary["matched"] = True
    print(f"\nkill -9 loop: {summary}")
    return summary


def test_kill9_three_times_then_resume_equals_uninterrupted(tmp_path, datasets_root):
    s = kill_loop(tmp_path, datasets_root, n_kills=3, max_iter=30, seed=1, budget_s=60, fresh_interpreters=False)
    assert s["kills"] >= 1
    assert s["kills"] + s["finished_rounds"] >= 1


def test_kill9_with_ema_and_gradient_accumulation_then_resume_equals_uninterrupted(tmp_path, datasets_root):
    s = kill_loop(tmp_path, datasets_root, n_kills=8, max_iter=20, seed=3, budget_s=60, fresh_interpreters=False,
                  extra=("MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "0.9", "SOLVER.GRAD_ACCUM_STEPS", "2"))
    # at least one kill after a checkpoint (the kill window grows until kills get past start-up), so a --resume
    # continued mid-run from a saved EMA and data position
    assert s["kills"] >= 1 and max(s["iterations_at_kill"]) >= 0, s
    final = _final(tmp_path / "killed")
    assert final["grad_accum_steps"] == 2 and final["data_position"] == 2 * 20
    assert not torch.equal(final["model_ema"]["head.weight"], final["model"]["head.weight"])


@pytest.mark.slow
def test_kill9_twenty_five_times_then_resume_equals_uninterrupted(tmp_path, datasets_root):
    s = kill_loop(tmp_path, datasets_root, n_kills=25, max_iter=300, seed=2, budget_s=240,
                  fresh_interpreters=True)
    assert s["kills"] >= 20, s
    # the kills landed at many different points of the run, not all during start-up
    assert len(set(s["iterations_at_kill"])) >= 8, s
