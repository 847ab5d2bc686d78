"""DDP on CPU: 2 gloo processes spawned by launch()."""
import os
import sys
import time

import pytest
import torch

from resnet_backbone.engine import launch

HERE_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE_DIR)
import _ddp_workers  # noqa: E402


def test_ddp_two_processes_params_identical_and_uneven_eval_counts_every_image_once(tmp_path):
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    n = 5
    generate_shapes_dataset(str(tmp_path / "data"), "val", n, image_size=32, seed=1)
    launch(_ddp_workers.train_then_eval_uneven, 2, args=(str(tmp_path), n))
    p0 = torch.load(tmp_path / "params_rank0.pt")
    p1 = torch.load(tmp_path / "params_rank1.pt")
    assert torch.equal(p0, p1)
    # ... and training moved them away from rank 0's initialisation
    from _tiny_model import TinyDetector

    from resnet_backbone.engine.trainer import _MODEL_TAG
    from resnet_backbone.utils.seed import derive_seed, seed_all_rng

    seed_all_rng(derive_seed(7, _MODEL_TAG, 0))
    init = torch.cat([p.detach().flatten() for p in TinyDetector().parameters()])
    assert p0.shape == init.shape and not torch.equal(p0, init)
    assert (tmp_path / "model_final.pth").exists()
    # evaluation: 5 images on 2 ranks (3 + 2), every image reported exactly once
    r0 = torch.load(tmp_path / "eval_rank0.pt")
    r1 = torch.load(tmp_path / "eval_rank1.pt")
    assert sorted((r0["local"], r1["local"])) == [2, 3]  # uneven shards
    assert sorted(r0["ids"]) == sorted(r1["ids"])
    assert len(r0["ids"]) == n and len(set(r0["ids"])) == n


def test_a_dying_rank_fails_the_launch_instead_of_hanging(tmp_path):
    t0 = time.time()
    with pytest.raises(Exception, match="rank 1 dies on purpose|by peer"):
        launch(_ddp_workers.die_on_rank1, 2, args=(str(tmp_path),))
    assert time.time() - t0 < 120


@pytest.mark.slow
def test_train_net_under_torchrun_two_processes(tmp_path):
    """tools/train_net.py launched by torchrun (env://, gloo): both ranks train, rank 0 writes the outputs."""
    import subprocess

    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    root = os.path.dirname(os.path.dirname(HERE_DIR))
    generate_shapes_dataset(str(tmp_path / "ds" / "synthetic_shapes"), "train", 4, image_size=64, seed=0)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""_BASE_: "{root}/configs/Base-RCNN-FPN.yaml"
MODEL:
  RESNETS: {{DEPTH: 18, RES2_OUT_CHANNELS: 64, NORM: "BN"}}
  FPN: {{OUT_CHANNELS: 32}}
  ROI_BOX_HEAD: {{FC_DIM: 64}}
  RPN: {{PRE_NMS_TOPK_TRAIN: 100, POST_NMS_TOPK_TRAIN: 50}}
  ROI_HEADS: {{NUM_CLASSES: 3}}
INPUT: {{MIN_SIZE_TRAIN: [64], MAX_SIZE_TRAIN: 64}}
DATASETS: {{TRAIN: ["synthetic_shapes_train"], TEST: []}}
DATALOADER: {{NUM_WORKERS: 0}}
SOLVER: {{IMS_PER_BATCH: 2, MAX_ITER: 2, CHECKPOINT_PERIOD: 100}}
SEED: 1
""")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, RB_DATASETS=str(tmp_path / "ds"), OMP_NUM_THREADS="1")
    subprocess.run([torchrun, "--nproc-per-node", "2", os.path.join(root, "tools", "train_net.py"),
                    "--config-file", str(cfg), "OUTPUT_DIR", str(tmp_path / "out")], check=True, env=env,
                   timeout=600, capture_output=True)
    assert "Rank 0 of world size 2" in (tmp_path / "out" / "log.txt").read_text()
    assert "Rank 1 of world size 2" in (tmp_path / "out" / "log.txt.rank1").read_text()
    assert (tmp_path / "out" / "model_final.pth").exists()
