"""tools/benchmark.py: a --quick run writes the JSON and Markdown with every expected field (no timing asserts)."""
import json
import os
import re

import pytest
import torch
from _tools import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


bench = load_tool("benchmark")


@pytest.fixture(autouse=True)
def _restore_denormals():
    """benchmark.main() sets flush-denormal (for both sides); give the test process its default back."""
    yield
    torch.set_flush_denormal(False)

ENTRY_FIELDS = {"median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "ms_per_item", "items_per_s", "peak_mem_mb",
                "peak_tensor_mb", "page_faults", "repeats"}


def _check_common(result, out_dir):
    m = result["machine"]
    for key in ("cpu", "logical_cpus", "torch_threads", "torch", "torchvision", "isa", "device", "date"):
        assert key in m
    with open(os.path.join(out_dir, "benchmark.json")) as f:
        on_disk = json.load(f)
    assert [r["name"] for r in on_disk["rows"]] == [r["name"] for r in result["rows"]]
    md = open(os.path.join(out_dir, "benchmark.md")).read()
    assert "| row | entry | median ms (IQR)" in md and m["torch"] in md
    for row in result["rows"]:
        assert row["name"] in md
    return md


def test_quick_backbone_gemm_coco_rows(tmp_path):
    from resnet_backbone.utils.machine import machine

    kind = bench.cpu_kind(machine(), bench.isa_caps())
    docs = tmp_path / "BENCH.md"
    docs.write_text("# Benchmarks\n\nhand-written notes stay\n\n<!-- benchmark:begin OTHER -->\nother kind\n"
                    f"<!-- benchmark:end OTHER -->\n\n<!-- benchmark:begin {kind} -->\nold\n"
                    f"<!-- benchmark:end {kind} -->\n\ntrailing notes stay\n")
    result = bench.main(["--quick", "--rows", "1,2,gemm,coco_eval", "--repeats", "2", "--warmup", "0",
                         "--output-dir", str(tmp_path), "--no-progress", "--update-docs", str(docs)])
    md = _check_common(result, tmp_path)
    assert result["machine"]["flush_denormal"] is True and "denormals flushed (FTZ/DAZ) for both sides" in md
    assert float(torch.tensor([1e-40]) * 1.0) == 0.0  # in effect in this (the calling) thread
    assert result["machine"]["cpu_kind"] == kind and f"CPU kind {kind}" in md
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"backbone_fp32", "backbone_bf16", "gemm", "coco_eval"}

    fp32 = rows["backbone_fp32"]
    assert set(fp32["entries"]) == {"ours", "reference", "ours_no_fast_paths"}
    for e in fp32["entries"].values():
        assert ENTRY_FIELDS <= set(e) and e["repeats"] == 2 and e["min_ms"] <= e["median_ms"] <= e["max_ms"]
        assert e["page_faults"] is None or e["page_faults"] >= 0
    assert "page faults per call ours " in md or fp32["entries"]["ours"]["page_faults"] is None
    for key in ("ratio", "paired_ratio_median", "target", "target_met"):
        assert key in fp32
    assert fp32["c5_rel_diff_ours_fast_vs_torchvision"] < 1e-4  # same weights -> same features

    coco = rows["coco_eval"]
    assert coco["metrics_match"] and coco["max_abs_metric_diff"] <= 1e-4
    assert coco["entries"]["ours"]["backend"] == "faster_coco_eval"

    text = docs.read_text()
    assert "hand-written notes stay" in text and "trailing notes stay" in text and "old" not in text
    assert "other kind" in text  # another CPU kind's table stays
    assert f"### CPU kind: {kind}\n\n{md.strip()}" in text


def test_fast_paths_row_times_each_variant(tmp_path):
    result = bench.main(["--quick", "--rows", "fast_paths", "--repeats", "1", "--warmup", "0",
                         "--output-dir", str(tmp_path), "--no-progress"])
    row = result["rows"][0]
    assert set(row["entries"]) == {"plain", "channels_last", "folded_bn_channels_last", "folded_bn_prepacked",
                                   "folded_bn_prepacked_channels_last", "torchvision"}
    assert row["ratio_of"] == "torchvision / folded_bn_prepacked_channels_last" and row["ratio"] > 0


