#!/usr/bin/env python
"""Run a trained detector on images or a video and draw its detections (boxes, or polygons for text models).

    python tools/demo.py --config-file CFG --weights output/model_final.pth --input IMG_OR_DIR --output DIR \
        [--score-thresh 0.5] [KEY VALUE ...]
    python tools/demo.py --config-file CFG --weights output/model_final.pth --video-input clip.mp4 \
        --output OUT.mp4_OR_DIR [KEY VALUE ...]

Writes one picture per input image into DIR (or one annotated video) and prints where they went. Works for
every detector whose eval output follows the contract (Faster R-CNN, DETR, DBNet: "polygons" are drawn when
present; Mask R-CNN: "masks" are drawn as translucent class-coloured fills with outlines under the boxes).

Output names: the input's name with the extension .jpg for a JPEG input, .png otherwise (a.tif -> a.png).
When several inputs would get the same output name (x.png, x.PNG and x.tif all give x.png), each of them
keeps its whole file name and gets the output extension added: x.png.png, x.PNG.png, x.tif.png. Inputs with
the same file name in different folders are refused (run them with separate --output folders).
Nothing is ever written over an input image: --output may not be an --input folder, and an output that is an
input file is refused. An output file that already exists is refused unless --overwrite is given.

Video (--video-input, instead of --input): every frame is drawn and written with OpenCV (codec mp4v) at the
input's frame rate and size. --output is the video file when it ends with a video extension (.mp4, .m4v, .mov,
.avi, .mkv), else a folder that gets <input name>.mp4. The same rules hold: never the input file, an existing
output only with --overwrite. The video is written to a temporary file beside the output and renamed at the end,
so an interrupted run leaves no half video (and an --overwrite run keeps the old one until it has finished).
A video that cannot be read (missing, not a video, no frames) is refused, naming the file.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from resnet_backbone.utils.cli import OverridesArgumentParser, ToolError, ToolInputNotFound, run_tool  # noqa: E402

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".avi", ".mkv")
logger = logging.getLogger("resnet_backbone.demo")


def get_parser() -> argparse.ArgumentParser:
    p = OverridesArgumentParser(description="Draw a detector's predictions on images.",
                                epilog=__doc__[__doc__.index("Output names:"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", default="", help="model weights (.pth); default: MODEL.WEIGHTS of the config")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="image file(s) or a directory of images")
    src.add_argument("--video-input", metavar="FILE", help="a video file: writes an annotated video")
    p.add_argument("--output", required=True,
                   help="output directory (not an --input folder; output names: see below); with --video-input "
                        "the output video file (.mp4 ...) or a directory for <name>.mp4")
    p.add_argument("--overwrite", action="store_true", help="replace output pictures (or video) that already exist")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw detections with at least this score")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return p


def list_images(inputs) -> list[str]:
    out = []
    for x in inputs:
        if os.path.isdir(x):
            out += sorted(os.path.join(x, f) for f in os.listdir(x) if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(x):
            out.append(x)
        else:
            raise ToolInputNotFound(f"--input: no such file or directory: {x}")
    if not out:
        raise ToolInputNotFound(f"--input: no images ({', '.join(IMAGE_EXTS)}) found in {inputs}")
    return out


def _output_ext(path: str) -> str:
    return ".jpg" if os.path.splitext(path)[1].lower() in (".jpg", ".jpeg") else ".png"


def output_names(files: list[str]) -> list[str]:
    """The output file name of each input, in order (the rules are in the module docstring). Raises ToolError
    when two inputs would still get the same name (the same file name in two folders)."""
    def refuse_duplicates(keys, names):
        first: dict[str, str] = {}
        for f, key, n in zip(files, keys, names):
            if key in first:
                raise ToolError(f"--input '{first[key]}' and '{f}' would both be drawn to '{n}' in the --output "
                                "folder; give them separate --output folders (or rename one)")
            first[key] = f

    names = [os.path.splitext(os.path.basename(f))[0] + _output_ext(f) for f in files]
    refuse_duplicates([os.path.basename(f) for f in files], names)  # one file name in two folders: no rename helps
    counts = Counter(names)
    names = [n if counts[n] == 1 else os.path.basename(f) + _output_ext(f) for f, n in zip(files, names)]
    refuse_duplicates(names, names)  # e.g. x.png, x.tif and x.png.png: x.png's new name is taken
    return names


def _file_id(path: str):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def plan_outputs(inputs, files: list[str], output_dir: str, overwrite: bool = False,
                 names: list[str] | None = None) -> list[str]:
    """The output path of each input file, checked before anything is built or written: --output is not a file
    nor an --input folder, no output is an input file, no two outputs collide, and no output exists already
    unless `overwrite`. Raises ToolError naming the paths (and the flag) otherwise.

    `names`: the output file names (one per file, distinct); default `output_names(files)`."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ToolError(f"--output '{output_dir}' is a file, not a folder; give a folder for the pictures")
    if os.path.isdir(output_dir):
        for x in inputs:
            if os.path.isdir(x) and os.path.samefile(x, output_dir):
                raise ToolError(f"--output '{output_dir}' is the --input folder '{x}': the drawn pictures would be "
                                "written among (and over) the input images; choose another --output folder")
    input_ids = {}
    for f in files:
        input_ids.setdefault(_file_id(f), f)
    if names is None:
        names = output_names(files)
    elif len(set(names)) != len(names) or len(names) != len(files):
        raise ValueError(f"plan_outputs: need {len(files)} distinct output names, got {names}")
    dsts = [os.path.join(output_dir, n) for n in names]
    existing = []
    for dst in dsts:
        if os.path.lexists(dst):
            if os.path.exists(dst) and _file_id(dst) in input_ids:
                raise ToolError(f"the output '{dst}' is the input image '{input_ids[_file_id(dst)]}': drawing "
                                "would overwrite it; choose another --output folder")
            if os.path.isdir(dst):
                raise ToolError(f"the output '{dst}' is a folder; move it away or choose another --output")
            existing.append(dst)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ToolError(f"the output '{existing[0]}'{more} already exists; pass --overwrite to replace it, or "
                        "choose another --output folder")
    return dsts


