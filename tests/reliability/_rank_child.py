"""One rank of a 2-process gloo training run for tests/reliability/test_rank_death.py (not a test module).

    RANK=r WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python _rank_child.py MODE OUT_DIR

Each rank is its own interpreter joined through env:// (as under torchrun or on several machines): no parent
process watches the ranks, so a surviving rank must notice a dead peer by itself.
MODE "die": rank 1 calls os._exit(7) right after iteration 2 (no exception, no cleanup: like a SIGKILL/OOM kill).
MODE "hang": rank 1 stops itself (SIGSTOP) after iteration 2: alive, holding its sockets open, never answering.
MODE "nan": rank 1's batch of iteration 2 has a NaN loss; every rank writes the error it stopped with.
Rank 0 writes rank0_done.txt with how it ended.
"""
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _rel_common  # noqa: E402,F401  (puts tests/engine on sys.path)
import torch  # noqa: E402
from _tiny_model import TinyTrainer, tiny_cfg  # noqa: E402

from resnet_backbone.engine import NonFiniteLossError, launch  # noqa: E402
from resnet_backbone.utils import comm  # noqa: E402

torch.set_num_threads(1)


def main(mode, out_dir):
    rank = comm.get_rank()

    class T(TinyTrainer):
        poison = {2: "poison_loss"} if (mode == "nan" and rank == 1) else {}

        def _after_step(self, pbar):
            super()._after_step(pbar)
            if mode == "die" and rank == 1 and self.iter == 2:
                os._exit(7)
            if mode == "hang" and rank == 1 and self.iter == 2:
                os.kill(os.getpid(), signal.SIGSTOP)  # alive but stuck: only the collective timeout can tell

    cfg = tiny_cfg(os.path.join(out_dir, "run"), max_iter=400, **{"SOLVER.CHECKPOINT_PERIOD": 0, "LOG_PERIOD": 0})
    t = T(cfg)
    t.resume_or_load(resume=False)
    t0 = time.time()
    try:
        t.train()
        outcome = "finished"
    except NonFiniteLossError as e:
        outcome = f"NonFiniteLossError: {e}"
    except Exception as e:  # a dead peer: gloo raises (connection closed / timeout)
        outcome = f"{type(e).__name__}: {e}"
    with open(os.path.join(out_dir, f"rank{rank}_done.txt"), "w") as f:
        f.write(f"{time.time() - t0:.2f}\n{outcome}\n")
    if outcome != "finished":
        raise SystemExit(5)


if __name__ == "__main__":
    launch(main, 1, args=(sys.argv[1], sys.argv[2]))
