"""tools/demo.py never writes over an input image, never writes two pictures to one file, and does not replace
an existing picture without --overwrite. Every refusal happens before the model is built."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _tools import load_tool
from PIL import Image
from torch import nn

from resnet_backbone.utils.cli import ToolError

demo = load_tool("demo")


class _OneBoxModel(nn.Module):
    """Eval output of a detector: one box in the middle of each image (`with_masks`: and a Mask R-CNN's "masks",
    the disc inscribed in the box, in the original image's pixels)."""

    with_masks = False

    def __init__(self, cfg=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, batched_inputs):
        out = [{"boxes": torch.tensor([[d["width"] * 0.2, d["height"] * 0.2, d["width"] * 0.8, d["height"] * 0.8]]),
                "scores": torch.tensor([0.9]), "labels": torch.tensor([0])} for d in batched_inputs]
        if self.with_masks:
            for o, d in zip(out, batched_inputs):
                yy, xx = torch.meshgrid(torch.arange(d["height"]), torch.arange(d["width"]), indexing="ij")
                r = 0.3 * min(d["height"], d["width"])
                o["masks"] = (((yy + 0.5 - d["height"] / 2) ** 2 + (xx + 0.5 - d["width"] / 2) ** 2) <= r * r)[None]
        return out


@pytest.fixture()
def cfg_file(tmp_path):
    from resnet_backbone.modeling.meta_arch import META_ARCH_REGISTRY

    if "_OneBoxModel" not in META_ARCH_REGISTRY:
        META_ARCH_REGISTRY.register(_OneBoxModel)
    p = tmp_path / "one_box.yaml"
    p.write_text('MODEL:\n  META_ARCHITECTURE: "_OneBoxModel"\nINPUT:\n  MIN_SIZE_TEST: 32\n  MAX_SIZE_TEST: 64\n'
                 '  FORMAT: "RGB"\n')
    return str(p)


def _image(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def _demo(cfg_file, inputs, output, *flags):
    return demo.main(["--config-file", cfg_file, "--input", *map(str, inputs), "--output", str(output), *flags])


@pytest.mark.parametrize("how", ["same", "trailing_slash", "symlink"])
def test_output_folder_equal_to_input_folder_is_refused(cfg_file, tmp_path, how):
    d = tmp_path / "imgs"
    _image(str(d / "a.png"))
    _image(str(d / "b.jpg"), seed=1)
    before = _snapshot(d)
    out = {"same": str(d), "trailing_slash": str(d) + os.sep, "symlink": str(tmp_path / "link")}[how]
    if how == "symlink":
        os.symlink(d, out)
    for flags in ((), ("--overwrite",)):
        with pytest.raises(ToolError, match="is the --input folder") as info:
            _demo(cfg_file, [d], out, *flags)
        assert out in str(info.value) and str(d) in str(info.value)
    assert _snapshot(d) == before  # nothing written, nothing replaced


@pytest.mark.parametrize("name", ["a.png", "a.jpg"])
def test_output_that_is_an_input_file_is_refused_even_with_overwrite(cfg_file, tmp_path, name):
    src = _image(str(tmp_path / "d" / name))
    before = _snapshot(tmp_path / "d")
    for flags in ((), ("--overwrite",)):
        with pytest.raises(ToolError, match="is the input image") as info:
            _demo(cfg_file, [src], tmp_path / "d", *flags)
        assert str(info.value).count(src) == 2  # names the output path and the input path (here the same)
    assert _snapshot(tmp_path / "d") == before


def test_same_stem_different_extensions_get_distinct_names(cfg_file, tmp_path, capsys):
    d = tmp_path / "in"
    for i, name in enumerate(["x.png", "x.PNG", "x.tif", "y.jpg", "y.jpeg", "z.bmp"]):
        _image(str(d / name), seed=i)
    written = _demo(cfg_file, [d], tmp_path / "out")
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["x.PNG.png", "x.png.png", "x.tif.png", "y.jpeg.jpg", "y.jpg.jpg", "z.png"]
    assert sorted(os.listdir(tmp_path / "out")) == names  # six inputs, six pictures
    assert "Wrote 6 picture(s)" in capsys.readouterr().out
    # each picture is drawn on its own input (the inputs differ, so do the pictures)
    pixels = {n: np.asarray(Image.open(tmp_path / "out" / n)).tobytes() for n in names if n.endswith(".png")}
    assert len(set(pixels.values())) == len(pixels)
    assert demo.output_names([str(d / "x.png"), str(d / "x.PNG")]) == ["x.png.png", "x.PNG.png"]  # deterministic


def test_same_file_name_in_two_folders_is_refused(cfg_file, tmp_path):
    a, b = _image(str(tmp_path / "a" / "x.png")), _image(str(tmp_path / "b" / "x.png"), seed=1)
    with pytest.raises(ToolError, match="would both be drawn to 'x.png'") as info:
        _demo(cfg_file, [a, b], tmp_path / "out")
    assert a in str(info.value) and b in str(info.value)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(cfg_file, tmp_path):
    src = _image(str(tmp_path / "in" / "a.png"))
    _demo(cfg_file, [src], tmp_path / "out")
    first = _snapshot(tmp_path / "out")
    with pytest.raises(ToolError, match="--overwrite") as info:
        _demo(cfg_file, [src], tmp_path / "out")
    assert str(tmp_path / "out" / "a.png") in str(info.value)
    assert _snapshot(tmp_path / "out") == first
    (tmp_path / "out" / "a.png").write_bytes(b"old")
    assert _demo(cfg_file, [src], tmp_path / "out", "--overwrite") == [str(tmp_path / "out" / "a.png")]
    assert (tmp_path / "out" / "a.png").read_bytes() == first["a.png"]


def test_output_that_is_a_file_is_refused(cfg_file, tmp_path):
    src = _image(str(tmp_path / "in" / "a.png"))
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ToolError, match="is a file, not a folder"):
        _demo(cfg_file, [src], tmp_path / "out")


def test_help_documents_the_output_names(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    out = capsys.readouterr().out
    assert "x.png.png" in out and "--overwrite" in out and "not an --input folder" in out


def test_a_renamed_output_that_is_taken_is_refused(tmp_path):
    files = [str(tmp_path / n) for n in ("x.png", "x.tif", "x.png.png")]  # x.png's new name is x.png.png
    with pytest.raises(ToolError, match="would both be drawn to 'x.png.png'"):
        demo.output_names(files)
    assert demo.output_names([str(tmp_path / "a.jpeg"), str(tmp_path / "b.webp")]) == ["a.jpg", "b.png"]


def test_masks_are_drawn(cfg_file, tmp_path, monkeypatch):
    """A model that gives "masks": the picture is blended with the class colour inside the mask (under the box and
    label) and untouched away from the detection."""
    from resnet_backbone.utils.visualizer import MASK_ALPHA, class_color

    monkeypatch.setattr(_OneBoxModel, "with_masks", True)
    src = tmp_path / "in" / "grey.png"
    src.parent.mkdir()
    Image.fromarray(np.full((80, 120, 3), 100, np.uint8)).save(src)
    (dst,) = _demo(cfg_file, [src], tmp_path / "out")
    out = np.asarray(Image.open(dst))
    blend = np.round(100 * (1 - MASK_ALPHA) + np.asarray(class_color(0), float) * MASK_ALPHA)
    np.testing.assert_array_equal(out[35:45, 50:70], np.broadcast_to(blend, (10, 20, 3)))  # inside the disc
    assert (out[:, 100:] == 100).all() and (out[70:] == 100).all()  # right of and below the detection
    monkeypatch.setattr(_OneBoxModel, "with_masks", False)
    (plain,) = _demo(cfg_file, [src], tmp_path / "plain")
    assert (np.asarray(Image.open(plain))[35:45, 50:70] == 100).all()  # no masks: only the box's outline
