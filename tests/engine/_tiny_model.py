"""A tiny stand-in detector and in-memory data for engine tests (imported by tests/engine/test_*.py and the
spawned DDP workers)."""
import numpy as np
import torch
from torch import nn

from resnet_backbone.config import get_cfg
from resnet_backbone.data.build import ResumableTrainLoader
from resnet_backbone.engine import Trainer


class TinyDetector(nn.Module):
    """'backbone' conv + head; two named losses; dropout (uses the torch RNG); NaN switches for tests."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.drop = nn.Dropout(0.3)
        self.zero = nn.Parameter(torch.zeros(()))
        self.seen_dtypes = []

    def forward(self, batched_inputs):
        x = torch.stack([d["image"].float() for d in batched_inputs]) / 255.0
        f = self.backbone(x).mean(dim=(2, 3))
        self.seen_dtypes.append(f.dtype)
        out = self.head(self.drop(f))
        if not self.training:
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                    for _ in batched_inputs]
        tgt = torch.stack([d["target"] for d in batched_inputs])
        loss_a = (out[:, 0] - tgt).float().square().mean()
        loss_b = out[:, 1].float().abs().mean() * 0.1
        if any(d.get("poison_loss") for d in batched_inputs):
            loss_b = loss_b * float("nan")
        if any(d.get("poison_grad") for d in batched_inputs):
            loss_a = loss_a + 0.0 * torch.sqrt(self.zero)  # finite value, NaN gradient
        else:
            loss_a = loss_a + 0.0 * self.zero
        return {"loss_a": loss_a, "loss_b": loss_b}


def make_records(n=12):
    return [{"image_id": i, "file_name": f"mem_{i}.png", "height": 8, "width": 8} for i in range(n)]


def tiny_mapper(record):
    """Deterministic image per record + random augmentation (numpy RNG), like a real mapper."""
    rng = np.random.RandomState(record["image_id"])
    img = rng.randint(0, 255, (3, 8, 8)).astype(np.uint8)
    if np.random.rand() < 0.5:
        img = img[:, :, ::-1]
    out = dict(record)
    out["image"] = torch.from_numpy(np.ascontiguousarray(img))
    out["target"] = torch.tensor(float(record["image_id"] % 3))
    return out


class TinyTrainer(Trainer):
    """Trainer with the stand-in model and in-memory records; `poison` = {iteration: key} marks batches."""

    poison: dict = {}

    @classmethod
    def build_model(cls, cfg):
        return TinyDetector()

    def build_train_loader(self, cfg, start_iter):
        from resnet_backbone.utils import comm

        loader = ResumableTrainLoader(make_records(), tiny_mapper, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
                                      self.seed, start_iter, comm.get_rank(), comm.get_world_size())
        poison = dict(self.poison)

        class _Poisoned:
            num_skipped = 0

            def __iter__(self):
                for it, batch in enumerate(loader, start=start_iter):
                    if it in poison:
                        batch = [dict(d, **{poison[it]: True}) for d in batch]
                    yield batch

        return _Poisoned()


def tiny_cfg(output_dir, max_iter=6, **overrides):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = 7
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.STEPS = (4,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.LOG_PERIOD = 1
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, v)
    return cfg


def run_trainer(cfg, resume=False, cls=TinyTrainer):
    """Build a trainer, resume or load, train to MAX_ITER; the trainer is returned for inspection."""
    t = cls(cfg)
    t.resume_or_load(resume=resume)
    t.train()
    return t
