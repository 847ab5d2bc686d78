"""The README's Python example runs as written (so the first thing a user copies works)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_backbone_example_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    feats = scope["feats"]
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "res2": (256, 56, 56), "res3": (512, 28, 28), "res4": (1024, 14, 14), "res5": (2048, 7, 7)}
    shapes = scope["backbone"].output_shape()
    assert [shapes[k].stride for k in ("res2", "res3", "res4", "res5")] == [4, 8, 16, 32]
    out = scope["r50"](scope["torch"].randn(1, 3, 64, 64))
    assert tuple(out["linear"].shape) == (1, 1000)
