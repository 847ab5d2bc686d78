"""tools/demo.py --video-input: an annotated video with the input's frame count, size and frame rate; a video
that cannot be read is one error line (exit 2) naming the file."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from _tools import load_tool

from resnet_backbone.utils.cli import ToolError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_RCNN = os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml")
# a tiny random-init Faster R-CNN (no weights): R18, narrow FPN, few proposals, 64 px test size
TINY = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.RPN.PRE_NMS_TOPK_TEST", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]

demo = load_tool("demo")


def _write_video(path, n=5, size=(64, 48), fps=7.0):
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        frame[10 + i:30 + i, 10:40] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    return path


def _probe(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n = 0
    while cap.read()[0]:
        n += 1
    out = (n, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
           cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    cap.release()
    return out


def _main(video, output, *extra):
    return demo.main(["--config-file", BASE_RCNN, "--video-input", str(video), "--output", str(output),
                      "--score-thresh", "0.0", *extra, *TINY])


def test_video_keeps_frames_size_and_fps(tmp_path):
    video = _write_video(tmp_path / "clip.mp4")
    (dst,) = _main(video, tmp_path / "out")  # a folder: <name>.mp4 in it
    assert dst == str(tmp_path / "out" / "clip.mp4")
    n, w, h, fps, count = _probe(dst)
    assert (n, w, h, count) == (5, 64, 48, 5) and fps == pytest.approx(7.0, rel=1e-3)
    assert os.listdir(tmp_path / "out") == ["clip.mp4"]  # no temporary file left


def test_video_output_file_overwrite_and_input(tmp_path):
    video = _write_video(tmp_path / "clip.mp4", n=3)
    out = tmp_path / "res" / "annotated.mp4"
    assert _main(video, out) == [str(out)]
    assert _probe(out)[:3] == (3, 64, 48)
    out.write_bytes(b"old")
    with pytest.raises(ToolError, match=r"annotated\.mp4.*already exists.*--overwrite"):
        _main(video, out)
    assert out.read_bytes() == b"old"
    _main(video, out, "--overwrite")
    assert _probe(out)[:3] == (3, 64, 48)
    before = video.read_bytes()
    with pytest.raises(ToolError, match="is the input image"):
        _main(video, video, "--overwrite")
    assert video.read_bytes() == before


def _tool(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RB_TRACEBACK", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def _zero_frames(path):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 64))
    writer.release()
    if not path.exists():
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["missing", "not_a_video", "zero_frames", "folder"])
def test_unreadable_video_is_one_line(tmp_path, kind):
    path = tmp_path / "bad.mp4"
    if kind == "not_a_video":
        path.write_text("this is not a video\n" * 50)
    elif kind == "zero_frames":
        _zero_frames(path)
    elif kind == "folder":
        path.mkdir()
    r = _tool("--config-file", BASE_RCNN, "--video-input", path, "--output", tmp_path / "out", *TINY)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo.py: error: ") and str(path) in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_input_and_video_input_are_exclusive(tmp_path, capsys):
    video = _write_video(tmp_path / "clip.mp4", n=1)
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", BASE_RCNN, "--video-input", str(video), "--input", str(tmp_path), "--output",
                   str(tmp_path / "o")])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", BASE_RCNN, "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--video-input" in err and "--input" in err, err
    assert not (tmp_path / "o").exists()
