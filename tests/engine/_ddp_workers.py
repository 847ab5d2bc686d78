"""Functions run inside spawned processes by tests/engine/test_launch.py (must be importable by name)."""
import os
import time

import torch
import torch.distributed as dist


def train_tiny(out_dir):
    from _tiny_model import TinyTrainer, tiny_cfg

    from resnet_backbone.utils import comm

    cfg = tiny_cfg(out_dir, max_iter=4)
    t = TinyTrainer(cfg)
    t.resume_or_load(resume=False)
    t.train()
    flat = torch.cat([p.detach().flatten() for p in t.unwrapped_model.parameters()])
    torch.save(flat, os.path.join(out_dir, f"params_rank{comm.get_rank()}.pt"))
    assert isinstance(t.model, torch.nn.parallel.DistributedDataParallel)


def eval_uneven(out_dir, n_images):
    from resnet_backbone.data import build_detection_test_loader
    from resnet_backbone.evaluation import DatasetEvaluator, inference_on_dataset
    from resnet_backbone.utils import comm

    class Counting(DatasetEvaluator):
        def reset(self):
            self.ids = []

        def process(self, inputs, outputs):
            self.ids += [d["image_id"] for d in inputs]

        def evaluate(self):
            all_ids = [i for part in comm.all_gather(self.ids) for i in part]
            return {"count": {"ids": all_ids, "local": len(self.ids)}}

    from _tiny_model import tiny_cfg

    from resnet_backbone.data import DatasetCatalog, MetadataCatalog

    cfg = tiny_cfg(out_dir)
    cfg.DATASETS.TEST = ("shapes_uneven",)
    cfg.INPUT.MIN_SIZE_TEST = 32
    cfg.INPUT.MAX_SIZE_TEST = 32
    if "shapes_uneven" not in DatasetCatalog.list():
        from resnet_backbone.data import register_coco_instances

        register_coco_instances("shapes_uneven", {}, os.path.join(out_dir, "data", "val.json"),
                                os.path.join(out_dir, "data", "val"))
    MetadataCatalog.get("shapes_uneven")
    from _tiny_model import TinyDetector

    model = TinyDetector()
    loader = build_detection_test_loader(cfg, "shapes_uneven", num_workers=0)
    res = inference_on_dataset(model, loader, Counting())
    torch.save({"ids": res["count"]["ids"], "local": res["count"]["local"]},
               os.path.join(out_dir, f"eval_rank{comm.get_rank()}.pt"))


def train_then_eval_uneven(out_dir, n_images):
    train_tiny(out_dir)
    eval_uneven(out_dir, n_images)


def die_on_rank1(out_dir):
    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 dies on purpose")
    dist.barrier()  # rank 0 would wait here forever without the launcher tearing the group down
    time.sleep(600)
