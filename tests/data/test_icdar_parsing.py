"""ICDAR-style txt ground truth: polygons with any number of points (ICDAR 2015 quads, Total-Text / CTW
polygons), how coordinates are told from the transcription, bad lines and encodings -> DatasetError naming the
file, the line and the field, the n-point polygons through the mapper, the DBNet targets / loss and the text
evaluator, and a hypothesis fuzz of the parser and the directory loader."""
import codecs
import math
import os
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_backbone.data.catalog import DatasetCatalog, MetadataCatalog
from resnet_backbone.data.dataset_mapper import DatasetMapper
from resnet_backbone.data.errors import DatasetError
from resnet_backbone.data.text import load_icdar2015, parse_icdar2015_txt, register_text_instances
from resnet_backbone.data.transforms import RandomFlip, ResizeShortestEdge
from resnet_backbone.evaluation.text_evaluation import TextEvaluator
from resnet_backbone.modeling.text.losses import DBLoss
from resnet_backbone.modeling.text.targets import make_db_targets

HEXAGON = [[10, 10], [60, 10], [80, 25], [60, 40], [10, 40], [5, 25]]


def _gt(tmp_path, content, name="gt_img_1.txt"):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


# ---------------------------------------------------------------------------- n-point polygons
def test_polygon_with_more_than_four_points_keeps_every_point(tmp_path):
    """The reported line: 6 points and '###'. It used to become a quad with the transcription
    '10,40,5,25,###', so a don't-care region turned into real text."""
    ctw = [(i * 10 + 5, 20 + (i % 3)) for i in range(7)] + [(i * 10 + 5, 60 - (i % 2)) for i in range(6, -1, -1)]
    p = _gt(tmp_path, "10,10,60,10,80,25,60,40,10,40,5,25,###\n"
                      + ",".join(f"{x},{y}" for x, y in ctw) + ",hello, world\n"
                      + "1,1,9,1,9,9,1,9,Genaxis Theatre\n")
    a, b, c = parse_icdar2015_txt(p)
    assert a["points"].tolist() == HEXAGON and a["transcription"] == "###" and a["ignore"] is True
    assert b["points"].shape == (14, 2) and b["points"].tolist() == [list(v) for v in ctw]
    assert b["transcription"] == "hello, world" and not b["ignore"] and b["line"] == 2
    assert c["points"].shape == (4, 2) and c["transcription"] == "Genaxis Theatre"


def test_coordinate_transcription_rule_and_numeric_transcriptions(tmp_path):
    """Coordinates = the longest even-length run of leading numeric fields; the rest is the transcription."""
    quad = "1,1,9,1,9,9,1,9"
    penta = "1,1,9,1,12,5,9,9,1,9"
    cases = [  # (line, number of points, transcription)
        (f"{quad},2015", 4, "2015"),                    # odd run: the last number is the transcription
        (f"{penta},2015", 5, "2015"),
        (f"{quad},12,50 EUR", 4, "12,50 EUR"),          # odd run, then text: the odd number starts the text
        (f"{quad},NaN", 4, "NaN"),                      # 'NaN' as a word after the coordinates
        (f"{quad},inf", 4, "inf"),
        (quad, 4, ""),                                  # only numbers, even count: no transcription
        (penta, 5, ""),
        (f"{quad},", 4, ""),                            # empty transcription field
        (" 1 , 1 ,9, 1,9,9,1,9 ,  word  ", 4, "word"),   # spaces around fields
        ("1.5,1e1,9,+1,9.25,9,-1,9,x", 4, "x"),         # floats, exponents, signs
        (f"{quad},a,b,,c", 4, "a,b,,c"),                # commas kept in the transcription
        (f"{quad},###", 4, "###"),
        ("\ufeff" + f"{quad},bom inside", 4, "bom inside"),
    ]
    p = _gt(tmp_path, "\n".join(c[0] for c in cases) + "\n")
    entries = parse_icdar2015_txt(p)
    assert [(len(e["points"]), e["transcription"]) for e in entries] == [(n, t) for _, n, t in cases]
    assert entries[9]["points"].tolist() == [[1.5, 10.0], [9.0, 1.0], [9.25, 9.0], [-1.0, 9.0]]
    assert [e["ignore"] for e in entries] == [t == "###" for _, _, t in cases]


@pytest.mark.parametrize("case", [
    "fewer than three points", "non-numeric coordinate", "NaN", "inf", "overflow", "latin-1", "garbage",
    "nul in a coordinate", "a directory"])