def class_names_for(cfg) -> list[str] | None:
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        try:
            from resnet_backbone.data import MetadataCatalog

            names = MetadataCatalog.get(name).get("thing_classes", None)
            if names:
                return list(names)
        except Exception:  # dataset files absent: fall back to class ids
            continue
    return None


class Predictor:
    """cfg + weights -> model in eval mode; `__call__(image in cfg.INPUT.FORMAT, HWC uint8)` -> output dict."""

    def __init__(self, cfg, weights: str = ""):
        from resnet_backbone.checkpoint.checkpointer import Checkpointer
        from resnet_backbone.data.transforms import apply_augmentations, build_augmentation
        from resnet_backbone.modeling.fast_paths import optimize_for_inference
        from resnet_backbone.modeling.meta_arch import build_model

        self.cfg = cfg
        self.model = build_model(cfg)
        weights = weights or cfg.MODEL.WEIGHTS
        if weights:
            Checkpointer(self.model, "", save_to_disk=False).load_weights(weights)
        else:
            logger.warning("no weights given: the model is randomly initialised")
        self.model = optimize_for_inference(self.model, cfg)  # eval mode + the fast paths the config asks for
        if cfg.TEST.AUG.ENABLED:  # test-time augmentation, as Trainer.test evaluates it (Faster R-CNN only)
            from resnet_backbone.modeling.meta_arch import build_tta_model

            self.model = build_tta_model(cfg, self.model)
        self.augs = build_augmentation(cfg, is_train=False)
        self._apply = apply_augmentations

    def __call__(self, image: np.ndarray) -> dict:
        h, w = image.shape[:2]
        resized, _ = self._apply(self.augs, image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with torch.inference_mode():
            return self.model([{"image": tensor, "height": h, "width": w}])[0]


def run(cfg, weights: str, inputs, output_dir: str, score_thresh: float = 0.5, overwrite: bool = False) -> list[str]:
    """Draw the detections on each image of `inputs` into `output_dir`; returns the written paths. Every output
    is checked (plan_outputs) before the model is built."""
    from resnet_backbone.data import read_image
    from resnet_backbone.utils.visualizer import draw_detections

    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files = list_images(inputs)
    dsts = plan_outputs(inputs, files, output_dir, overwrite)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise ToolError(f"--output '{output_dir}' cannot be created: {e.strerror or e}") from e
    input_ids = {_file_id(f): f for f in files}
    predictor = Predictor(cfg, weights)
    names = class_names_for(cfg)
    written = []
    written_ids: dict = {}
    from tqdm import tqdm

    for path, dst in tqdm(list(zip(files, dsts)), desc="demo", disable=len(files) < 2):
        # on a case-insensitive file system two names of the plan can be one file: never write a file twice
        # (nor an input file, should one have appeared since the plan)
        if os.path.exists(dst):
            fid = _file_id(dst)
            if fid in input_ids or fid in written_ids:
                other = input_ids.get(fid) or written_ids[fid]
                raise ToolError(f"the output '{dst}' is the same file as '{other}' (a case-insensitive file "
                                "system?); choose another --output folder or rename the inputs")
        image = read_image(path, format=cfg.INPUT.FORMAT)
        out = predictor(image)
        rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        polygons = out.get("polygons")
        vis = draw_detections(rgb, out["boxes"], out["labels"], out["scores"], names, polygons=polygons,
                              score_thresh=score_thresh, masks=out.get("masks"))
        if dst.endswith(".jpg"):
            Image.fromarray(vis).save(dst, quality=92)
        else:
            Image.fromarray(vis).save(dst)
        written_ids[_file_id(dst)] = dst
        n = int((out["scores"] >= score_thresh).sum())
        logger.info("%s: %d detections >= %.2f -> %s", path, n, score_thresh, dst)
        written.append(dst)
    return written


def _video_output(video: str, output: str) -> tuple[str, str]:
    """(folder, file name) of the annotated video: --output itself when it names a video file, else
    <--output>/<input name>.mp4."""
    if os.path.splitext(output)[1].lower() in VIDEO_EXTS and not os.path.isdir(output):
        return os.path.dirname(output) or ".", os.path.basename(output)
    if os.path.isfile(output):
        raise ToolError(f"--output '{output}' is a file without a video extension ({', '.join(VIDEO_EXTS)}); give "
                        "the output video as NAME.mp4, or a folder")
    return output, os.path.splitext(os.path.basename(video))[0] + ".mp4"


@contextlib.contextmanager
def _captured_stderr():
    """Collect what C libraries (FFmpeg) write on file descriptor 2 while the block runs; yields a list that
    receives the text, so that an unreadable video gives one error line (the text goes into the message)."""
    out: list[str] = []
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured by a test runner, an IDE ...)
        yield out
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield out
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def _ffmpeg_reason(text: str) -> str:
    """The last line FFmpeg printed, without its "[demuxer @ 0x...]" prefix."""
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    return f" (decoder: {lines[-1][:200]})" if lines else ""


