"""read_image on every kind of bad or unusual image file: a clear DatasetError naming the file, or a converted
HWC uint8 array."""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_backbone.data import DatasetError, read_image
from resnet_backbone.data.detection_utils import check_image_size, get_max_image_pixels, set_max_image_pixels


def _rgb(h=20, w=30):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 200  # R
    a[..., 1] = 100  # G
    a[..., 2] = 50  # B
    return a


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return str(path)


def test_rgb_and_bgr_channel_order(tmp_path):
    p = _save(Image.fromarray(_rgb()), tmp_path / "a.png")
    rgb = read_image(p, "RGB")
    bgr = read_image(p, "BGR")
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (200, 100, 50) and tuple(bgr[0, 0]) == (50, 100, 200)
    assert read_image(p, "L").shape == (20, 30, 1)


@pytest.mark.parametrize("case", ["missing", "zero_byte", "not_an_image", "directory"])
def test_unreadable_files_name_the_file(tmp_path, case):
    p = tmp_path / f"{case}.jpg"
    if case == "zero_byte":
        p.write_bytes(b"")
    elif case == "not_an_image":
        p.write_text("this is a text file, not a JPEG\n" * 10)
    elif case == "directory":
        p.mkdir()
    with pytest.raises(DatasetError) as ei:
        read_image(p)
    assert str(p) in str(ei.value) and ei.value.file == str(p)
    assert "field 'file_name'" in str(ei.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images(tmp_path, fmt):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    p = tmp_path / f"t.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt") as ei:
        read_image(p)
    assert str(p) in str(ei.value)


def test_grayscale_rgba_palette_cmyk(tmp_path):
    gray = _save(Image.fromarray(np.full((8, 9), 77, np.uint8)), tmp_path / "g.png")
    out = read_image(gray, "BGR")
    assert out.shape == (8, 9, 3) and (out == 77).all()

    rgba = np.dstack([_rgb(8, 9), np.full((8, 9), 10, np.uint8)])
    out = read_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"), "RGB")
    assert out.shape == (8, 9, 3) and tuple(out[0, 0]) == (200, 100, 50)  # alpha dropped, colour kept

    pal = Image.fromarray(_rgb(8, 9)).convert("P")
    out = read_image(_save(pal, tmp_path / "p.png"), "RGB")
    assert out.shape == (8, 9, 3)

    cmyk = Image.fromarray(_rgb(8, 9)).convert("CMYK")
    p = _save(cmyk, tmp_path / "c.jpg", quality=100)
    assert Image.open(p).mode == "CMYK"
    out = read_image(p, "RGB").astype(int)
    assert out.shape == (8, 9, 3) and np.abs(out[4, 4] - [200, 100, 50]).max() < 12


def test_16bit_scaled_to_8bit(tmp_path):
    a = np.array([[0, 256, 65535, 32768]], np.uint16).repeat(3, 0)
    p = _save(Image.fromarray(a), tmp_path / "d.png")
    assert Image.open(p).mode.startswith("I")
    out = read_image(p, "RGB")
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


def test_exif_orientation_applied(tmp_path):
    """A 30x20 (WxH) JPEG whose EXIF says "rotate 90 CW" (orientation 6) is returned 20 wide, 30 tall."""
    a = np.zeros((20, 30, 3), np.uint8)
    a[:, :10] = 255  # left third white
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    p = _save(img, tmp_path / "e.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(p, "RGB")
    assert out.shape == (30, 20, 3)
    # orientation 6: the stored image is rotated 90 degrees clockwise for display: the white left edge goes on top
    assert out[:8].mean() > 200 and out[-8:].mean() < 50
    check_image_size({"file_name": p, "image_id": 1, "width": 20, "height": 30}, out)
    with pytest.raises(DatasetError, match="width") as ei:
        check_image_size({"file_name": p, "image_id": 1, "width": 30, "height": 20}, out)
    assert p in str(ei.value) and "image_id=1" in str(ei.value)


def test_decompression_bomb_limit(tmp_path):
    p = _save(Image.new("L", (200, 100)), tmp_path / "big.png")
    assert read_image(p).shape == (100, 200, 3)
    with pytest.raises(DatasetError, match="over the limit") as ei:
        read_image(p, max_pixels=19_999)
    assert str(p) in str(ei.value) and "field 'pixels'" in str(ei.value)
    old = get_max_image_pixels()
    try:
        set_max_image_pixels(10_000)
        with pytest.raises(DatasetError, match="MAX_IMAGE_PIXELS"):
            read_image(p)
        set_max_image_pixels(0)  # back to PIL's default
        assert read_image(p).shape == (100, 200, 3)
    finally:
        set_max_image_pixels(old)
    # a limit above PIL's own refusal point (2x Image.MAX_IMAGE_PIXELS) is honoured, and PIL's global restored
    pil = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 5_000  # PIL alone would refuse this 20000-pixel image
        assert read_image(p, max_pixels=50_000).shape == (100, 200, 3)
        assert Image.MAX_IMAGE_PIXELS == 5_000
        with pytest.raises(DatasetError) as ei:
            read_image(p, max_pixels=9_000)
        assert ei.value.field == "pixels" and str(p) in str(ei.value)
    finally:
        Image.MAX_IMAGE_PIXELS = pil


def test_one_pixel_image_rejected(tmp_path):
    p = _save(Image.new("RGB", (1, 1)), tmp_path / "tiny.png")
    with pytest.raises(DatasetError, match="1x1") as ei:
        read_image(p)
    assert str(p) in str(ei.value)


def test_error_pickles_through_workers():
    import pickle

    e = DatasetError("bad", file="f.jpg", record="image_id=3", field="bbox")
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.field == "bbox"
    assert str(DatasetError("plain message")) == "plain message"


def _encoded(fmt):
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    img = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 3
    img.save(buf, format=fmt, exif=exif.tobytes())
    return buf.getvalue()


_ENCODED = {"PNG": _encoded("PNG"), "JPEG": _encoded("JPEG")}


@settings(max_examples=80, deadline=None)
@given(fmt=st.sampled_from(sorted(_ENCODED)), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                            min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(1, 10**6)))
def test_fuzz_corrupted_bytes_read_or_dataset_error(tmp_path_factory, fmt, edits, cut):
    """Random byte edits / truncation of a valid image: an HWC uint8 array or DatasetError, never anything else."""
    data = bytearray(_ENCODED[fmt])
    for pos, val in edits:
        data[pos % len(data)] = val
    if cut is not None:
        data = data[: cut % len(data)]
    p = tmp_path_factory.mktemp("fuzz") / f"x.{fmt.lower()}"
    p.write_bytes(bytes(data))
    try:
        out = read_image(p, "BGR")
    except DatasetError as e:
        assert str(p) in str(e)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
