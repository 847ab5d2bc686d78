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
