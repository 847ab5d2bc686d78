import numpy as np
import pytest
import torch

from resnet_backbone.data.errors import DatasetError
from resnet_backbone.engine.train_loader import ResumableBatchSampler, ResumableTrainLoader


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_ranks_disjoint_and_each_epoch_complete():
    n, bs, world = 10, 2, 2
    per_rank = [_take(iter(ResumableBatchSampler(n, bs, seed=5, rank=r, world_size=world)), 5) for r in range(world)]
    for it in range(5):
        a = {i for _, i in per_rank[0][it]}
        b = {i for _, i in per_rank[1][it]}
        assert not a & b  # one iteration: ranks read different records
    seen = [i for it in range(5) for r in range(world) for _, i in per_rank[r][it]]
    assert sorted(seen[:10]) == list(range(10))  # 5 iterations x 2 ranks x 2 = one full epoch


def test_start_iter_skips_without_replaying():
    full = _take(iter(ResumableBatchSampler(7, 3, seed=1)), 6)
    late = _take(iter(ResumableBatchSampler(7, 3, seed=1, start_iter=4)), 2)
    assert late == full[4:6]
    other_seed = _take(iter(ResumableBatchSampler(7, 3, seed=2)), 6)
    assert other_seed != full


def _mapper(record):
    if record.get("bad"):
        raise DatasetError("broken", file=f"img{record['id']}.png", record=record["id"], field="file_name")
    return {"id": record["id"], "aug": float(np.random.rand()), "t": float(torch.rand(()))}


def test_augmentation_rng_depends_on_position_only_and_caller_rng_untouched():
    recs = [{"id": i} for i in range(5)]
    a = _take(iter(ResumableTrainLoader(recs, _mapper, 2, seed=3)), 4)
    torch.manual_seed(0)
    np.random.seed(0)
    before = (np.random.rand(), torch.rand(()).item())
    np.random.seed(0)
    torch.manual_seed(0)
    b = _take(iter(ResumableTrainLoader(recs, _mapper, 2, seed=3, start_iter=2)), 2)
    assert b == a[2:4]
    assert (np.random.rand(), torch.rand(()).item()) == before  # the loader did not consume the caller's RNG


def test_bad_sample_error_or_skip_counted():
    recs = [{"id": i, "bad": i == 2} for i in range(4)]
    with pytest.raises(DatasetError, match="img2.png"):
        _take(iter(ResumableTrainLoader(recs, _mapper, 4, seed=0)), 1)
    loader = ResumableTrainLoader(recs, _mapper, 4, seed=0, on_bad_sample="skip")
    batch = _take(iter(loader), 1)[0]
    assert len(batch) == 4 and all(d["id"] != 2 for d in batch)
    assert loader.num_skipped == 1
