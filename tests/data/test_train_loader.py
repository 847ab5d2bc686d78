import numpy as np
import pytest
import torch

from resnet_backbone.data.build import ResumableTrainLoader
from resnet_backbone.data.errors import DatasetError
from resnet_backbone.data.samplers import ResumableBatchSampler


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


# ---------------------------------------------------------------------------- one loader: stream, grouping, repeats
_DATA_TAG = 0x5EED_DA7A  # the tag of today's documented formula (perm_(seed, epoch))


def _formula_record(seed, n, p):
    """Today's documented stream: epoch = p // n, record = perm_(seed, epoch)[p % n]."""
    from resnet_backbone.utils.seed import derive_seed

    g = torch.Generator()
    g.manual_seed(derive_seed(seed, p // n, _DATA_TAG))
    return int(torch.randperm(n, generator=g)[p % n])


def _rng_mapper(record):
    return {"id": record["id"], "np": float(np.random.rand()), "t": float(torch.rand(()))}


def test_ungrouped_stream_is_todays_formula_for_every_rank_split():
    from resnet_backbone.utils.seed import derive_seed, seed_all_rng

    n, seed, B, W = 7, 11, 3, 2
    # pinned from the previous engine/train_loader.py (HEAD bc9a1cf): rank 0 and rank 1, iterations 0..3
    pinned = {0: [[3, 1, 4], [6, 4, 5], [2, 6, 0], [2, 1, 5]], 1: [[5, 2, 0], [0, 3, 1], [6, 3, 4], [3, 6, 0]]}
    recs = [{"id": i} for i in range(n)]
    for r in range(W):
        got = _take(iter(ResumableTrainLoader(recs, _rng_mapper, B, seed=seed, rank=r, world_size=W)), 4)
        assert [[d["id"] for d in b] for b in got] == pinned[r]
        for it, batch in enumerate(got):
            for j, d in enumerate(batch):
                p = (it * W + r) * B + j
                assert d["id"] == _formula_record(seed, n, p)
                seed_all_rng(derive_seed(seed, p, 0))  # the mapper RNG of position p, attempt 0
                assert (d["np"], d["t"]) == (float(np.random.rand()), float(torch.rand(())))


def test_builder_with_grouping_off_is_todays_stream(tmp_path):
    from resnet_backbone.config import get_cfg
    from resnet_backbone.data.build import build_detection_train_loader

    cfg = get_cfg()
    cfg.SEED, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 4, 3, 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    recs = [{"id": i, "width": 10 + 5 * (i % 2), "height": 12} for i in range(5)]
    got = _take(iter(build_detection_train_loader(cfg, mapper=_rng_mapper, dataset=recs)), 6)
    assert [d["id"] for b in got for d in b] == [_formula_record(4, 5, p) for p in range(18)]
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = True
    grouped = _take(iter(build_detection_train_loader(cfg, mapper=_rng_mapper, dataset=recs)), 6)
    assert [[d["id"] for d in b] for b in grouped] != [[d["id"] for d in b] for b in got]
    assert all(len({d["id"] % 2 for d in b}) == 1 for b in grouped)  # odd ids are the landscape images


def _mixed(n=13):
    """Records of both orientations and squares (with the portraits, as in detectron2), with categories for
    repeat factors."""
    sizes = [(40, 30), (30, 40), (32, 32)]
    return [{"id": i, "width": sizes[i % 3][0], "height": sizes[i % 3][1],
             "annotations": [{"category_id": 0 if i % 4 else 1}]} for i in range(n)]


def _orient(recs):
    from resnet_backbone.data.samplers import record_orientations

    return record_orientations(recs)


@pytest.mark.parametrize("repeat", [False, True])
def test_resume_at_any_iteration_equals_uninterrupted_grouped(repeat):
    from resnet_backbone.data.samplers import repeat_factors_from_category_frequency

    recs = _mixed()
    rf = repeat_factors_from_category_frequency(recs, 0.6) if repeat else None
    kw = dict(repeat_factors=rf, orientation=_orient(recs))
    full = _take(iter(ResumableTrainLoader(recs, _rng_mapper, 2, seed=9, world_size=2, rank=1, **kw)), 24)
    for n in (1, 5, 11, 23):
        late = _take(iter(ResumableTrainLoader(recs, _rng_mapper, 2, seed=9, start_iter=n, world_size=2, rank=1,
                                               **kw)), 24 - n)
        assert late == full[n:], n
    # DataLoader workers map the same samples
    workers = _take(iter(ResumableTrainLoader(recs, _rng_mapper, 2, seed=9, start_iter=5, world_size=2, rank=1,
                                              num_workers=2, **kw)), 6)
    assert workers == full[5:11]


def _naive_grouping(stream, orient, G, k):
    """The greedy bucketing walk itself (detectron2's AspectRatioGroupedDataset loop over positions)."""
    buckets, out, q = ([], []), [], 0
    while len(out) < k:
        b = buckets[int(orient[stream.index(q)])]
        b.append(q)
        if len(b) == G:
            out.append(b[:])
            del b[:]
        q += 1
    return out


@pytest.mark.parametrize("repeat,block", [(False, None), (True, None), (True, 5)])
def test_grouped_batches_are_the_greedy_bucket_walk(repeat, block, monkeypatch):
    from resnet_backbone.data import samplers
    from resnet_backbone.data.samplers import TrainingStream, grouped_batches, repeat_factors_from_category_frequency

    if block:  # walk one epoch at a time: the buckets' leftovers carry from block to block
        monkeypatch.setattr(samplers, "_BLOCK", block)

    recs = _mixed(11)
    orient = _orient(recs)
    rf = repeat_factors_from_category_frequency(recs, 0.6) if repeat else None
    stream = TrainingStream(len(recs), seed=3, repeat_factors=rf)
    expect = _naive_grouping(stream, orient, 4, 60)
    got = grouped_batches(stream, orient, 4)
    for want in expect:
        q, r = next(got)
        assert q.tolist() == want and r.tolist() == [stream.index(p) for p in want]
        assert len(set(orient[r].tolist())) == 1  # one orientation per global batch
    late = grouped_batches(TrainingStream(len(recs), seed=3, repeat_factors=rf), orient, 4, start=37)
    assert next(late)[0].tolist() == expect[37]


def test_grouping_matches_detectron2_bucketing():
    d2_common = pytest.importorskip("detectron2.data.common", reason="detectron2 is not importable (see /tmp/d2)")
    from resnet_backbone.data.samplers import TrainingStream, grouped_batches

    recs = _mixed(15)  # squares included: both put them with the portraits
    stream = TrainingStream(len(recs), seed=5)
    d2 = iter(d2_common.AspectRatioGroupedDataset(
        ({**recs[stream.index(q)], "q": q} for q in range(10**6)), 3))
    ours = grouped_batches(stream, _orient(recs), 3)
    for _ in range(40):
        assert [d["q"] for d in next(d2)] == next(ours)[0].tolist()


def test_grouping_with_one_orientation_is_the_ungrouped_stream():
    recs = [{"id": i, "width": 20, "height": 10 + i} for i in range(7)]  # all width > height
    plain = _take(iter(ResumableTrainLoader(recs, _rng_mapper, 3, seed=2, world_size=2, rank=1)), 9)
    grouped = _take(iter(ResumableTrainLoader(recs, _rng_mapper, 3, seed=2, world_size=2, rank=1,
                                              orientation=_orient(recs))), 9)
    assert grouped == plain


@pytest.mark.parametrize("grouped", [False, True])
def test_two_ranks_disjoint_and_split_one_global_batch(grouped):
    recs = _mixed(12)
    orient = _orient(recs) if grouped else None
    ranks = [_take(iter(ResumableBatchSampler(12, 3, seed=4, rank=r, world_size=2, orientation=orient)), 8)
             for r in range(2)]
    single = _take(iter(ResumableBatchSampler(12, 6, seed=4, orientation=orient)), 8)
    positions = [p for it in range(8) for r in range(2) for p, _ in ranks[r][it]]
    assert len(set(positions)) == len(positions)  # no position read twice, within or across iterations
    for it in range(8):
        assert ranks[0][it] + ranks[1][it] == single[it]  # the ranks' slices of the same global batch
        if grouped:
            assert len({int(orient[i]) for r in range(2) for _, i in ranks[r][it]}) == 1
    if not grouped:  # 2 iterations x 2 ranks x 3 = one epoch of 12: every record once
        for e in range(4):
            assert sorted(i for it in (2 * e, 2 * e + 1) for r in range(2) for _, i in ranks[r][it]) == list(range(12))


def test_bad_sample_skip_is_deterministic_and_keeps_the_orientation():
    recs = _mixed(12)
    for r in recs:
        r["bad"] = r["id"] in (4, 5)  # a portrait (4 % 3 == 1) and a square
    orient = _orient(recs)
    runs = []
    for workers in (0, 2):
        loader = ResumableTrainLoader(recs, _mapper, 2, seed=1, num_workers=workers, on_bad_sample="skip",
                                      orientation=orient)
        runs.append((_take(iter(loader), 12), loader.num_skipped))
    assert runs[0] == runs[1] and runs[0][1] >= 2  # 12 x 2 = 2 epochs: each bad record met twice
    for batch in runs[0][0]:
        assert len(batch) == 2 and not {d["id"] for d in batch} & {4, 5}
        assert len({int(orient[d["id"]]) for d in batch}) == 1
    late = _take(iter(ResumableTrainLoader(recs, _mapper, 2, seed=1, start_iter=7, on_bad_sample="skip",
                                           orientation=orient)), 5)
    assert late == runs[0][0][7:]


def test_grouping_needs_the_record_size():
    with pytest.raises(DatasetError, match="ASPECT_RATIO_GROUPING") as ei:
        _orient([{"id": 0, "width": 3, "height": 4}, {"file_name": "b.png", "image_id": 8, "height": 4}])
    assert ei.value.file == "b.png" and "image_id=8" in str(ei.value)
