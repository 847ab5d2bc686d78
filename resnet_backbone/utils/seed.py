"""Seeds derived from integers, and seeding every global RNG (python, numpy, torch) at once."""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["derive_seed", "seed_all_rng"]


def derive_seed(*ints: int) -> int:
    """A 31-bit seed that depends on every integer given (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(i) % 2**63 for i in ints]).generate_state(1)[0]) & 0x7FFFFFFF


def seed_all_rng(seed: int) -> None:
    """Seed python's `random`, numpy's global RNG and torch's CPU RNG with `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
