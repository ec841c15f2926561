"""The global seed for parameter initialisation and dropout, as ``torch.manual_seed``."""
from __future__ import annotations

import numpy as np

from .checks import check_int

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that new layers draw their initial weights (and new unseeded
    ``Dropout`` layers their mask generators) from; ``seed`` is an int >= 0."""
    global _generator
    _generator = np.random.default_rng(check_int(seed, "manual_seed seed", 0))


def generator() -> np.random.Generator:
    """The current global generator (layers take their initial values from it)."""
    return _generator


def check_state(gen: np.random.Generator, state, what: str) -> None:
    """Raise ValueError naming ``what`` unless ``state`` is a state ``gen``'s kind of bit
    generator takes; tried on a fresh generator, so ``gen`` itself is left as it was."""
    try:
        type(gen.bit_generator)().state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise ValueError(f"{what}: expected a {type(gen.bit_generator).__name__} state, got a malformed one "
                         f"({type(e).__name__}: {e})") from e
