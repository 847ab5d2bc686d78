"""Data loaders: dataset dicts from the catalog -> mapped, batched model inputs (list[dict]).

The one training loader, `build_detection_train_loader` (the Trainer's and the tools'): infinite, resumable and
exactly reproducible. Which record position p reads is data/samplers.py's (seed, position) function (uniform or
repeat-factor epochs, optional aspect-ratio grouping); the mapper (augmentations use the python / numpy / torch
global RNGs) runs with those RNGs seeded by (seed, p, attempt), in a DataLoader worker or, without workers, with the
caller's RNG states saved and restored around it. The same position gives the same augmented sample in any run, any
number of workers, any world size. A bad record (`DatasetError`) raises, or with DATALOADER.ON_BAD_SAMPLE "skip" is
counted ("train_loader") and replaced deterministically by the next record (attempt 1, 2, ...).

`build_detection_test_loader`: every image once across ranks; a bad image is left out and counted ("mapper").
"""
from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..utils import comm
from ..utils.seed import derive_seed, seed_all_rng
from .builtin import register_cfg_datasets
from .catalog import DatasetCatalog
from .dataset_mapper import DatasetMapper
from .errors import BadSampleGuard, DatasetError, bad_sample_policy
from .samplers import (
    _DATA_TAG,
    InferenceSampler,
    ResumableBatchSampler,
    record_orientations,
    repeat_factors_from_category_frequency,
)

__all__ = ["get_detection_dataset_dicts", "build_detection_train_loader", "build_detection_test_loader",
           "ResumableTrainLoader", "DatasetFromList", "MapDataset", "trivial_batch_collator"]

logger = logging.getLogger(__name__)


