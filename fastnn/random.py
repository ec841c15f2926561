"""The global seed for parameter initialisation and dropout, as ``torch.manual_seed``."""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that new layers draw their initial weights from."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    """The current global generator (layers take their initial values from it)."""
    return _generator