def test_bad_lines_raise_naming_file_line_and_field(tmp_path, case):
    good = b"1,1,9,1,9,9,1,9,ok\n"
    line, field, content = {
        "fewer than three points": (2, "points", good + b"1,2,3,4,word\n"),
        "non-numeric coordinate": (2, "points", good + b"1,2,3,x,5,6,7,8,bad\n"),
        "NaN": (3, "points", good + good + b"1,2,3,4,5,nan,7,8,word\n"),
        "inf": (2, "points", good + b"1,2,3,4,5,6,7,8,10,-inf,word\n"),
        "overflow": (2, "points", good + b"1,2,3,4,5,6,7,1e400,word\n"),
        "latin-1": (2, "encoding", good + "1,1,9,1,9,9,1,9,Café\n".encode("latin-1")),
        "garbage": (3, "encoding", good + good + b"1,1,9,1,\xff\xfe\x00\x9c,word\n"),
        "nul in a coordinate": (1, "points", b"1,1,9,1,9\x00,9,1,9,word\n"),
        "a directory": (None, "gt", None),
    }[case]
    if content is None:
        p = tmp_path / "gt_img_1.txt"
        p.mkdir()
    else:
        p = _gt(tmp_path, content)
    with pytest.raises(DatasetError) as ei:
        parse_icdar2015_txt(p)
    e, msg = ei.value, str(ei.value)
    assert e.file == str(p) and str(p) in msg and e.field == field and f"field '{field}'" in msg, msg
    if line is not None:
        assert e.record == f"line {line}" and f"line {line}" in msg, msg


def test_bad_coordinate_is_named_in_the_message(tmp_path):
    with pytest.raises(DatasetError, match=r"y3 \(field 6\) is 'nan'"):
        parse_icdar2015_txt(_gt(tmp_path, "1,2,3,4,5,nan,7,8,word\n"))
    with pytest.raises(DatasetError, match=r"starts with 4 number\(s\).*field 5 \('x'\) is not a number"):
        parse_icdar2015_txt(_gt(tmp_path, "1,2,3,4,x,6,7,8,word\n"))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom"])
def test_unicode_encodings_with_bom_load(tmp_path, encoding):
    text = "1,1,9,1,9,9,1,9,Straße 東京\r\n10,10,60,10,80,25,60,40,10,40,5,25,###\r\n"
    raw = {"utf-16-le-bom": codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
           "utf-16-be-bom": codecs.BOM_UTF16_BE + text.encode("utf-16-be")}.get(encoding)
    p = _gt(tmp_path, raw if raw is not None else text.encode(encoding))
    a, b = parse_icdar2015_txt(p)
    assert a["transcription"] == "Straße 東京" and b["points"].tolist() == HEXAGON and b["ignore"]


# ---------------------------------------------------------------------------- the downstream path
def test_n_point_polygons_reach_mapper_db_targets_loss_and_evaluator(tmp_path):
    img_dir, gt_dir = tmp_path / "images", tmp_path / "gts"
    img_dir.mkdir()
    gt_dir.mkdir()
    Image.new("RGB", (120, 90), (128, 128, 128)).save(img_dir / "img_1.jpg")
    octagon = [[70, 50], [85, 45], [100, 50], [110, 62], [100, 75], [85, 80], [70, 75], [62, 62]]
    (gt_dir / "gt_img_1.txt").write_text(
        ",".join(str(v) for xy in octagon for v in xy) + ",curved, text\n"
        + "10,10,60,10,80,25,60,40,10,40,5,25,###\n"
        + "10,55,40,55,40,80,10,80,quad\n")
    records = load_icdar2015(str(gt_dir), str(img_dir))
    annos = records[0]["annotations"]
    assert [len(a["segmentation"][0]) // 2 for a in annos] == [8, 6, 4]
    assert [a["ignore"] for a in annos] == [False, True, False]
    assert annos[0]["transcription"] == "curved, text"

    # mapper: resize x2 and a horizontal flip move all 8 / 6 points
    mapper = DatasetMapper(None, True, augmentations=[ResizeShortestEdge(180, 1000), RandomFlip(1.0)],
                           image_format="RGB")
    x = mapper(records[0])
    inst = x["instances"]
    assert [len(p) for p in inst.gt_polygons] == [8, 6, 4] and inst.gt_ignore.tolist() == [False, True, False]
    expected = np.array([[240 - 2 * px, 2 * py] for px, py in octagon], np.float32)
    np.testing.assert_allclose(inst.gt_polygons[0], expected, atol=1e-3)

    # DBNet targets: the octagon's shrunk interior is text, the hexagon is masked out; the loss is finite
    h, w = x["image"].shape[-2:]
    t = make_db_targets(inst.gt_polygons, inst.gt_ignore.tolist(), (h, w), min_text_size=4.0)
    cx, cy = expected.mean(axis=0).astype(int)
    assert t["prob_map"][cy, cx] == 1 and t["prob_mask"][cy, cx] == 1
    hx, hy = 240 - 2 * 15, 2 * 25  # (15, 25): inside the hexagon, outside the quad of its first four points
    assert t["prob_mask"][hy, hx] == 0 and t["thresh_mask"][hy, hx] == 0 and t["prob_map"][hy, hx] == 0
    assert t["thresh_mask"].sum() > 0
    maps = {k: torch.from_numpy(v)[None] for k, v in t.items()}
    preds = {"prob": torch.full((1, 1, h, w), 0.5, requires_grad=True),
             "thresh": torch.full((1, 1, h, w), 0.5), "binary": torch.full((1, 1, h, w), 0.5)}
    losses = DBLoss()(preds, maps)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())

    # the text evaluator reads the same n-point ground truth: the octagon itself matches (IoU 1), the
    # hexagon is don't care (a detection on it is neither a hit nor a false positive)
    name = "test_icdar_n_point_eval"
    register_text_instances(name, str(gt_dir), str(img_dir))
    try:
        ev = TextEvaluator(name, distributed=False)
        ev.reset()
        ev.process([{"image_id": 1}], [{"polygons": [np.array(octagon), np.array(HEXAGON),
                                                     np.array([[10, 55], [40, 55], [40, 80], [10, 80]])]}])
        assert ev.evaluate()["text"] == {"precision": 1.0, "recall": 1.0, "hmean": 1.0}
        ev.reset()  # the octagon's first four points are not the octagon: a miss and a false positive
        ev.process([{"image_id": 1}], [{"polygons": [np.array(octagon[:4]),
                                                     np.array([[10, 55], [40, 55], [40, 80], [10, 80]])]}])
        assert ev.evaluate()["text"]["recall"] == 0.5
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------------------- property tests
_int = st.integers(-10**6, 10**6) | st.integers(-10**30, 10**30)
_float = st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False)


