"""fastnn.kernels: Numba kernels, pure and layer-agnostic.

Kernels take preallocated outputs, allocate nothing in hot loops, and know
nothing of layers or optimizers. Host-side scalars (bias corrections, step
sizes) are prepared by the caller in float64. Grouped by what they compute:

- ``optim/``      fused optimizer updates over flat buffers (SGD, Adam, AdamW)
- ``reduce.py``   deterministic chunked reductions (global gradient norm, finiteness)
- ``activation.py`` fused bias + activation forward and activation backward
- ``chunks.py``   splitting a flat buffer into fixed-size work chunks
"""
