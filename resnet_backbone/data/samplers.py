"""Samplers: an infinite shuffled training stream sharded across ranks, an every-index-once inference sampler,
and aspect-ratio grouping of a stream of mapped samples into batches."""
from __future__ import annotations

import itertools
import math

import torch
from torch.utils.data import IterableDataset, Sampler

from ..utils import comm

__all__ = ["TrainingSampler", "RepeatFactorTrainingSampler", "InferenceSampler", "AspectRatioGroupedDataset"]


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's (rank, world size), from torch.distributed unless given; checked."""
    rank = comm.get_rank() if rank is None else int(rank)
    world = comm.get_world_size() if world_size is None else int(world_size)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    return rank, world


class TrainingSampler(Sampler):
    """Yields dataset indices forever: a new permutation each pass (or 0..N-1 repeated without shuffle).

    All ranks draw the same stream (same `seed`); rank r takes positions r, r + world_size, ... so within a pass of
    N (a multiple of world_size) the ranks' indices are disjoint and together cover the dataset.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None, rank: int | None = None,
                 world_size: int | None = None):
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size={size}")
        self._size = int(size)
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = _rank_and_world(rank, world_size)

    def __iter__(self):
        return itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


class RepeatFactorTrainingSampler(TrainingSampler):
    """Like TrainingSampler, but image i appears `repeat_factors[i]` times per pass on average (LVIS-style
    repeat-factor sampling, detectron2's DATALOADER.SAMPLER_TRAIN="RepeatFactorTrainingSampler"). A fractional
    factor is rounded stochastically each pass (2.3 -> 2, or 3 with probability 0.3)."""

    def __init__(self, repeat_factors, shuffle: bool = True, seed: int | None = None, rank: int | None = None,
                 world_size: int | None = None):
        rf = torch.as_tensor(repeat_factors, dtype=torch.float64)
        if rf.numel() == 0 or bool((rf < 0).any()) or not bool(torch.isfinite(rf).all()):
            raise ValueError("repeat factors must be a non-empty list of finite numbers >= 0")
        if not bool((rf > 0).any()):
            raise ValueError("repeat factors are all 0: no image would ever be drawn")
        super().__init__(rf.numel(), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
        self._int = torch.floor(rf)
        self._frac = rf - self._int

    @staticmethod
    def repeat_factors_from_category_frequency(dataset_dicts: list[dict], repeat_thresh: float) -> torch.Tensor:
        """r(image) = max over its categories c of max(1, sqrt(t / f(c))), f(c) = fraction of images with c."""
        counts: dict[int, int] = {}
        for d in dataset_dicts:
            for c in {a["category_id"] for a in d.get("annotations", [])}:
                counts[c] = counts.get(c, 0) + 1
        n = max(1, len(dataset_dicts))
        cat_rf = {c: max(1.0, math.sqrt(repeat_thresh / (k / n))) for c, k in counts.items()}
        return torch.tensor([max([cat_rf[a["category_id"]] for a in d.get("annotations", [])], default=1.0)
                             for d in dataset_dicts], dtype=torch.float64)

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            reps = self._int + (torch.rand(len(self._frac), generator=g, dtype=torch.float64) < self._frac)
            indices = torch.repeat_interleave(torch.arange(len(reps)), reps.long())
            if len(indices) == 0:
                continue
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            yield from indices.tolist()


class InferenceSampler(Sampler):
    """Every index exactly once across ranks: rank r gets a contiguous shard; shard sizes differ by at most one."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None):
        self._size = int(size)
        rank, world = _rank_and_world(rank, world_size)
        per, extra = divmod(self._size, world)
        start = rank * per + min(rank, extra)
        end = start + per + (1 if rank < extra else 0)
        self._indices = range(start, end)

    def __iter__(self):
        return iter(self._indices)

    def __len__(self):
        return len(self._indices)


class AspectRatioGroupedDataset(IterableDataset):
    """Batch a stream of mapped dicts so each batch holds only landscape (w >= h) or only portrait images,
    which wastes less padding. Yields lists of `batch_size` dicts."""

    def __init__(self, dataset, batch_size: int):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self._buckets = [[], []]

    def __iter__(self):
        for d in self.dataset:
            h, w = d["image"].shape[-2:] if "image" in d else (d["height"], d["width"])
            bucket = self._buckets[0 if w >= h else 1]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                del bucket[:]
                yield batch
