"""Fused optimizers over flat buffers: one kernel call per step, torch.optim semantics."""
from .adam import Adam, AdamW
from .base import Optimizer
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]
