"""Training metrics: an in-memory `EventStorage` and writers for metrics.json and TensorBoard.

The trainer puts scalars (losses, lr, time, data_time, eval results such as "bbox/AP") into the
storage each iteration; every LOG_PERIOD iterations (and after each evaluation) the writers emit:

- `JSONWriter`: OUTPUT_DIR/metrics.json, one JSON object per line:
  {"iteration": 19, "total_loss": .., "loss_*": .., "lr": .., "time": .., "data_time": .., "eta_seconds": ..}
  Training scalars are the median over the last window of iterations (smoothed); evaluation scalars
  ("bbox/AP", ...) are written as they are, on the line of the iteration they were computed at.
- `TensorboardWriter`: the same scalars as TensorBoard events (torch.utils.tensorboard).
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict, deque

import numpy as np

__all__ = ["EventStorage", "JSONWriter", "TensorboardWriter", "read_metrics"]


class _History:
    def __init__(self, window: int):
        self.values: deque[float] = deque(maxlen=window)
        self.global_sum = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        self.values.append(value)
        self.global_sum += value
        self.count += 1

    def median(self) -> float:
        return float(np.median(self.values))

    def latest(self) -> float:
        return self.values[-1]

    def global_avg(self) -> float:
        return self.global_sum / max(self.count, 1)


class EventStorage:
    """Scalars of the running training, keyed by name, with per-name (value, iteration) of the last put."""

    def __init__(self, start_iter: int = 0, window: int = 20):
        self.iter = start_iter
        self.window = window
        self._history: dict[str, _History] = defaultdict(lambda: _History(self.window))
        self._latest: dict[str, tuple[float, int]] = {}
        self._smooth: dict[str, bool] = {}
        self.counters: dict[str, int] = defaultdict(int)

    def put_scalar(self, name: str, value, smoothing_hint: bool = True) -> None:
        value = float(value)
        self._history[name].update(value)
        self._latest[name] = (value, self.iter)
        self._smooth[name] = smoothing_hint

    def put_scalars(self, smoothing_hint: bool = True, **kwargs) -> None:
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint)

    def history(self, name: str) -> _History:
        return self._history[name]

    def latest(self) -> dict[str, tuple[float, int]]:
        return dict(self._latest)

    def latest_with_smoothing_hint(self, window: int | None = None) -> dict[str, tuple[float, int]]:
        out = {}
        for k, (v, it) in self._latest.items():
            if self._smooth[k]:
                vals = list(self._history[k].values)[-(window or self.window):]
                v = float(np.median(vals))
            out[k] = (v, it)
        return out

    def step(self) -> None:
        self.iter += 1


def _finite_or_str(v: float):
    return v if math.isfinite(v) else str(v)


def _end_partial_line(path: str) -> None:
    try:
        with open(path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
    except FileNotFoundError:
        pass


class JSONWriter:
    """Appends one JSON object per (call, iteration) to `path` (metrics.json), with the scalars put since
    the previous call (each scalar is written once per iteration it was put at)."""

    def __init__(self, path: str, window: int = 20, start_iter: int = 0):
        self.path = path
        self.window = window
        self._last_written: dict[str, int] = {}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            self._truncate(start_iter)

    def _truncate(self, start_iter: int) -> None:
        """A resumed run repeats iterations >= start_iter: drop their old records (and a half-written line)."""
        keep = [m for m in read_metrics(self.path) if int(m.get("iteration", -1)) < start_iter]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for m in keep:
                f.write(json.dumps(m, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _end_partial_line(self.path)  # (the rewrite above already drops a half-written last line)

    def write(self, storage: EventStorage) -> None:
        by_iter: dict[int, dict] = defaultdict(dict)
        for k, (v, it) in storage.latest_with_smoothing_hint(self.window).items():
            if it > self._last_written.get(k, -1):
                by_iter[it][k] = _finite_or_str(v)
                self._last_written[k] = it
        if not by_iter:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for it in sorted(by_iter):
                f.write(json.dumps({"iteration": it, **by_iter[it]}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        pass


class TensorboardWriter:
    """Scalars to TensorBoard event files in `log_dir`."""

    def __init__(self, log_dir: str, window: int = 20, start_iter: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.window = window
        # purge_step: TensorBoard hides events >= start_iter left by an interrupted run
        self._writer = SummaryWriter(log_dir, purge_step=start_iter if start_iter > 0 else None)
        self._last_written: dict[str, int] = {}

    def write(self, storage: EventStorage) -> None:
        for k, (v, it) in storage.latest_with_smoothing_hint(self.window).items():
            if it > self._last_written.get(k, -1):
                self._writer.add_scalar(k, v, it)
                self._last_written[k] = it
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_metrics(path: str) -> list[dict]:
    """Every JSON object of a metrics.json file (a half-written last line from a crash is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
