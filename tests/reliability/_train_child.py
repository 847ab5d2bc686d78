"""Training process for the crash tests (not a test module).

    python _train_child.py run  OUT_DIR MAX_ITER [--resume] [KEY VALUE ...]   # tools/train_net.py in this process
    python _train_child.py loop OUT_DIR MAX_ITER N_KILLS SEED TIME_BUDGET_S [REF_DIR|-] [KEY VALUE ...]  # fork+SIGKILL

Both drive the real tools/train_net.py main (config, default_setup, Trainer, Checkpointer, resumable loader,
DatasetMapper on the synthetic shapes dataset under $RB_DATASETS) with a tiny registered meta-architecture so a
run takes seconds. `loop` imports everything once, then for each round forks a child that runs
`train_net.main(... --resume)` and SIGKILLs it at a random moment (uniform over its lifetime so far, so kills
land in setup, in steps, in checkpoint writes and in metric writes); it stops after N_KILLS kills or the time
budget, and prints {"kills": ..., "finished_rounds": ..., "iterations_at_kill": [...], ...}. With REF_DIR it
then finishes the run (--resume, not killed) and makes an uninterrupted reference run in REF_DIR, both forked.
KEY VALUE pairs after REF_DIR ("-" for none) are config overrides for every run (e.g. MODEL_EMA.ENABLED True).
"""
import json
import os
import random
import shutil
import signal
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import torch  # noqa: E402
import train_net  # noqa: E402
from torch import nn  # noqa: E402

from resnet_backbone.modeling.meta_arch.build import META_ARCH_REGISTRY  # noqa: E402
from resnet_backbone.structures import ImageList  # noqa: E402

torch.set_num_threads(1)


@META_ARCH_REGISTRY.register()
class RelTinyDetector(nn.Module):
    """conv + BN + dropout + linear: predicts the mean gt box and the box count; two named losses."""

    def __init__(self, cfg):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 5)

    def forward(self, batched_inputs):
        images = ImageList.from_tensors([d["image"].float() / 255.0 for d in batched_inputs], 4)
        out = self.head(self.drop(self.body(images.tensor).mean(dim=(2, 3))))
        if not self.training:
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                    for _ in batched_inputs]
        tgt = []
        for d, (h, w) in zip(batched_inputs, images.image_sizes):
            b = d["instances"].gt_boxes.float() / torch.tensor([w, h, w, h], dtype=torch.float32)
            tgt.append(torch.cat([b.mean(0) if len(b) else torch.zeros(4), torch.tensor([len(b) / 4.0])]))
        tgt = torch.stack(tgt)
        return {"loss_box": nn.functional.smooth_l1_loss(out[:, :4], tgt[:, :4]),
                "loss_count": nn.functional.mse_loss(out[:, 4], tgt[:, 4])}


def argv_for(out_dir, max_iter, resume, extra=()):
    argv = ["--resume"] if resume else []
    argv += ["MODEL.META_ARCHITECTURE", "RelTinyDetector", "DATASETS.TRAIN", "('synthetic_shapes_train',)",
             "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "32",
             "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.05",
             "SOLVER.WARMUP_ITERS", "3", "SOLVER.STEPS", f"({max(1, max_iter // 2)},)", "SOLVER.CHECKPOINT_PERIOD",
             "3", "SOLVER.MAX_ITER", str(max_iter), "SEED", "11", "LOG_PERIOD", "1", "OUTPUT_DIR", out_dir,
             *extra]
    return train_net.default_argument_parser().parse_args(argv)


def last_iteration(out_dir):
    try:
        with open(os.path.join(out_dir, "last_checkpoint")) as f:
            name = f.read().strip()
    except OSError:
        return -1
    if name == "model_final.pth":
        return 10**9
    return int(name[len("model_"):-len(".pth")])


def fork_training(out_dir, max_iter, resume, extra=()):
    """Fork a child that runs train_net.main (output to /dev/null) and exits 0, or 3 on any exception."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            sys.stdout = sys.stderr = open(os.devnull, "w")
            train_net.main(argv_for(out_dir, max_iter, resume=resume, extra=extra))
        except BaseException:
            code = 3
        os._exit(code)
    return pid


def check_exit(status):
    if os.WEXITSTATUS(status) != 0:
        raise SystemExit(f"training child failed with exit code {os.WEXITSTATUS(status)}")


def loop(out_dir, max_iter, n_kills, seed, budget_s, extra=()):
    rng = random.Random(seed)
    t_start = time.time()
    kills, finished, at_kill = 0, 0, []
    life = 0.3  # kill window in seconds (grows while kills land before any new checkpoint)
    floor = 0.0  # shortest delay: set when a whole run fitted in the window before any kill landed mid-run
    target = max(4, max_iter // (2 * n_kills))  # iterations of progress wanted between kills
    while kills < n_kills and time.time() - t_start < budget_s:
        delay = rng.uniform(floor, life)
        pid = fork_training(out_dir, max_iter, resume=True, extra=extra)
        t0 = time.time()
        while time.time() - t0 < delay:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.005)
        else:
            done = 0
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            kills += 1
            reached = last_iteration(out_dir)
            if at_kill and reached <= at_kill[-1]:
                life *= 1.4  # killed before any new checkpoint: allow more time next round
            elif at_kill and reached - at_kill[-1] > target:
                # many iterations per round: kill sooner, in proportion, so that n_kills fit in the run however
                # fast training is on this machine
                life = max(0.02, life * max(0.5, target / (reached - at_kill[-1])))
            at_kill.append(reached)
        else:
            check_exit(status)
            finished += 1
            if kills < n_kills and not any(r >= 0 for r in at_kill) and time.time() - t_start < budget_s:
                # every kill so far landed in start-up and this round ran to the end (a loaded machine: start-up
                # long, the run short): start over, killing between half and 90 % of the time a whole run took
                took = time.time() - t0
                shutil.rmtree(out_dir)
                floor, life = 0.5 * took, 0.9 * took
                continue
            break  # training reached MAX_ITER before the next kill
    return {"kills": kills, "finished_rounds": finished, "iterations_at_kill": at_kill,
            "seconds": round(time.time() - t_start, 2)}


def run_forked(out_dir, max_iter, resume, extra=()):
    """One uninterrupted train_net.main in a forked child (same isolation as the killed ones)."""
    _, status = os.waitpid(fork_training(out_dir, max_iter, resume, extra), 0)
    check_exit(status)


if __name__ == "__main__":
    mode, out_dir, max_iter = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "run":
        rest = sys.argv[4:]
        resume = "--resume" in rest
        extra = [a for a in rest if a != "--resume"]
        train_net.main(argv_for(out_dir, max_iter, resume, extra))
    elif mode == "loop":
        n_kills, seed, budget = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
        ref_dir = sys.argv[7] if len(sys.argv) > 7 and sys.argv[7] != "-" else None
        extra = sys.argv[8:]
        summary = loop(out_dir, max_iter, n_kills, seed, budget, extra)
        if ref_dir:  # finish the killed run and make the reference run, both forked here
            run_forked(out_dir, max_iter, resume=True, extra=extra)
            run_forked(ref_dir, max_iter, resume=False, extra=extra)
        print(json.dumps(summary), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")
