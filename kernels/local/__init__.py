"""Local-connectivity kernels: locally connected layers, convolution, pooling (NHWC)."""
