"""Data loaders: dataset dicts from the catalog -> mapped, batched model inputs (list[dict])."""
from __future__ import annotations

import itertools
import logging
import pickle
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..utils import comm
from .builtin import register_cfg_datasets
from .catalog import DatasetCatalog
from .dataset_mapper import DatasetMapper
from .errors import DatasetError, bad_sample_policy, count_bad_sample
from .samplers import AspectRatioGroupedDataset, InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler

__all__ = ["get_detection_dataset_dicts", "build_detection_train_loader", "build_detection_test_loader",
           "DatasetFromList", "MapDataset", "trivial_batch_collator"]

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
    """`map_func(dataset[i])`. A `DatasetError` raises (policy "error"), or is counted and, in training
    (`retry=True`), replaced by another random sample; without retry the item becomes None (dropped by the
    collator), so evaluation never counts an image twice."""

    def __init__(self, dataset, map_func, on_bad_sample: str = "error", retry: bool = True, max_retries: int = 100):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"DATALOADER.ON_BAD_SAMPLE must be 'error' or 'skip', got {on_bad_sample!r}")
        self.dataset, self.map_func = dataset, map_func
        self.on_bad_sample, self.retry, self.max_retries = on_bad_sample, retry, max_retries
        self._rng = random.Random(42)
        self.num_skipped = 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        for _ in range(self.max_retries):
            try:
                return self.map_func(self.dataset[idx])
            except DatasetError as e:
                if self.on_bad_sample != "skip":
                    raise
                self.num_skipped += 1
                count_bad_sample(e, "mapper")
                if not self.retry:
                    return None
                idx = self._rng.randrange(len(self.dataset))
        raise DatasetError(f"{self.max_retries} bad samples in a row; giving up", record=f"index {idx}",
                           field="dataset")


class _SampledIterable(IterableDataset):
    """Iterate `dataset[i]` for i from `sampler`, each DataLoader worker taking its own share of the indices."""

    def __init__(self, dataset, sampler):
        self.dataset, self.sampler = dataset, sampler

    def __iter__(self):
        info = get_worker_info()
        it = iter(self.sampler)
        if info is not None and info.num_workers > 1:
            it = itertools.islice(it, info.id, None, info.num_workers)
        for i in it:
            item = self.dataset[i]
            if item is not None:
                yield item


def trivial_batch_collator(batch):
    """A batch is the list of its dicts (None entries, i.e. skipped samples, dropped)."""
    return [b for b in batch if b is not None]


def _first(batch):
    return batch[0]


def _worker_init(worker_id):
    # numpy's global RNG (used by the augmentations) is not reseeded by torch in workers
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _GroupedLoader:
    """DataLoader of single samples + aspect-ratio grouping in the main process; iterable, infinite."""

    def __init__(self, loader, batch_size):
        self.loader, self.batch_size = loader, batch_size

    def __iter__(self):
        return iter(AspectRatioGroupedDataset(self.loader, self.batch_size))


def build_detection_train_loader(cfg, mapper=None, dataset=None, sampler=None):
    """An infinite iterator of training batches (list[dict] of length SOLVER.IMS_PER_BATCH // world size)."""
    world = comm.get_world_size()
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total <= 0 or total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the world size ({world})")
    batch = total // world
    policy = cfg.DATALOADER.ON_BAD_SAMPLE
    if dataset is None:
        register_cfg_datasets(cfg)  # entries given by path, as the model needs them (no-op after validate_cfg)
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, policy)
    if mapper is None:
        mapper = DatasetMapper.from_config(cfg, is_train=True)
    ds = MapDataset(DatasetFromList(dataset), mapper, on_bad_sample=policy, retry=True)
    if sampler is None:
        seed = cfg.SEED if cfg.SEED >= 0 else None
        name = cfg.DATALOADER.SAMPLER_TRAIN
        if name == "TrainingSampler":
            sampler = TrainingSampler(len(ds), seed=seed)
        elif name == "RepeatFactorTrainingSampler":
            rf = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dataset, cfg.DATALOADER.REPEAT_THRESHOLD)
            sampler = RepeatFactorTrainingSampler(rf, seed=seed)
        else:
            raise ValueError(f"DATALOADER.SAMPLER_TRAIN={name!r} is not one of 'TrainingSampler', "
                             "'RepeatFactorTrainingSampler'")
    it = _SampledIterable(ds, sampler)
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    pin = torch.cuda.is_available()
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        loader = DataLoader(it, batch_size=1, num_workers=workers, collate_fn=_first, worker_init_fn=_worker_init,
                            pin_memory=pin)
        return _GroupedLoader(loader, batch)
    return DataLoader(it, batch_size=batch, drop_last=True, num_workers=workers, collate_fn=trivial_batch_collator,
                      worker_init_fn=_worker_init, pin_memory=pin)


def build_detection_test_loader(cfg, dataset_name, mapper=None, num_workers=None):
    """Batch size 1; every image of `dataset_name` (a name or list of names) exactly once across ranks.
    Images without annotations are kept. With ON_BAD_SAMPLE='skip', an unreadable image is left out and counted."""
    policy = cfg.DATALOADER.ON_BAD_SAMPLE
    register_cfg_datasets(cfg)  # entries given by path, as the model needs them (no-op after validate_cfg)
    dicts = get_detection_dataset_dicts(dataset_name, filter_empty=False, on_bad_sample=policy)
    if mapper is None:
        mapper = DatasetMapper.from_config(cfg, is_train=False)
    ds = MapDataset(DatasetFromList(dicts), mapper, on_bad_sample=policy, retry=False)
    sampler = InferenceSampler(len(ds))
    workers = int(cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers)
    return DataLoader(ds, batch_size=1, sampler=sampler, num_workers=workers, collate_fn=trivial_batch_collator,
                      worker_init_fn=_worker_init, pin_memory=torch.cuda.is_available())