@st.composite
def _number(draw):
    """(text, value) of one finite coordinate, written as an int, a float, an exponent or with spaces."""
    kind = draw(st.sampled_from(["int", "float", "exp", "plus", "spaced"]))
    if kind == "int":
        v = draw(_int)
        return str(v), float(v)
    v = draw(_float)
    text = {"float": repr(v), "exp": f"{v:.6e}", "plus": f"+{abs(v)!r}", "spaced": f" {v!r} "}[kind]
    return text, float(text)


_words = st.text(st.sampled_from("abcXYZé東 -.#,"), max_size=12).map(str.strip)
# transcriptions whose parse is known without the rule: one starting with a letter (commas and numbers after
# it allowed), '###', one number (an odd field after the coordinates), or none
_transcription = st.one_of(
    st.tuples(st.sampled_from("aZé東"), _words, st.lists(_number(), max_size=2)).map(
        lambda t: ",".join([(t[0] + t[1]).strip()] + [n.strip() for n, _ in t[2]])),
    st.just("###"), st.integers(0, 99999).map(str), st.just(""), st.sampled_from(["NaN", "inf", "Infinity"]))
_bad_token = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e999"])
_non_numeric = st.sampled_from(["x", "", "1.2.3", "0x10", "１２", "\x00", "--1", "1e", "e5", "abc"])


@st.composite
def _line(draw):
    """(line text, expected entry or the kind of error)."""
    n = draw(st.integers(3, 16))
    nums = [draw(_number()) for _ in range(2 * n)]
    text = draw(_transcription)
    kind = draw(st.sampled_from(["good"] * 5 + ["non_finite", "too_few", "non_numeric_early"]))
    fields = [t for t, _ in nums]
    if kind == "non_finite":  # anywhere among the coordinates
        fields[draw(st.integers(0, 2 * n - 1))] = draw(_bad_token)
    elif kind == "too_few":  # (a non-numeric transcription: a number would be read as a coordinate)
        fields = fields[:draw(st.integers(0, 5))]
        text = draw(st.sampled_from(["###", "word"]))
    elif kind == "non_numeric_early":  # before a third point is complete
        fields[draw(st.integers(0, 5))] = draw(_non_numeric)
    line = ",".join(fields) + ("," + text if text else "")
    if kind != "good":
        return line, kind
    return line, ([v for _, v in nums], text)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_line(), min_size=1, max_size=6), encoding=st.sampled_from(
    ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]), blank=st.booleans(), crlf=st.booleans())
