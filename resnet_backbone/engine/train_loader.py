"""A resumable, exactly reproducible training loader.

Why not a plain infinite sampler: to resume at iteration N bit for bit, the loader must produce the
same batch N, with the same augmentations, as an uninterrupted run would, without replaying the N
batches before it. Here every sample is a pure function of (seed, global position):

  - iteration `it`, rank `r`, slot `j` (batch size B per rank, world size W) reads global position
    p = (it * W + r) * B + j; epoch e = p // n picks a permutation of the n records seeded by (seed, e),
    and the record is perm_e[p % n]. So the W ranks of one iteration read disjoint records, every
    record is read once per epoch, and starting at iteration N costs nothing.
  - The mapper (augmentations use numpy / python / torch global RNGs) runs with those RNGs seeded by
    (seed, p), inside a DataLoader worker or, without workers, with the caller's RNG states saved
    and restored around it. The same position gives the same augmented sample in any run.
  - A bad record (DatasetError) raises, or with DATALOADER.ON_BAD_SAMPLE="skip" is counted and replaced
    by a deterministic substitute (the next records of the same permutation).

Aspect-ratio grouping is not applied (batches are padded by the model anyway). Everything else
(dataset dicts, DatasetMapper, filtering of empty images) is the data pipeline's.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

__all__ = ["ResumableBatchSampler", "ResumableTrainLoader", "derive_seed", "seed_all_rng"]

logger = logging.getLogger(__name__)

_DATA_TAG = 0x5EED_DA7A


def derive_seed(*ints: int) -> int:
    """A 31-bit seed that depends on every integer given (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(i) % 2**63 for i in ints]).generate_state(1)[0]) & 0x7FFFFFFF


def seed_all_rng(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ResumableBatchSampler(Sampler):
    """Yields, for iterations start_iter, start_iter+1, ..., the list of (position, record index) of this rank."""

    def __init__(self, size: int, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_iter, self.rank, self.world_size, self.shuffle = start_iter, rank, world_size, shuffle
        self._perm_epoch, self._perm = -1, None

    def _index(self, p: int) -> int:
        epoch, k = divmod(p, self.size)
        if not self.shuffle:
            return k
        if epoch != self._perm_epoch:
            g = torch.Generator()
            g.manual_seed(derive_seed(self.seed, epoch, _DATA_TAG))
            self._perm, self._perm_epoch = torch.randperm(self.size, generator=g).tolist(), epoch
        return self._perm[k]

    def positions(self, it: int) -> list[int]:
        base = (it * self.world_size + self.rank) * self.batch_size
        return list(range(base, base + self.batch_size))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        it = self.start_iter
        while True:
            yield [(p, self._index(p)) for p in self.positions(it)]
            it += 1


class _PositionDataset(Dataset):
    """dataset[(position, index)] -> (mapped record, number of bad records skipped for it)."""

    def __init__(self, records, mapper: Callable, seed: int, on_bad_sample: str = "error", max_retries: int = 100):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"DATALOADER.ON_BAD_SAMPLE must be 'error' or 'skip', got {on_bad_sample!r}")
        self.records, self.mapper, self.seed = records, mapper, seed
        self.on_bad_sample, self.max_retries = on_bad_sample, max_retries

    def __len__(self):
        return len(self.records)

    def _map(self, p: int, idx: int):
        from ..data.errors import DatasetError

        skipped = 0
        for attempt in range(self.max_retries):
            j = (idx + attempt) % len(self.records)
            seed_all_rng(derive_seed(self.seed, p, attempt))
            try:
                out = self.mapper(self.records[j])
            except DatasetError as e:
                if self.on_bad_sample != "skip":
                    raise
                skipped += 1
                try:
                    from ..data.errors import count_bad_sample

                    count_bad_sample(e, "train_loader")
                except ImportError:  # pragma: no cover
                    logger.warning("skipping bad sample: %s", e)
                continue
            if out is not None:
                return out, skipped
            skipped += 1
        raise RuntimeError(f"{self.max_retries} bad training samples in a row around record index {idx}; giving up")

    def __getitem__(self, key):
        p, idx = key
        if get_worker_info() is not None:
            return self._map(p, idx)
        # in the main process, keep the caller's RNG streams untouched
        py, npst, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            return self._map(p, idx)
        finally:
            random.setstate(py)
            np.random.set_state(npst)
            torch.set_rng_state(th)


def _collate(batch):
    return batch


class ResumableTrainLoader:
    """Infinite iterator of list[dict] batches starting at `start_iter` (see the module docstring).

    `num_skipped` counts bad records replaced so far (ON_BAD_SAMPLE="skip").
    """

    def __init__(self, records, mapper: Callable, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, on_bad_sample: str = "error", shuffle: bool = True):
        self.sampler = ResumableBatchSampler(len(records), batch_size, seed, start_iter, rank, world_size, shuffle)
        self.dataset = _PositionDataset(records, mapper, seed, on_bad_sample)
        self.num_workers = num_workers
        self.num_skipped = 0
        g = torch.Generator()  # DataLoader draws its worker base seed from this, not from the global RNG
        g.manual_seed(derive_seed(seed, start_iter, rank, _DATA_TAG))
        self._loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=num_workers,
                                  collate_fn=_collate, pin_memory=torch.cuda.is_available(),
                                  persistent_workers=False, generator=g)

    def __iter__(self):
        for batch in self._loader:
            self.num_skipped += sum(s for _, s in batch)
            yield [d for d, _ in batch]


def build_resumable_train_loader(cfg, seed: int, start_iter: int = 0, mapper=None, records=None):
    """The training loader for `cfg` from the data pipeline's pieces (DATASETS.TRAIN, DatasetMapper)."""
    from ..data.build import DatasetFromList, get_detection_dataset_dicts
    from ..data.dataset_mapper import DatasetMapper
    from ..utils import comm

    world, rank = comm.get_world_size(), comm.get_rank()
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total <= 0 or total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the world size ({world})")
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported "
                         "(only 'TrainingSampler')")
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        logger.info("DATALOADER.ASPECT_RATIO_GROUPING is not applied by the resumable loader (batches are padded)")
    policy = cfg.DATALOADER.ON_BAD_SAMPLE
    if records is None:
        records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, policy)
    if mapper is None:
        mapper = DatasetMapper.from_config(cfg, is_train=True)
    return ResumableTrainLoader(DatasetFromList(records), mapper, total // world, seed, start_iter, rank, world,
                                int(cfg.DATALOADER.NUM_WORKERS), policy)
