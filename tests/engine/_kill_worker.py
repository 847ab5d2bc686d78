"""Child process for tests/engine/test_reliability.py: trains the tiny stand-in with a checkpoint every iteration
and prints one line per iteration, so the parent can SIGKILL it at random moments and resume it."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from _tiny_model import TinyTrainer, tiny_cfg  # noqa: E402

torch.set_num_threads(1)


class PrintingTrainer(TinyTrainer):
    def run_step(self):
        super().run_step()
        print(f"ITER {self.iter}", flush=True)


if __name__ == "__main__":
    out_dir, max_iter, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    cfg = tiny_cfg(out_dir, max_iter=max_iter, **{"SOLVER.CHECKPOINT_PERIOD": 1, "LOG_PERIOD": 5,
                                                  "SOLVER.STEPS": (max_iter // 2,)})
    t = PrintingTrainer(cfg)
    t.resume_or_load(resume=resume)
    t.train()
    print("DONE", flush=True)
