"""tools/benchmark.py's peer rows (row 4 Faster R-CNN training vs torchvision, row 5 DETR vs transformers and
DBNet vs docTR): --quick forms, the same weights on both DETR sides, both sides' own-process RSS, the precision
each machine runs natively, and a peer that is not importable skipped with the reason (no timing asserts)."""
import importlib.util
import os

import pytest
import torch
from _tools import load_tool

bench = load_tool("benchmark")
HAVE = {name: importlib.util.find_spec(module) is not None
        for name, module in (("transformers", "transformers"), ("doctr", "doctr"))}


@pytest.fixture(autouse=True)
def _restore_denormals():
    yield
    torch.set_flush_denormal(False)


def _run(tmp_path, *extra):
    return bench.main(["--quick", "--repeats", "1", "--warmup", "0", "--output-dir", str(tmp_path), "--no-progress",
                       *extra])


@pytest.mark.slow  # two fresh processes (torch + transformers imports): ~1-3 min on 2 shared cores
@pytest.mark.skipif(not HAVE["transformers"], reason="transformers not installed (requirements-dev.txt)")
def test_detr_infer_row_same_weights_and_both_sides_rss(tmp_path):
    result = _run(tmp_path, "--rows", "5", "--only", "detr_infer")
    (row,) = result["rows"]
    assert row["name"] == "detr_infer" and set(row["entries"]) == {"ours", "reference"}
    # HF's DetrForObjectDetection holds our weights (modeling/detr/hf_names.py): the same outputs in fp32
    assert row["logits_max_abs_diff_vs_reference_fp32"] < 1e-4
    assert row["boxes_max_abs_diff_vs_reference_fp32"] < 1e-4
    assert row["padded_batch"][0] == 2 and row["ratio"] > 0 and row["target"] == 1.3
    for side in ("ours", "reference"):  # each measured in its own process, model and torch included
        e = row["entries"][side]
        assert e["rss_peak_mb"] >= e["rss_before_mb"] > 100, e
        assert e["rss_peak_above_before_mb"] == pytest.approx(e["rss_peak_mb"] - e["rss_before_mb"])
    assert isinstance(row["rss_ours_not_higher"], bool)
    md = open(os.path.join(tmp_path, "benchmark.md")).read()
    assert "own-process peak RSS MiB" in md
    assert f"{row['entries']['reference']['rss_peak_mb']:.0f} (+" in md


def test_a_missing_peer_is_skipped_with_the_reason(tmp_path, monkeypatch):
    def missing(module, package):
        raise bench.PeerMissing(f"{package} is not importable (test)")

    monkeypatch.setattr(bench, "_import_peer", missing)
    result = _run(tmp_path, "--rows", "5", "--only", "detr_infer,dbnet_infer", "--no-rss")
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"detr_infer", "dbnet_infer"}
    for name, package in (("detr_infer", "transformers"), ("dbnet_infer", "python-doctr")):
        assert set(rows[name]["entries"]) == {"ours"} and "ratio" not in rows[name]
        assert rows[name]["reference_skipped"] == f"{package} is not importable (test)"
    assert "reference_skipped=transformers is not importable" in open(os.path.join(tmp_path, "benchmark.md")).read()


@pytest.mark.parametrize("native", [True, False])
def test_peer_rows_run_the_precision_the_machine_runs_natively(native):
    import argparse

    from resnet_backbone.utils.machine import override_machine

    args = argparse.Namespace(precision="auto", amp_dtype="bfloat16", device="cpu")
    with override_machine(cpu_bf16_native=native):
        assert bench.row_precision(args).dtype == (torch.bfloat16 if native else torch.float32)
        args.precision = "fp32"
        assert bench.row_precision(args).dtype == torch.float32


_RSS_PROBE = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from _tools import load_tool
keep = []
out = load_tool("benchmark")._rss_call(lambda: keep.append(torch.ones(64, 1024, 1024)), calls=1)  # 256 MiB, touched
print("RSS_JSON " + json.dumps(out))
"""


def test_rss_call_sees_what_the_call_allocates():
    # in a fresh process, as the benchmark measures each side: a test worker that ran other tests may hand the
    # 256 MiB back from memory it already holds, and then its RSS does not rise
    import json
    import subprocess
    import sys

    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", _RSS_PROBE, tests_dir], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.split("RSS_JSON ", 1)[1])
    if not out:
        pytest.skip("no /proc/self/clear_refs here")
    assert out["rss_peak_above_before_mb"] >= 250 and out["rss_peak_mb"] >= out["rss_before_mb"] + 250


@pytest.mark.slow
def test_quick_training_peer_rows(tmp_path):
    result = _run(tmp_path, "--rows", "4,5", "--only", "detr_train,dbnet", "--no-rss", "--profile", "3")
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"frcnn_train", "detr_train", "dbnet_infer", "dbnet_train"}
    for name, row in rows.items():
        peer = {"detr_train": "transformers", "dbnet_infer": "doctr", "dbnet_train": "doctr"}.get(name)
        sides = {"ours", "reference"} if peer is None or HAVE[peer] else {"ours"}
        assert set(row["entries"]) == sides, name
        assert row["profile_ours"].count("%") == 3
        if "reference" in sides:
            assert row["ratio"] > 0 and "profile_reference" in row
    for name in ("frcnn_train", "detr_train"):  # the same trainable parameters on both sides
        if "reference" in rows[name]["entries"]:
            assert rows[name]["trainable_params_ours"] == rows[name]["trainable_params_reference"], name
    if HAVE["doctr"]:
        assert "random init on both sides" in rows["dbnet_train"]["weights"]


def test_merge_puts_a_timed_run_and_an_rss_only_run_in_one_table(tmp_path):
    import json

    timed = {"machine": {"cpu": "X"}, "args": {}, "rows": [
        {"name": "detr_infer", "ratio": 2.0, "entries": {"ours": {"median_ms": 1.0, "peak_mem_mb": None},
                                                         "reference": {"median_ms": 2.0}}}]}
    rss = {"machine": {"cpu": "X"}, "args": {}, "rows": [
        {"name": "detr_infer", "entries": {"ours": {"median_ms": None, "rss_peak_mb": 900.0},
                                           "reference": {"median_ms": None, "rss_peak_mb": 1000.0}}},
        {"name": "dbnet_infer", "entries": {"ours": {"rss_peak_mb": 5.0}}}]}
    paths = []
    for i, res in enumerate((timed, rss)):
        paths.append(str(tmp_path / f"{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump(res, f)
    out = bench.merge_results(paths)
    rows = {r["name"]: r for r in out["rows"]}
    e = rows["detr_infer"]["entries"]
    assert e["ours"]["median_ms"] == 1.0 and e["ours"]["rss_peak_mb"] == 900.0  # timing kept, RSS added
    assert rows["detr_infer"]["ratio"] == 2.0 and rows["detr_infer"]["rss_ours_not_higher"] is True
    assert rows["detr_infer"]["rss_ours_vs_reference"] == pytest.approx(0.9)
    assert "dbnet_infer" in rows and out["merged_from"] == paths
