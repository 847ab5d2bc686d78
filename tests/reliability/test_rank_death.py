"""Distributed failures on CPU (2 gloo processes): a rank that dies mid-training makes the other exit with an
error within a timeout instead of hanging; a NaN on one rank stops every rank at the same iteration."""
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _rel_common  # noqa: E402,F401

CHILD = os.path.join(HERE, "_rank_child.py")


def _start_ranks(mode, out_dir, timeout_s=60):
    from resnet_backbone.engine.launch import find_free_port

    port = find_free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   RB_DIST_TIMEOUT_S=str(timeout_s))
        procs.append(subprocess.Popen([sys.executable, CHILD, mode, str(out_dir)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_all(procs, limit_s):
    t0 = time.time()
    try:
        errs = [p.communicate(timeout=max(1.0, limit_s - (time.time() - t0)))[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], errs


def test_a_rank_killed_mid_training_makes_the_other_exit_with_an_error(tmp_path):
    procs = _start_ranks("die", tmp_path, timeout_s=60)
    codes, errs = _wait_all(procs, limit_s=240)  # 240 s: two interpreter starts on a loaded machine + the timeout
    assert codes[1] == 7, errs[1][-2000:]
    assert codes[0] not in (0, None), errs[0][-2000:]  # the survivor did not hang and did not claim success
    secs, outcome = (tmp_path / "rank0_done.txt").read_text().splitlines()[:2]
    print(f"\nrank 0 stopped {secs} s after its training started: {outcome[:200]}")
    assert outcome != "finished"
    assert float(secs) < 90  # well under the 400-iteration run; bounded by the process-group timeout (60 s)


@pytest.mark.slow
def test_nan_on_one_rank_stops_both_at_that_iteration(tmp_path):
    procs = _start_ranks("nan", tmp_path)
    codes, errs = _wait_all(procs, limit_s=240)
    assert codes == [5, 5], [e[-2000:] for e in errs]
    for r in range(2):
        outcome = (tmp_path / f"rank{r}_done.txt").read_text().splitlines()[1]
        assert outcome.startswith("NonFiniteLossError: iteration 2: loss term(s) not finite: loss_b="), outcome


@pytest.mark.slow
def test_spawned_rank_exiting_without_exception_fails_the_launch(tmp_path):
    """launch(--num-gpus 2) on CPU: rank 1 leaves with os._exit mid-training; the launcher ends rank 0 and
    raises (tests/engine/test_launch.py covers a rank raising an exception)."""
    import _rank_child  # noqa: F401  (importable by the spawned processes)

    from resnet_backbone.engine import launch

    t0 = time.time()
    with pytest.raises(RuntimeError, match="distributed run failed"):
        launch(_rank_child.main, 2, args=("die", str(tmp_path)))
    assert time.time() - t0 < 180


@pytest.mark.slow
def test_a_hung_rank_is_ended_by_the_collective_timeout(tmp_path):
    """Rank 1 stops (SIGSTOP) with its connections open: rank 0 raises once RB_DIST_TIMEOUT_S (15 s) passes."""
    procs = _start_ranks("hang", tmp_path, timeout_s=15)
    try:
        t0 = time.time()
        while procs[0].poll() is None and time.time() - t0 < 300:
            time.sleep(0.5)
        assert procs[0].poll() not in (0, None), "rank 0 still running (or claimed success) with a hung peer"
        secs, outcome = (tmp_path / "rank0_done.txt").read_text().splitlines()[:2]
        print(f"\nrank 0 with a hung peer stopped {secs} s after its training started: {outcome[:200]}")
        assert 10 < float(secs) < 120
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