def get_detection_dataset_dicts(names, filter_empty: bool = True, on_bad_sample: str = "error") -> list[dict]:
    """Load and concatenate the named datasets; with `filter_empty`, drop images without non-crowd annotations."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("no dataset names given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    dicts = []
    with bad_sample_policy(on_bad_sample):
        for name in names:
            d = DatasetCatalog.get(name)
            if not isinstance(d, list) or not d:
                raise DatasetError(f"dataset '{name}' is empty", record=name, field="dataset")
            dicts.extend(d)
    if filter_empty:
        before = len(dicts)
        dicts = [r for r in dicts if any(not a.get("iscrowd", 0) for a in r.get("annotations", []))]
        if before != len(dicts):
            logger.info("removed %d images without (non-crowd) annotations; %d left", before - len(dicts), len(dicts))
        if not dicts:
            raise DatasetError(f"no image of {names} has a (non-crowd) annotation", record=",".join(names),
                               field="annotations")
    return dicts


class DatasetFromList(Dataset):
    """A list of records stored as one pickled byte buffer, so DataLoader workers do not copy-on-read
    (and grow memory) through Python refcounts."""

    def __init__(self, records: list, serialize: bool = True):
        self._serialize = serialize
        if serialize:
            blobs = [np.frombuffer(pickle.dumps(r, protocol=-1), dtype=np.uint8) for r in records]
            self._addr = np.cumsum(np.asarray([len(b) for b in blobs], dtype=np.int64))
            self._data = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
        else:
            self._list = list(records)

    def __len__(self):
        return len(self._addr) if self._serialize else len(self._list)

    def __getitem__(self, idx):
        if not self._serialize:
            return self._list[idx]
        start = 0 if idx == 0 else int(self._addr[idx - 1])
        return pickle.loads(memoryview(self._data[start:int(self._addr[idx])]))


class MapDataset(Dataset):
    """`map_func(dataset[i])`; a bad sample (`DatasetError`) raises, or with ON_BAD_SAMPLE "skip" is counted
    (under "mapper") and becomes None, which the collator drops: evaluation leaves it out, never substitutes it."""

    def __init__(self, dataset, map_func, on_bad_sample: str = "error"):
        self.dataset, self.map_func = dataset, map_func
        self._guard = BadSampleGuard(on_bad_sample, "mapper")

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        with self._guard:
            return self.map_func(self.dataset[idx])
        return None


def trivial_batch_collator(batch):
    """A batch is the list of its dicts (None entries, i.e. skipped samples, dropped)."""
    return [b for b in batch if b is not None]


def _worker_init(worker_id):
    # numpy's global RNG is not reseeded by torch in workers
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# ---------------------------------------------------------------------------- training
class _PositionDataset(Dataset):
    """dataset[(position, index)] -> (mapped record, number of bad records skipped for it).

    The mapper runs with every global RNG seeded by (seed, position, attempt); a bad record raises, or (policy
    "skip") is counted and replaced by the next record (in index order; of the same orientation under grouping)."""

    def __init__(self, records, mapper: Callable, seed: int, on_bad_sample: str = "error", max_retries: int = 100,
                 orientation=None):
        self.records, self.mapper, self.seed, self.max_retries = records, mapper, seed, max_retries
        self._guard = BadSampleGuard(on_bad_sample, "train_loader")
        self._members = self._slot = None
        if orientation is not None:
            orientation = np.asarray(orientation)
            self._members = [np.flatnonzero(orientation == a) for a in (0, 1)]
            self._slot = np.empty(len(orientation), np.int64)
            for m in self._members:
                self._slot[m] = np.arange(len(m))
            self._orientation = orientation

    def __len__(self):
        return len(self.records)

    def _substitute(self, idx: int, attempt: int) -> int:
        if self._members is None:
            return (idx + attempt) % len(self.records)
        m = self._members[int(self._orientation[idx])]
        return int(m[(self._slot[idx] + attempt) % len(m)])

    def _map(self, p: int, idx: int):
        for attempt in range(self.max_retries):
            seed_all_rng(derive_seed(self.seed, p, attempt))
            with self._guard:
                out = self.mapper(self.records[self._substitute(idx, attempt)])
                if out is not None:
                    return out, attempt
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
    """Infinite iterator of list[dict] batches from iteration `start_iter` on; every sample a pure function of
    (seed, position) (data/samplers.py), so a resumed run repeats an uninterrupted one bit for bit, with or without
    DataLoader workers. `batch_size` is per rank. `repeat_factors`: repeat-factor sampling; `orientation` (one 0/1
    per record, `record_orientations`): aspect-ratio grouping. `num_skipped` counts bad records replaced so far."""

    def __init__(self, records, mapper: Callable, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, on_bad_sample: str = "error", shuffle: bool = True,
                 repeat_factors=None, orientation=None):
        self.sampler = ResumableBatchSampler(len(records), batch_size, seed, start_iter, rank, world_size, shuffle,
                                             repeat_factors, orientation)
        self.dataset = _PositionDataset(records, mapper, seed, on_bad_sample, orientation=orientation)
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


def build_detection_train_loader(cfg, mapper=None, dataset=None, *, seed: int | None = None,
                                 start_iter: int = 0) -> ResumableTrainLoader:
    """The training loader of `cfg`: batches of SOLVER.IMS_PER_BATCH // world size dicts, from iteration
    `start_iter` on (see `ResumableTrainLoader`). DATASETS.TRAIN (or `dataset`, a list of dataset dicts),
    DatasetMapper (or `mapper`), DATALOADER.SAMPLER_TRAIN / REPEAT_THRESHOLD / ASPECT_RATIO_GROUPING /
    FILTER_EMPTY_ANNOTATIONS / ON_BAD_SAMPLE / NUM_WORKERS. `seed`: the data seed (default SEED; with SEED -1 a
    random seed shared by the ranks)."""
    world, rank = comm.get_world_size(), comm.get_rank()
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total <= 0 or total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the world size ({world})")
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name not in ("TrainingSampler", "RepeatFactorTrainingSampler"):
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN={name!r} is not one of 'TrainingSampler', "
                         "'RepeatFactorTrainingSampler'")
    if seed is None:
        seed = int(cfg.SEED) if int(cfg.SEED) >= 0 else comm.shared_random_seed()
    policy = cfg.DATALOADER.ON_BAD_SAMPLE
    if dataset is None:
        register_cfg_datasets(cfg)  # entries given by path, as the model needs them (no-op after validate_cfg)
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, policy)
    if mapper is None:
        mapper = DatasetMapper.from_config(cfg, is_train=True)
    rf = (repeat_factors_from_category_frequency(dataset, cfg.DATALOADER.REPEAT_THRESHOLD)
          if name == "RepeatFactorTrainingSampler" else None)
    orientation = record_orientations(dataset) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    return ResumableTrainLoader(DatasetFromList(dataset), mapper, total // world, seed, start_iter, rank, world,
                                int(cfg.DATALOADER.NUM_WORKERS), policy, repeat_factors=rf, orientation=orientation)


def build_detection_test_loader(cfg, dataset_name, mapper=None, num_workers=None):
    """Batch size 1; every image of `dataset_name` (a name or list of names) exactly once across ranks.
    Images without annotations are kept. With ON_BAD_SAMPLE='skip', an unreadable image is left out and counted."""
    policy = cfg.DATALOADER.ON_BAD_SAMPLE
    register_cfg_datasets(cfg)  # entries given by path, as the model needs them (no-op after validate_cfg)
    dicts = get_detection_dataset_dicts(dataset_name, filter_empty=False, on_bad_sample=policy)
    if mapper is None:
        mapper = DatasetMapper.from_config(cfg, is_train=False)
    ds = MapDataset(DatasetFromList(dicts), mapper, on_bad_sample=policy)
    sampler = InferenceSampler(len(ds))
    workers = int(cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers)
    return DataLoader(ds, batch_size=1, sampler=sampler, num_workers=workers, collate_fn=trivial_batch_collator,
                      worker_init_fn=_worker_init, pin_memory=torch.cuda.is_available())
