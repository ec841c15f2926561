"""Ready-made models built from the layer API: the demo's small CNN, Inception modules, ResNet
blocks and a small ResNet."""
from __future__ import annotations

import math

import numpy as np

from .checks import check_array, check_int
from .layers import (BatchNorm, Concat, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, LocallyConnected2D,
                     MaxPool2D, ReLU, Residual, Sequential)


def as_images(x: np.ndarray) -> np.ndarray:
    """(N, side*side) row-major pixel rows -> (N, side, side, 1) NHWC images."""
    check_array(x, "as_images input", shape=(None, None))
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise ValueError(f"as_images: {x.shape[1]} features are not a square image")
    return np.ascontiguousarray(x.reshape(len(x), side, side, 1))


def _image_shape(image_shape, what: str) -> tuple[int, int, int]:
    """(height, width, channels), each an int >= 1."""
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3:
        error = ValueError if isinstance(image_shape, (tuple, list)) else TypeError
        raise error(f"{what}: expected image_shape a tuple (height, width, channels), got {image_shape!r}")
    h, w, c = (check_int(d, f"{what}: image_shape {tuple(image_shape)}", 1) for d in image_shape)
    return h, w, c


def small_cnn(image_shape: tuple[int, int, int], classes: int, *, dtype=np.float32, dropout: float = 0.0) -> Sequential:
    """Conv 3x3 (16) -> max pool 2 -> locally connected 3x3 (32, untied weights per
    position, 'same') -> dense: the demo's CNN for the 8x8 digits (or 28x28 MNIST)."""
    h, w, c = _image_shape(image_shape, "small_cnn")
    check_int(classes, "small_cnn: classes", 1)
    if h < 2 or w < 2:
        raise ValueError(f"small_cnn: expected images of at least 2x2 pixels (it pools by 2), got {h}x{w}")
    conv = Conv2D(c, 16, 3, padding="same", activation="relu", dtype=dtype)
    pool = MaxPool2D(2)
    ph, pw = h // 2, w // 2
    lc = LocallyConnected2D(16, 32, 3, input_shape=(ph, pw), padding="same", activation="relu", dtype=dtype)
    layers = [conv, pool, lc, Flatten()]
    if dropout:
        layers.append(Dropout(dropout))
    return Sequential(*layers, Dense(ph * pw * 32, classes, dtype=dtype))


def inception(c_in: int, n1x1: int, r3x3: int, n3x3: int, r5x5: int, n5x5: int, pool_proj: int, *,
              bias: bool = True, dtype=np.float32) -> Concat:
    """GoogLeNet's Inception module (Szegedy et al. 2015): four branches concatenated on
    channels -- 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pool -> 1x1 -- all ReLU, 'same'."""
    def conv(i, o, k):
        return Conv2D(i, o, k, padding="same", activation="relu", bias=bias, dtype=dtype)

    return Concat(conv(c_in, n1x1, 1),
                  Sequential(conv(c_in, r3x3, 1), conv(r3x3, n3x3, 3)),
                  Sequential(conv(c_in, r5x5, 1), conv(r5x5, n5x5, 5)),
                  Sequential(MaxPool2D(3, 1, padding="same"), conv(c_in, pool_proj, 1)))


def resnet_block(c_in: int, c_out: int, stride: int = 1, *, dtype=np.float32) -> Sequential:
    """ResNet's basic block (He et al. 2016): conv 3x3 (stride) -> BatchNorm -> ReLU -> conv 3x3
    -> BatchNorm, plus the input (through a strided 1x1 conv and BatchNorm when the block
    changes the shape), then ReLU. Convolutions without bias: BatchNorm's shift is one."""
    def conv(i, o, k, s=1):
        return Conv2D(i, o, k, s, padding=k // 2, bias=False, dtype=dtype)

    block = Sequential(conv(c_in, c_out, 3, stride), BatchNorm(c_out, dtype=dtype), ReLU(),
                       conv(c_out, c_out, 3), BatchNorm(c_out, dtype=dtype))
    shortcut = None if stride == 1 and c_in == c_out else Sequential(conv(c_in, c_out, 1, stride),
                                                                       BatchNorm(c_out, dtype=dtype))
    return Sequential(Residual(block, shortcut), ReLU())


def small_resnet(image_shape: tuple[int, int, int], classes: int, *, dtype=np.float32,
                 dropout: float = 0.0) -> Sequential:
    """Conv 3x3 (16) -> BatchNorm -> ReLU -> a basic block (16) -> a strided basic block (32)
    -> global average pool -> dense: the lecture's shortcut connections and batch
    normalization in a network for the 8x8 digits (or 28x28 MNIST)."""
    c = _image_shape(image_shape, "small_resnet")[2]
    check_int(classes, "small_resnet: classes", 1)
    layers = [Conv2D(c, 16, 3, padding=1, bias=False, dtype=dtype), BatchNorm(16, dtype=dtype), ReLU(),
              resnet_block(16, 16, dtype=dtype), resnet_block(16, 32, 2, dtype=dtype), GlobalAvgPool2D()]
    if dropout:
        layers.append(Dropout(dropout))
    return Sequential(*layers, Dense(32, classes, dtype=dtype))
