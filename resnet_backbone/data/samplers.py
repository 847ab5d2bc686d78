"""Which record the training loader reads at each position, and the inference sampler.

The training stream is a pure function of (seed, position), so that a run resumed at iteration N reads exactly what
an uninterrupted run reads from N on, without replaying the data before it:

- `TrainingStream`: global position q = 0, 1, 2, ... -> record index.
  Uniform (DATALOADER.SAMPLER_TRAIN "TrainingSampler"): epoch e = q // n, record perm_(seed,e)[q % n], every record
  once per epoch. Repeat factors ("RepeatFactorTrainingSampler", LVIS-style): in epoch e image i appears floor(r_i)
  times, plus once more with probability frac(r_i), the draws made from (seed, e); the epoch's list of repeated
  indices is permuted by (seed, e). Epoch lengths vary; q maps to (epoch, offset) through the cumulative lengths.
- `ResumableBatchSampler`: global batch `it` holds G = SOLVER.IMS_PER_BATCH positions; rank r of W takes slots
  r*B .. r*B + B-1 (B = G / W), so the ranks of one iteration read disjoint positions of one stream.
  Without grouping, batch `it` is positions it*G .. it*G + G-1, i.e. rank r slot j reads p = (it * W + r) * B + j.
  With aspect-ratio grouping (DATALOADER.ASPECT_RATIO_GROUPING, `grouped_batches`): the positions are walked in
  order and each is appended to the bucket of its record's orientation (width > height or not: detectron2's rule,
  squares go with the portraits; from the dataset dict's "width" / "height": the record's size, not the mapped one,
  which a rotation or a crop may change); a bucket that holds G positions is the next global batch. Leftovers carry
  across epochs. With one orientation this is the ungrouped stream. Resuming at batch N replays only this integer
  bookkeeping (no image is read), once per loader.
- The mapper's RNG is seeded by the position in the stream (see data/build.py), so a sample's augmentation does not
  depend on grouping or on the world size.

`InferenceSampler`: every index once across ranks, in contiguous shards.
"""
from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..utils import comm
from ..utils.seed import derive_seed
from .errors import DatasetError

__all__ = ["TrainingStream", "ResumableBatchSampler", "grouped_batches", "record_orientations",
           "repeat_factors_from_category_frequency", "InferenceSampler"]

_DATA_TAG = 0x5EED_DA7A  # uniform epochs' permutations
_REPEAT_TAG = 0x5EED_0F5A  # repeat-factor epochs' rounding and permutation
_BLOCK = 1 << 16  # at most this many positions the grouping walks at once (whole epochs, at least one)


def _generator(*ints: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*ints))
    return g


def repeat_factors_from_category_frequency(dataset_dicts: Sequence[dict], repeat_thresh: float) -> torch.Tensor:
    """detectron2's repeat factors: r(c) = max(1, sqrt(t / f(c))) with f(c) the fraction of images that contain
    category c, r(image) = max over its categories (1 for an image without annotations)."""
    counts: dict[int, int] = {}
    for d in dataset_dicts:
        for c in {a["category_id"] for a in d.get("annotations", [])}:
            counts[c] = counts.get(c, 0) + 1
    n = max(1, len(dataset_dicts))
    cat_rf = {c: max(1.0, math.sqrt(repeat_thresh / (k / n))) for c, k in counts.items()}
    return torch.tensor([max([cat_rf[a["category_id"]] for a in d.get("annotations", [])], default=1.0)
                         for d in dataset_dicts], dtype=torch.float64)


def record_orientations(records: Sequence[dict]) -> np.ndarray:
    """0 for a record with width > height, 1 otherwise (squares with the portraits, as detectron2 buckets them;
    from its "width" / "height")."""
    out = np.empty(len(records), np.uint8)
    for i, r in enumerate(records):
        w, h = r.get("width"), r.get("height")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (w, h)):
            raise DatasetError(f"aspect-ratio grouping needs the image size; width={w!r}, height={h!r} (set "
                               "DATALOADER.ASPECT_RATIO_GROUPING False, or give the record its size)",
                               file=r.get("file_name"), record=f"image_id={r.get('image_id', i)}", field="width")
        out[i] = 0 if w > h else 1
    return out


