"""Layers with forward and backward; each keeps its parameters as views into a flat buffer."""
from .activations import ReLU, Sigmoid, Tanh
from .batchnorm import BatchNorm
from .blockdiag import BlockDiagonalDense
from .concat import Concat
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .flatten import Flatten
from .local import LocallyConnected1D, LocallyConnected2D
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .residual import Residual
from .sequential import Sequential

__all__ = ["AvgPool2D", "BatchNorm", "BlockDiagonalDense", "Concat", "Conv2D", "GlobalAvgPool2D", "LocallyConnected1D",
           "LocallyConnected2D", "MaxPool2D", "Dense", "Dropout", "Flatten", "ReLU", "Residual", "Sequential",
           "Sigmoid", "Tanh"]
