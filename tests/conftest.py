import os
import random

import numpy as np
import pytest
import torch

# Under pytest-xdist each worker gets one thread: two workers on two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_flush_denormal_leak():
    """`default_setup` turns flush-denormal (FTZ/DAZ) on for the process, as training wants; in a test worker it
    would stay on for every later test, and hypothesis's float strategies refuse to run under it
    (FloatingPointError: "can't represent subnormal floats"). Each test starts and ends without it."""
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)
