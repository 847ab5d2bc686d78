"""Crash and long-run reliability of the training engine (issue 9): repeated SIGKILL + --resume, and a soak."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _final_weights(d):
    return torch.load(os.path.join(d, "model_final.pth"), weights_only=True)["model"]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path):
    max_iter, want_kills, budget_s = 60, 20, 600
    env = dict(os.environ, OMP_NUM_THREADS="1")
    worker = os.path.join(HERE, "_kill_worker.py")
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, worker, str(ref), str(max_iter), "0"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    rng = np.random.default_rng(0)
    run = tmp_path / "killed"
    kills, resumes, t0 = 0, 0, time.time()
    while True:
        p = subprocess.Popen([sys.executable, worker, str(run), str(max_iter), "1"], stdout=subprocess.PIPE,
                             text=True, env=env)
        resumes += 1
        done = False
        if kills < want_kills and time.time() - t0 < budget_s:
            # let it run a random number of iterations (0..4), then kill it after a random delay (mid-step or
            # mid-checkpoint-write)
            n = int(rng.integers(0, 5))
            for _ in range(n):
                line = p.stdout.readline()
                if not line or line.startswith("DONE"):
                    done = True
                    break
            if not done:
                time.sleep(float(rng.uniform(0.0, 0.05)))
                os.kill(p.pid, signal.SIGKILL)
                kills += 1
        out, _ = p.communicate(timeout=300)
        if p.returncode == 0 and ("DONE" in out or done):
            break
        assert p.returncode in (-signal.SIGKILL, 0), f"worker failed with code {p.returncode}"
    print(f"\nkills survived: {kills}, process starts: {resumes}, wall {time.time() - t0:.0f} s")
    assert kills >= want_kills
    a, b = _final_weights(ref), _final_weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_soak_memory_flat_and_no_fd_leak(tmp_path):
    from _tiny_model import TinyTrainer, tiny_cfg

    class Probe(TinyTrainer):
        rss = {}

        def run_step(self):
            super().run_step()
            if self.iter in (100, 499):
                Probe.rss[self.iter] = _rss_mb()

    fds_before = len(os.listdir("/proc/self/fd"))
    cfg = tiny_cfg(tmp_path, max_iter=500, **{"SOLVER.CHECKPOINT_PERIOD": 50, "LOG_PERIOD": 20,
                                              "SOLVER.STEPS": (400,)})
    t = Probe(cfg)
    t.resume_or_load(resume=False)
    t.train()
    del t
    fds_after = len(os.listdir("/proc/self/fd"))
    growth = Probe.rss[499] - Probe.rss[100]
    print(f"\nRSS at iter 100: {Probe.rss[100]:.1f} MB, at 499: {Probe.rss[499]:.1f} MB, growth {growth:+.1f} MB; "
          f"open fds before {fds_before}, after {fds_after}")
    assert growth < 20
    assert fds_after <= fds_before + 1
