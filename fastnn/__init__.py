"""fastnn: compiled-kernel neural-network training on flat parameter buffers.

    import fastnn as fnn
    model = fnn.Sequential(fnn.Dense(64, 128, activation="relu"), fnn.Dense(128, 10))
    opt = fnn.optim.Adam(model, lr=1e-3)
"""
from . import data, losses, optim, random, schedules
from .layers import Dense, Dropout, Flatten, ReLU, Sequential, Sigmoid, Tanh
from .module import Module
from .random import manual_seed

__version__ = "0.1.0"
__all__ = ["Dense", "Dropout", "Flatten", "Module", "ReLU", "Sequential", "Sigmoid", "Tanh", "data", "losses",
           "manual_seed", "optim", "random", "schedules"]