def open_video(path: str):
    """(cv2.VideoCapture, first frame BGR, fps, frame count or 0 when unknown). Raises ToolInputNotFound for a
    missing file, ToolError for a file OpenCV cannot read a frame from."""
    import cv2

    if not os.path.exists(path):
        raise ToolInputNotFound(f"--video-input: no such file: {path}")
    if not os.path.isfile(path):
        raise ToolError(f"--video-input '{path}' is not a file; give a video file (use --input for a folder of "
                        "images)")
    with _captured_stderr() as said:
        cap = cv2.VideoCapture(path)
        ok, frame = (cap.read() if cap.isOpened() else (False, None))
    if not ok or frame is None or frame.size == 0:
        cap.release()
        raise ToolError(f"--video-input '{path}' cannot be read as a video (no frame could be decoded: not a "
                        f"video file, an empty or truncated one, or a codec this OpenCV lacks)"
                        f"{_ffmpeg_reason(''.join(said))}")
    if "".join(said).strip():
        logger.debug("%s: the decoder said: %s", path, "".join(said).strip())
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not (fps > 0 and fps < 1000):
        logger.warning("%s: no usable frame rate in the file (%r); writing at 25 fps", path, fps)
        fps = 25.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return cap, frame, fps, max(count, 0)


def _to_model_format(frame_bgr: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "RGB":
        return np.ascontiguousarray(frame_bgr[:, :, ::-1])
    if fmt == "L":
        import cv2

        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    return frame_bgr


def run_video(cfg, weights: str, video: str, output: str, score_thresh: float = 0.5,
              overwrite: bool = False) -> str:
    """Draw the detections on every frame of `video` and write the annotated video (see the module docstring);
    returns its path. The video and the output are checked before the model is built."""
    import cv2
    from tqdm import tqdm

    from resnet_backbone.utils.visualizer import draw_detections

    cap, frame, fps, count = open_video(video)
    try:
        out_dir, name = _video_output(video, output)
        dst = plan_outputs([video], [video], out_dir, overwrite, names=[name])[0]
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise ToolError(f"--output '{out_dir}' cannot be created: {e.strerror or e}") from e
        predictor = Predictor(cfg, weights)
        names = class_names_for(cfg)
        h, w = frame.shape[:2]
        # a new file beside the output, with its extension (OpenCV picks the container from it); never an
        # existing file (the input could be named like any temporary name)
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(dst)[1], prefix=f".{os.path.basename(dst)}.",
                                   dir=out_dir)
        os.close(fd)
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        if not writer.isOpened():
            os.remove(tmp)
            raise ToolError(f"cannot write the video '{dst}' (OpenCV's mp4v writer refused '{tmp}'); check the "
                            f"folder is writable, or use .mp4")
        n = 0
        try:
            with tqdm(total=count or None, desc="demo video", unit="frame") as bar:
                while frame is not None:
                    out = predictor(_to_model_format(frame, cfg.INPUT.FORMAT))
                    vis = draw_detections(frame[:, :, ::-1], out["boxes"], out["labels"], out["scores"], names,
                                          polygons=out.get("polygons"), score_thresh=score_thresh,
                                          masks=out.get("masks"))
                    writer.write(np.ascontiguousarray(vis[:, :, ::-1]))
                    n += 1
                    bar.update(1)
                    ok, frame = cap.read()
                    if not ok:
                        frame = None
            writer.release()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; the video gets the usual permissions
            os.replace(tmp, dst)
        except BaseException:
            writer.release()
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    finally:
        cap.release()
    logger.info("%s: %d frames (%dx%d, %.2f fps) -> %s", video, n, w, h, fps, dst)
    return dst


def main(argv=None) -> list[str]:
    from resnet_backbone.engine import setup_cfg
    from resnet_backbone.utils.logger import setup_logger

    args = get_parser().parse_args(argv)
    setup_logger()
    cfg = setup_cfg(args)
    cfg.freeze()
    if args.video_input is not None:
        dst = run_video(cfg, args.weights, args.video_input, args.output, args.score_thresh, overwrite=args.overwrite)
        print(f"Wrote the annotated video {dst}")
        return [dst]
    written = run(cfg, args.weights, args.input, args.output, args.score_thresh, overwrite=args.overwrite)
    print(f"Wrote {len(written)} picture(s) to {args.output}")
    return written


if __name__ == "__main__":
    sys.exit(run_tool(main))