def test_fuzz_icdar_lines_parse_exactly_or_raise_naming_the_line(lines, encoding, blank, crlf):
    body = ("\r\n" if crlf else "\n").join(t for t, _ in lines) + ("\n\n" if blank else "")
    try:
        raw = body.encode(encoding)
    except UnicodeEncodeError:  # 東 has no latin-1 byte: write it as UTF-8, read as such
        raw, encoding = body.encode("utf-8"), "utf-8"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gt_img_1.txt")
        with open(path, "wb") as f:
            f.write(raw)
        undecodable = encoding in ("latin-1", "cp1252") and not body.isascii()
        first_bad = next((i for i, (_, exp) in enumerate(lines, 1) if isinstance(exp, str)), None)
        if undecodable or first_bad is not None:
            with pytest.raises(DatasetError) as ei:
                parse_icdar2015_txt(path)
            e = ei.value
            assert e.file == path and path in str(e) and e.record.startswith("line ") and e.field
            if not undecodable:
                assert e.record == f"line {first_bad}" and e.field == "points", str(e)
            return
        entries = parse_icdar2015_txt(path)
    assert [e["line"] for e in entries] == list(range(1, len(lines) + 1))
    for entry, (_, (coords, text)) in zip(entries, lines):
        assert entry["points"].shape == (len(coords) // 2, 2)
        assert entry["points"].reshape(-1).tolist() == coords
        assert entry["transcription"] == text and entry["ignore"] == (text == "###")


_any_field = st.one_of(_number().map(lambda t: t[0]), _bad_token, _non_numeric, _words,
                       st.integers().map(str), st.floats().map(repr))


@st.composite
def _polygon_line(draw):
    """(line, points, transcription): a convex polygon of 3-12 points inside a 64 x 48 image, with 2-decimal
    coordinates written as ints or floats, so polygon cleaning keeps it exactly as written."""
    n = draw(st.integers(3, 12))
    cx, cy, r = draw(st.floats(20, 44)), draw(st.floats(16, 32)), draw(st.floats(3, 15))
    gaps = draw(st.lists(st.floats(0.1, 1.0), min_size=n, max_size=n))
    angles = np.cumsum(gaps) * (2 * math.pi / sum(gaps))
    pts = [(round(cx + r * math.cos(a), 2), round(cy + r * math.sin(a), 2)) for a in angles]
    text = draw(_transcription)
    line = ",".join(f"{v:g}" if draw(st.booleans()) else repr(v) for xy in pts for v in xy)
    return line + ("," + text if text else ""), pts, text


@st.composite
def _damage(draw, raw):
    for _ in range(draw(st.integers(1, 3))):  # byte-level damage: overwrite, insert, cut
        op = draw(st.sampled_from(["set", "insert", "cut"]))
        i = draw(st.integers(0, len(raw)))
        b = bytes([draw(st.integers(0, 255))])
        raw = {"set": raw[:i] + b + raw[i + 1:], "insert": raw[:i] + b + raw[i:], "cut": raw[:i]}[op]
    return raw


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(polys=st.lists(_polygon_line(), max_size=5), noise=st.booleans(), data=st.data(),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]), skip=st.booleans())
def test_fuzz_icdar_directory_loads_or_raises_dataset_error(polys, noise, data, encoding, skip):
    """n-point polygons through load_icdar2015 (polygon cleaning included): loaded with every point and the
    exact transcription. With noise (random fields: huge, negative, NaN, inf, words; then damaged bytes):
    records whose polygons are finite and inside the image, or DatasetError naming the file; nothing else."""
    lines = [t for t, _, _ in polys]
    if noise:
        lines += [",".join(data.draw(st.lists(_any_field, max_size=20))) for _ in range(data.draw(st.integers(1, 3)))]
    raw = "\n".join(lines).encode(encoding)
    if noise:
        raw = data.draw(_damage(raw))
    with tempfile.TemporaryDirectory() as d:
        os.mkdir(os.path.join(d, "gts"))
        os.mkdir(os.path.join(d, "images"))
        Image.new("RGB", (64, 48)).save(os.path.join(d, "images", "img_3.png"))
        path = os.path.join(d, "gts", "gt_img_3.txt")
        with open(path, "wb") as f:
            f.write(raw)
        try:
            records = load_icdar2015(os.path.join(d, "gts"), os.path.join(d, "images"),
                                     on_bad_sample="skip" if skip else "error")
        except DatasetError as e:
            assert noise, str(e)
            assert e.file == path and path in str(e) and e.field and len(str(e)) < 2500
            return
    assert len(records) <= 1 and (records or noise)
    for r in records:
        for a in r["annotations"]:
            pts = np.asarray(a["segmentation"][0]).reshape(-1, 2)
            assert len(pts) >= 3 and all(math.isfinite(v) for v in pts.reshape(-1))
            assert pts.min() >= 0 and (pts[:, 0] <= 64).all() and (pts[:, 1] <= 48).all()
            assert isinstance(a["transcription"], str) and a["ignore"] == (a["transcription"] == "###")
    if not noise:
        annos = records[0]["annotations"]
        assert [(len(a["segmentation"][0]) // 2, a["transcription"]) for a in annos] == \
            [(len(p), t) for _, p, t in polys]
        for a, (_, p, _) in zip(annos, polys):
            np.testing.assert_allclose(np.reshape(a["segmentation"][0], (-1, 2)), p, atol=1e-4)