class TrainingStream:
    """Record index at every global position of the training stream (see the module docstring).

    `size` records, each once per epoch; or `repeat_factors` (one per record, >= 0, not all 0)."""

    def __init__(self, size: int | None = None, seed: int = 0, shuffle: bool = True, repeat_factors=None):
        self.seed, self.shuffle = int(seed), bool(shuffle)
        if repeat_factors is None:
            self._int = None
            self.size = int(size)
        else:
            rf = torch.as_tensor(repeat_factors, dtype=torch.float64).reshape(-1)
            if rf.numel() == 0 or bool((rf < 0).any()) or not bool(torch.isfinite(rf).all()):
                raise ValueError("repeat factors must be a non-empty list of finite numbers >= 0")
            if not bool((rf > 0).any()):
                raise ValueError("repeat factors are all 0: no image would ever be drawn")
            if size is not None and int(size) != rf.numel():
                raise ValueError(f"{rf.numel()} repeat factors for {size} records")
            self._int = torch.floor(rf)
            self._frac = rf - self._int
            self.size = rf.numel()
        if self.size <= 0:
            raise ValueError("the training set is empty")
        self._starts = [0]  # repeat factors: start position of epochs 0, 1, ... as far as computed
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _repeats(self, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
        g = _generator(self.seed, epoch, _REPEAT_TAG)
        return self._int + (torch.rand(self.size, generator=g, dtype=torch.float64) < self._frac), g

    def epoch_start(self, epoch: int) -> int:
        if self._int is None:
            return epoch * self.size
        while len(self._starts) <= epoch:
            self._starts.append(self._starts[-1] + int(self._repeats(len(self._starts) - 1)[0].sum()))
        return self._starts[epoch]

    def locate(self, q: int) -> tuple[int, int]:
        """(epoch, offset in the epoch) of position q."""
        if self._int is None:
            return divmod(q, self.size)
        while self._starts[-1] <= q:
            self.epoch_start(len(self._starts))
        e = bisect.bisect_right(self._starts, q) - 1
        return e, q - self._starts[e]

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The record indices of epoch `epoch`, in stream order (the last few epochs are cached)."""
        if epoch in self._cache:
            self._cache.move_to_end(epoch)
            return self._cache[epoch]
        if self._int is None:
            idx = (torch.randperm(self.size, generator=_generator(self.seed, epoch, _DATA_TAG)) if self.shuffle
                   else torch.arange(self.size))
        else:
            reps, g = self._repeats(epoch)
            idx = torch.repeat_interleave(torch.arange(self.size), reps.long())
            if self.shuffle:
                idx = idx[torch.randperm(len(idx), generator=g)]
            if len(self._starts) == epoch + 1:  # its length is known now: the next epoch's start
                self._starts.append(self._starts[-1] + len(idx))
        self._cache[epoch] = out = idx.numpy().astype(np.int64)
        if len(self._cache) > 4:
            self._cache.popitem(last=False)
        return out

    def index(self, q: int) -> int:
        e, k = self.locate(q)
        return int(self.epoch_indices(e)[k])


def grouped_batches(stream: TrainingStream, orientation: np.ndarray, batch_size: int,
                    start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Global batches start, start + 1, ... under aspect-ratio grouping: (positions, record indices), each
    `batch_size` long and of one orientation (see the module docstring).

    A bucket's k-th batch is its k-th run of `batch_size` positions and is emitted at its last position, so the
    batches are the full chunks of both buckets in the order of their last positions: computed a block of epochs
    at a time."""
    orientation = np.asarray(orientation)
    if len(orientation) != stream.size:
        raise ValueError(f"{len(orientation)} orientations for {stream.size} records")
    left_q = [np.zeros(0, np.int64), np.zeros(0, np.int64)]
    left_r = [np.zeros(0, np.int64), np.zeros(0, np.int64)]
    emitted, epoch = 0, 0
    while True:
        qs, rs, n = [], [], 0
        want = min(_BLOCK, max(4, start - emitted + 4) * batch_size)  # enough to reach `start`, then a few batches
        while n < want:
            idx = stream.epoch_indices(epoch)
            s = stream.epoch_start(epoch)
            qs.append(np.arange(s, s + len(idx), dtype=np.int64))
            rs.append(idx)
            n += len(idx)
            epoch += 1
        q, r = np.concatenate(qs), np.concatenate(rs)
        o = orientation[r]
        chunks_q, chunks_r = [], []
        for a in (0, 1):
            pq, pr = np.concatenate([left_q[a], q[o == a]]), np.concatenate([left_r[a], r[o == a]])
            k = len(pq) // batch_size * batch_size
            chunks_q.append(pq[:k].reshape(-1, batch_size))
            chunks_r.append(pr[:k].reshape(-1, batch_size))
            left_q[a], left_r[a] = pq[k:], pr[k:]
        cq, cr = np.concatenate(chunks_q), np.concatenate(chunks_r)
        if emitted + len(cq) > start:
            order = np.argsort(cq[:, -1], kind="stable")
            for i in order[max(0, start - emitted):]:
                yield cq[i], cr[i]
        emitted += len(cq)


class ResumableBatchSampler(Sampler):
    """Yields, for iterations start_iter, start_iter + 1, ..., this rank's list of (position, record index).

    `batch_size` is per rank; the global batch is batch_size * world_size. `repeat_factors` switches to repeat-factor
    sampling, `orientation` (one 0/1 per record, `record_orientations`) to aspect-ratio grouping."""

    def __init__(self, size: int, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, repeat_factors=None, orientation=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if size <= 0:
            raise ValueError("the training set is empty")
        self.stream = TrainingStream(size, seed, shuffle, repeat_factors)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.start_iter, self.rank, self.world_size = int(start_iter), int(rank), int(world_size)
        self.orientation = None if orientation is None else np.asarray(orientation)

    def positions(self, it: int) -> list[int]:
        """Without grouping: the stream positions this rank reads at iteration `it`."""
        base = (it * self.world_size + self.rank) * self.batch_size
        return list(range(base, base + self.batch_size))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.orientation is None:
            it = self.start_iter
            while True:
                yield [(p, self.stream.index(p)) for p in self.positions(it)]
                it += 1
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for q, r in grouped_batches(self.stream, self.orientation, self.batch_size * self.world_size,
                                    self.start_iter):
            yield list(zip(q[lo:hi].tolist(), r[lo:hi].tolist()))


class InferenceSampler(Sampler):
    """Every index exactly once across ranks: rank r gets a contiguous shard; shard sizes differ by at most one."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None):
        self._size = int(size)
        rank = comm.get_rank() if rank is None else int(rank)
        world = comm.get_world_size() if world_size is None else int(world_size)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        per, extra = divmod(self._size, world)
        start = rank * per + min(rank, extra)
        end = start + per + (1 if rank < extra else 0)
        self._indices = range(start, end)

    def __iter__(self):
        return iter(self._indices)

    def __len__(self):
        return len(self._indices)
