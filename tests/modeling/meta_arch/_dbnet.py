"""Shared by the DBNet / DBNet++ tests: a tiny config, an input with known polygons, the overfit loop."""
import numpy as np
import torch

from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.meta_arch import build_model
from resnet_backbone.structures import Instances


def tiny_cfg(asf: bool = False):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "DBNet"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.DBNET.INNER_CHANNELS = 8
    cfg.MODEL.DBNET.ASF = asf
    return cfg


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


def text_input(h=64, w=96, ignore=(False, True)):
    polys = [rect(8, 8, 60, 28), rect(10, 40, 50, 56)][: len(ignore)]
    inst = Instances((h, w), gt_polygons=polys, gt_ignore=torch.tensor(ignore))
    return {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8), "instances": inst,
            "height": h * 2, "width": w * 2, "file_name": "word.png", "image_id": 3}


def overfit_text(tmp_path, name: str, target: float, asf: bool = False, max_iter: int = 300) -> list:
    """Train a tiny DBNet (DBNet++ with `asf`) from scratch on 4 synthetic 128 px text images (14 words) until the
    hmean on them reaches `target` (checked every 25 iterations from 100 on); returns [(iteration, hmean)]."""
    from resnet_backbone.data.catalog import DatasetCatalog, MetadataCatalog
    from resnet_backbone.data.dataset_mapper import DatasetMapper
    from resnet_backbone.data.synthetic.text import generate_text_dataset
    from resnet_backbone.data.text import register_text_instances
    from resnet_backbone.evaluation.text_evaluation import TextEvaluator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machines here are shared: one thread is faster than two fighting
    json_path = generate_text_dataset(tmp_path, "overfit", 4, image_size=128, seed=1, words_per_image=(2, 4),
                                      kinds=("scene",))
    register_text_instances(name, json_path, tmp_path / "overfit")
    try:
        records = DatasetCatalog.get(name)
        mapper = DatasetMapper(None, True, augmentations=[], image_format="BGR")
        inputs = [mapper(r) for r in records]
        cfg = tiny_cfg(asf)
        cfg.MODEL.FPN.OUT_CHANNELS = 64
        cfg.MODEL.DBNET.INNER_CHANNELS = 16
        cfg.MODEL.DBNET.MIN_TEXT_SIZE = 4.0
        cfg.MODEL.PIXEL_STD = [57.4, 57.1, 58.4]
        torch.manual_seed(0)
        model = build_model(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        evaluator = TextEvaluator(name)
        history = []
        for it in range(1, max_iter + 1):
            model.train()
            losses = model(inputs)
            assert all(torch.isfinite(v) for v in losses.values()), (it, losses)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            if it >= 100 and it % 25 == 0:
                model.eval()
                evaluator.reset()
                with torch.no_grad():
                    evaluator.process(inputs, model(inputs))
                hmean = evaluator.evaluate()["text"]["hmean"]
                history.append((it, round(hmean, 3)))
                print(f"overfit ({name}): iteration {it} hmean {hmean:.3f}", flush=True)
                if hmean >= target:
                    break
        print(f"overfit ({name}) (iteration, hmean):", history)
        return history
    finally:
        torch.set_num_threads(threads)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
