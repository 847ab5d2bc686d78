"""inference_on_dataset: eval mode + inference mode, empty batches, evaluator merging, and a 2-process gloo run
in which every image is counted exactly once."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from resnet_backbone.evaluation import DatasetEvaluator, DatasetEvaluators, inference_on_dataset


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.seen_training = []
        self.seen_inference = []

    def forward(self, inputs):
        self.seen_training.append(self.training)
        self.seen_inference.append(torch.is_inference_mode_enabled())
        return [{"id": x["image_id"]} for x in inputs]


class _Count(DatasetEvaluator):
    def __init__(self, key):
        self.key = key

    def reset(self):
        self.ids = []

    def process(self, inputs, outputs):
        self.ids += [o["id"] for o in outputs]

    def evaluate(self):
        return {self.key: {"n": len(self.ids), "ids": sorted(self.ids)}}


def test_runs_in_eval_and_inference_mode_and_restores_training():
    model = _Model().train()
    loader = [[{"image_id": 1}], [], [{"image_id": 2}, {"image_id": 3}]]  # [] = a skipped bad sample
    res = inference_on_dataset(model, loader, DatasetEvaluators([_Count("a"), _Count("b")]), show_progress=False)
    assert res["a"]["ids"] == [1, 2, 3] and res["b"]["n"] == 3
    assert model.seen_training == [False, False] and all(model.seen_inference)
    assert model.training  # restored


def test_duplicate_result_keys_rejected():
    with pytest.raises(KeyError, match="'a'"):
        inference_on_dataset(_Model(), [[{"image_id": 1}]], DatasetEvaluators([_Count("a"), _Count("a")]),
                             show_progress=False)


def test_no_evaluator_returns_empty_dict():
    assert inference_on_dataset(_Model(), [[{"image_id": 1}]], None, show_progress=False) == {}


def _worker(rank, world, init_file, json_file, image_root, out_file):
    import torch.distributed as dist

    from resnet_backbone.data import register_coco_instances
    from resnet_backbone.data.build import DatasetFromList, trivial_batch_collator
    from resnet_backbone.data.samplers import InferenceSampler
    from resnet_backbone.evaluation import COCOEvaluator
    from resnet_backbone.utils import comm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        assert (comm.get_rank(), comm.get_world_size(), comm.is_main_process()) == (rank, world, rank == 0)
        assert comm.all_gather({"r": rank}) == [{"r": 0}, {"r": 1}]
        assert comm.gather(rank * 10) == ([0, 10] if rank == 0 else [])
        import numpy as np

        np.random.seed(rank)  # different local draws, one shared seed
        assert len(set(comm.all_gather(comm.shared_random_seed()))) == 1
        comm.synchronize()
        register_coco_instances("test_evaluator_dist", {}, json_file, image_root)
        from resnet_backbone.data import DatasetCatalog

        dicts = DatasetCatalog.get("test_evaluator_dist")
        ds = DatasetFromList([{"image_id": d["image_id"], "annotations": d["annotations"]} for d in dicts])
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=InferenceSampler(len(ds)),
                                             collate_fn=trivial_batch_collator)

        class GTModel(torch.nn.Module):  # predicts the ground truth of every image
            def forward(self, inputs):
                outs = []
                for x in inputs:
                    b = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                       a["bbox"][1] + a["bbox"][3]] for a in x["annotations"]]).reshape(-1, 4)
                    outs.append({"boxes": b, "scores": torch.ones(len(b)),
                                 "labels": torch.tensor([a["category_id"] for a in x["annotations"]])})
                # rank 1 drops its last image's predictions: if ranks were not gathered, AP would still be 100
                if dist.get_rank() == 1 and x is inputs[-1]:
                    outs[-1] = {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0),
                                "labels": torch.zeros(0, dtype=torch.int64)}
                return outs

        ev = COCOEvaluator("test_evaluator_dist", distributed=True)
        res = inference_on_dataset(GTModel(), loader, ev, show_progress=False)
        if rank == 0:
            torch.save({"res": res, "n": len(ev._predictions)}, out_file)
        else:
            assert res == {}
    finally:
        dist.destroy_process_group()


def test_distributed_gathers_every_image_once(tmp_path):
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    json_file = generate_shapes_dataset(tmp_path, "val", 5, image_size=64, seed=5)
    out_file = str(tmp_path / "res.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), json_file, str(tmp_path / "val"), out_file), nprocs=2,
             join=True)
    got = torch.load(out_file, weights_only=False)
    assert got["n"] == 3  # rank 0's shard of 5 images (3 + 2)
    ap = got["res"]["bbox"]["AP"]
    assert 0 < ap < 100  # rank 1's missing detections were counted: every image is in the evaluation
    assert os.path.exists(json_file)
