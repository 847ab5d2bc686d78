"""`num_threads(n)`: run a block with n intra-op threads (the threaded RoIAlign paths depend on the count)."""
import contextlib

import torch


@contextlib.contextmanager
def num_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
