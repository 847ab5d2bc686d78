"""data/samplers.py: the training stream (uniform and repeat-factor epochs), repeat factors, the inference sampler.
Batching, grouping and resume are tested through the loader in test_train_loader.py."""
import math

import numpy as np
import pytest
import torch

from resnet_backbone.data.samplers import InferenceSampler, TrainingStream, repeat_factors_from_category_frequency


def test_uniform_stream_every_record_once_per_epoch_and_seeded():
    s = TrainingStream(10, seed=5)
    epochs = [[s.index(q) for q in range(e * 10, e * 10 + 10)] for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != list(range(10))
    assert [TrainingStream(10, seed=5).index(q) for q in range(30)] == sum(epochs, [])
    assert [TrainingStream(10, seed=6).index(q) for q in range(30)] != sum(epochs, [])
    assert [TrainingStream(3, seed=0, shuffle=False).index(q) for q in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError, match="empty"):
        TrainingStream(0, seed=0)


def test_repeat_factor_frequencies_converge_to_the_factors():
    rf = torch.tensor([1.0, 1.0, 2.5, 0.3, 4.0, 1.7], dtype=torch.float64)
    s = TrainingStream(seed=0, repeat_factors=rf)
    epochs = 3000
    counts = np.zeros(len(rf))
    for e in range(epochs):
        idx = s.epoch_indices(e)
        counts += np.bincount(idx, minlength=len(rf))
        assert s.epoch_start(e + 1) - s.epoch_start(e) == len(idx)
    # per-epoch count is floor(r) + Bernoulli(frac(r)): std of the mean <= 0.5 / sqrt(3000) ~ 0.009; floor or ceil
    # rounding, or drawing once for all epochs, is off by >= 0.3 for some image
    np.testing.assert_allclose(counts / epochs, rf.numpy(), atol=0.04)


def test_repeat_factor_positions_map_through_cumulative_epoch_lengths():
    rf = [1.0, 2.3, 0.5, 3.0]
    s = TrainingStream(4, seed=2, repeat_factors=rf)
    flat = np.concatenate([s.epoch_indices(e) for e in range(50)])
    assert [s.index(q) for q in range(len(flat))] == flat.tolist()
    late = TrainingStream(4, seed=2, repeat_factors=rf)  # straight to a far position, nothing before it read
    assert late.index(len(flat) - 1) == flat[-1]
    assert late.locate(int(s.epoch_start(17))) == (17, 0)
    assert not np.array_equal(s.epoch_indices(0), s.epoch_indices(1))  # rounding and order drawn per epoch
    with pytest.raises(ValueError):
        TrainingStream(seed=0, repeat_factors=[])
    with pytest.raises(ValueError, match="all 0"):  # would otherwise loop forever drawing empty epochs
        TrainingStream(seed=0, repeat_factors=[0.0, 0.0])
    with pytest.raises(ValueError, match="3 repeat factors for 4"):
        TrainingStream(4, seed=0, repeat_factors=[1, 1, 1])


def _dicts():
    # class 0 in 9 images, class 1 (rare) in 1 image together with class 0, class 2 in 2, one image without any
    d = [{"annotations": [{"category_id": 0}]} for _ in range(8)]
    d += [{"annotations": [{"category_id": 0}, {"category_id": 1}]}, {"annotations": [{"category_id": 2}]},
          {"annotations": [{"category_id": 2}, {"category_id": 2}]}, {"annotations": []}]
    return d


def test_repeat_factors_from_category_frequency():
    rf = repeat_factors_from_category_frequency(_dicts(), 0.5)
    n = 12
    assert rf[:8].tolist() == [1.0] * 8
    assert rf[8].item() == pytest.approx(math.sqrt(0.5 / (1 / n)))  # the max over its categories
    assert rf[9].item() == rf[10].item() == pytest.approx(math.sqrt(0.5 / (2 / n)))
    assert rf[11].item() == 1.0


def test_repeat_factors_match_detectron2():
    d2 = pytest.importorskip("detectron2.data.samplers", reason="detectron2 is not importable (see /tmp/d2)")
    dicts = _dicts()[:-1]  # detectron2 takes the max over an empty list of categories: an error there
    for t in (0.01, 0.3, 0.9):
        theirs = d2.RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, t)
        torch.testing.assert_close(repeat_factors_from_category_frequency(dicts, t), theirs.double())


@pytest.mark.parametrize("size,world", [(10, 3), (2, 4), (9, 1), (0, 2), (101, 8)])
def test_inference_sampler_every_index_once(size, world):
    shards = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(size))
    lens = [len(s) for s in shards]
    assert max(lens) - min(lens) <= 1
    assert [len(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)] == lens
    with pytest.raises(ValueError, match="rank"):
        InferenceSampler(size, rank=world, world_size=world)