@pytest.mark.parametrize("native", [True, False])
def test_bf16_rows_follow_native_support(tmp_path, native):
    """Both branches on any CPU: native bf16 -> timed rows; not native -> the row says so and reports what one
    forced call costs, instead of running full repeats for many minutes."""
    from resnet_backbone.utils.machine import override_machine

    with override_machine(cpu_bf16_native=native, cpu_amx=native and bench.machine_info("cpu")["amx"]):
        result = bench.main(["--quick", "--rows", "2,gemm", "--repeats", "2", "--warmup", "0",
                             "--output-dir", str(tmp_path), "--no-progress"])
    md = _check_common(result, tmp_path)
    rows = {r["name"]: r for r in result["rows"]}
    bf16, gemm = rows["backbone_bf16"], rows["gemm"]
    assert result["machine"]["bf16_native"] is native
    if native:
        assert set(bf16["entries"]) == {"ours", "reference", "reference_amp"} and "not_native" not in bf16
        assert 0 < bf16["c5_rel_err_bf16_vs_fp32"] < 0.05
        assert {"gemm_fp32", "gemm_bf16", "ours", "ours_bf16"} <= set(gemm["entries"]) and "ratio_bf16" in gemm
    else:
        assert set(bf16["entries"]) == {"ours_fp32", "ours_bfloat16_forced"} and bf16["batch"] == 1
        assert "no native bfloat16" in bf16["not_native"] and bf16["forced_cost_vs_fp32"] > 0
        assert all(e["repeats"] == 1 for e in bf16["entries"].values())
        assert "forced: **" in md and "not native here" in md
        assert set(gemm["entries"]) == {"gemm_fp32", "ours"} and "ratio_bf16" not in gemm
        assert gemm["forced_gemm_cost_vs_fp32"] > 0 and "no native bfloat16" in gemm["not_native"]
    assert gemm["entries"]["gemm_fp32"]["gflops"] > 0 and gemm["backbone_gflop_per_batch"] > 0
    assert gemm["ratio"] == pytest.approx(gemm["entries"]["ours"]["gflops"] / gemm["entries"]["gemm_fp32"]["gflops"])


@pytest.mark.slow
def test_quick_detector_rows(tmp_path):
    result = bench.main(["--quick", "--rows", "3,4,5", "--repeats", "1", "--warmup", "0", "--no-rss",
                         "--output-dir", str(tmp_path), "--no-progress"])
    _check_common(result, tmp_path)
    rows = {r["name"]: r for r in result["rows"]}
    assert {"frcnn_infer_128x128", "frcnn_train", "detr_infer", "detr_train", "dbnet_infer", "dbnet_train"} <= set(rows)
    infer = rows["frcnn_infer_128x128"]
    assert infer["tv_transform_size"] == [128, 128]  # torchvision did not resize
    assert "ratio" in infer and "detections_ours" in infer
    # per-stage breakdown of both detectors: "ours backbone 12 / rpn 3 / roi_heads 4; reference backbone ..."
    assert re.fullmatch(r"ours backbone \d+ / rpn \d+ / roi_heads \d+; reference backbone \d+ / rpn \d+ / "
                        r"roi_heads \d+", infer["stages_ms"]), infer["stages_ms"]
    assert "stages_ms=ours backbone" in open(os.path.join(tmp_path, "benchmark.md")).read()
    train = rows["frcnn_train"]
    assert train["trainable_params_ours"] == train["trainable_params_reference"]
    for name in ("detr_infer", "detr_train", "dbnet_infer", "dbnet_train"):  # peers: test_benchmark_peers.py
        assert "median_ms" in rows[name]["entries"]["ours"]


@pytest.mark.slow
def test_quick_onnx_rows(tmp_path):
    pytest.importorskip("onnxruntime")
    result = bench.main(["--quick", "--rows", "onnx", "--repeats", "1", "--warmup", "0",
                         "--output-dir", str(tmp_path), "--no-progress"])
    _check_common(result, tmp_path)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"onnx_backbone_128x128", "onnx_frcnn_128x128"}
    for row in rows.values():
        assert set(row["entries"]) == {"ours", "reference", "onnxruntime"} and row["export_s"] > 0
        assert row["ratio_ours_vs_onnxruntime"] > 0 and row["ratio_reference_vs_onnxruntime"] > 0
    assert rows["onnx_backbone_128x128"]["c5_rel_diff_onnx_vs_ours"] < 1e-4  # the exported graph is the model
    frcnn = rows["onnx_frcnn_128x128"]
    assert frcnn["detections_matching_onnx"] == frcnn["detections_ours"] == frcnn["detections_onnx"] > 0


def test_interleaving_summary_and_rows_parsing():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.time_interleaved(fns, repeats=3, warmup=1, device="cpu", progress=False)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then AB BA AB
    assert len(times["a"]) == 3 and len(times["b"]) == 3
    s = bench.summarize([0.1, 0.3, 0.2, 0.4], items=2)
    assert s["median_ms"] == pytest.approx(250.0) and s["min_ms"] == pytest.approx(100.0)
    assert s["ms_per_item"] == pytest.approx(125.0) and s["items_per_s"] == pytest.approx(8.0)
    c = bench.compare({"o": [1.0, 2.0], "r": [2.0, 3.0]}, "o", "r")
    assert c["ratio"] == pytest.approx(2.5 / 1.5) and c["paired_ratio_median"] == pytest.approx(1.75)
    assert bench.parse_rows("1,gemm") == ["backbone_fp32", "gemm"]
    assert bench.parse_rows("default") == bench.ROWS[:7] and bench.parse_rows("all") == bench.ROWS
    assert bench.parse_rows("8") == ["fast_paths"] and bench.parse_rows("9") == ["onnx"]
    with pytest.raises(SystemExit, match="unknown row"):
        bench.parse_rows("10")


def test_peak_memory_sees_a_large_tensor():
    import torch

    mem = bench.peak_memory_mb(lambda: torch.ones(64, 1024, 1024), "cpu")  # 256 MiB
    assert mem["peak_tensor_mb"] is None or mem["peak_tensor_mb"] >= 255
    assert mem["peak_mem_mb"] is None or mem["peak_mem_mb"] >= 0
