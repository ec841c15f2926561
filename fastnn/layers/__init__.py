"""Layers with forward and backward; each keeps its parameters as views into a flat buffer."""
from .activations import ReLU, Sigmoid, Tanh
from .dense import Dense
from .dropout import Dropout
from .flatten import Flatten
from .sequential import Sequential

__all__ = ["Dense", "Dropout", "Flatten", "ReLU", "Sequential", "Sigmoid", "Tanh"]
