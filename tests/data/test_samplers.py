"""Sampler shards: disjoint and complete across simulated ranks; aspect-ratio grouping."""
import itertools
import math

import pytest
import torch

from resnet_backbone.data.samplers import (
    AspectRatioGroupedDataset,
    InferenceSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)


@pytest.mark.parametrize("size,world", [(12, 3), (10, 2), (7, 1)])
def test_training_sampler_shards_disjoint_and_complete(size, world):
    epochs = 3
    per_rank = [list(itertools.islice(iter(TrainingSampler(size, seed=5, rank=r, world_size=world)),
                                      epochs * size // world)) for r in range(world)]
    for e in range(epochs):  # each pass over the data: ranks disjoint, union = everything
        chunk = [p[e * size // world:(e + 1) * size // world] for p in per_rank]
        flat = [i for c in chunk for i in c]
        assert sorted(flat) == list(range(size))
    # shuffled, different each pass, reproducible with the seed
    first = list(itertools.islice(iter(TrainingSampler(size, seed=5, rank=0, world_size=1)), 2 * size))
    assert first[:size] != list(range(size)) and first[:size] != first[size:]
    assert first == list(itertools.islice(iter(TrainingSampler(size, seed=5, rank=0, world_size=1)), 2 * size))
    assert first != list(itertools.islice(iter(TrainingSampler(size, seed=6, rank=0, world_size=1)), 2 * size))


def test_training_sampler_is_infinite_and_unshuffled_option():
    it = iter(TrainingSampler(3, shuffle=False, seed=0, rank=0, world_size=1))
    assert list(itertools.islice(it, 7)) == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError):
        TrainingSampler(0, seed=0)
    with pytest.raises(ValueError):
        TrainingSampler(3, seed=0, rank=2, world_size=2)


@pytest.mark.parametrize("size,world", [(10, 3), (2, 4), (9, 1), (0, 2), (101, 8)])
def test_inference_sampler_every_index_once(size, world):
    shards = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(size))
    lens = [len(s) for s in shards]
    assert max(lens) - min(lens) <= 1
    assert [len(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)] == lens


def test_aspect_ratio_grouping():
    shapes = [(10, 20), (20, 10), (10, 20), (20, 10), (10, 30), (30, 10), (10, 10)]
    stream = [{"image": torch.zeros(3, h, w), "i": i} for i, (h, w) in enumerate(shapes)]
    batches = list(AspectRatioGroupedDataset(stream, 2))
    assert [[d["i"] for d in b] for b in batches] == [[0, 2], [1, 3], [4, 6]]
    for b in batches:
        kinds = {d["image"].shape[2] >= d["image"].shape[1] for d in b}
        assert len(kinds) == 1


def test_repeat_factor_sampler_oversamples_rare_classes():
    # class 0 in 9 images, class 1 (rare) in 1 image
    dicts = [{"annotations": [{"category_id": 0}]} for _ in range(9)] + [{"annotations": [{"category_id": 1}]}]
    rf = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5)
    assert rf[:9].tolist() == [1.0] * 9 and rf[9].item() == pytest.approx(math.sqrt(0.5 / 0.1))
    n = 4000
    idx = list(itertools.islice(iter(RepeatFactorTrainingSampler(rf, seed=0, rank=0, world_size=1)), n))
    share = idx.count(9) / n
    expected = rf[9].item() / rf.sum().item()
    assert share == pytest.approx(expected, rel=0.15)
    shards = [list(itertools.islice(iter(RepeatFactorTrainingSampler(rf, seed=0, rank=r, world_size=2)), n // 2))
              for r in range(2)]
    merged = [i for pair in zip(*shards) for i in pair]
    assert merged == idx  # ranks take alternating positions of one shared stream
    with pytest.raises(ValueError):
        RepeatFactorTrainingSampler([], seed=0)
    with pytest.raises(ValueError, match="all 0"):  # would otherwise loop forever drawing empty passes
        RepeatFactorTrainingSampler([0.0, 0.0], seed=0)
    with pytest.raises(ValueError, match="rank 2"):
        RepeatFactorTrainingSampler(rf, seed=0, rank=2, world_size=2)
