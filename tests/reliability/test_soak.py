"""A long CPU soak: 500 iterations of the real Faster R-CNN (R18-FPN, tiny) on 64 px synthetic images, with a
data-loader worker process, periodic checkpoints and metric writers. Memory stays flat (RSS of the first vs the
last 100 iterations) and no file descriptor leaks (/proc/self/fd count)."""
import json
import os
import statistics
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "_soak_child.py")


def _soak(tmp_path, iters, workers):
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    root = tmp_path / "datasets"
    generate_shapes_dataset(str(root / "synthetic_shapes"), "train", 8, image_size=64, seed=0)
    out = tmp_path / "out"
    env = dict(os.environ, RB_DATASETS=str(root), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, CHILD, str(out), str(iters), str(workers)], env=env, capture_output=True,
                       text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out / "soak.json") as f:
        s = json.load(f)
    assert len(s["rss"]) == len(s["fds"]) == iters
    return s


def _report(s, window):
    mib = 2**20
    first, last = statistics.median(s["rss"][:window]) / mib, statistics.median(s["rss"][-window:]) / mib
    fds = s["fds"]
    summary = {"iterations": len(fds), "rss_first_MiB": round(first, 1), "rss_last_MiB": round(last, 1),
               "rss_growth_MiB": round(last - first, 1), "rss_max_MiB": round(max(s["rss"]) / mib, 1),
               "fds_after_warmup": sorted(set(fds[window:])), "seconds": round(s["seconds"], 1)}
    print(f"\nsoak: {summary}")
    return summary


@pytest.mark.slow
def test_soak_500_iterations_memory_and_file_handles_flat(tmp_path):
    r = _report(_soak(tmp_path, 500, workers=1), window=100)
    assert r["rss_growth_MiB"] < 40, r  # allocator noise is a few MiB; a per-iteration leak of 100 kB is 40 MiB
    assert max(r["fds_after_warmup"]) - min(r["fds_after_warmup"]) <= 2, r  # checkpoint/metrics writes come and go
