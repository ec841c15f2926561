"""16-bit gradient compression for the allreduce: fp16 or bf16 on the wire, fp32 sums.

Each bucket is cast to 16 bits into a staging buffer, reduced with a custom MPI sum that
adds in float32 and rounds back, then cast back into the gradient buffer: half the bytes
on the wire, at the price of 16-bit rounding of each partial sum (fp16: 11-bit mantissa,
range +-65504; bf16: 8-bit mantissa, float32's range).
"""
from __future__ import annotations

import numpy as np

COMPRESSIONS = (None, "fp16", "bf16")


def to_bf16(x: np.ndarray, out: np.ndarray) -> None:
    """float32 -> bfloat16 bits (uint16), round to nearest even."""
    f = x.astype(np.float32, copy=False)
    u = f.view(np.uint32)
    out[...] = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    out[np.isnan(f)] = 0x7FC0      # rounding a NaN of high payload carried into the sign: 0x7FFFFFFF gave -0.0


def from_bf16(bits: np.ndarray, out: np.ndarray) -> None:
    """bfloat16 bits (uint16) -> float values in ``out``."""
    out[...] = (bits.astype(np.uint32) << 16).view(np.float32)


def encode(kind: str, grads: np.ndarray, staging: np.ndarray, scale: float = 1.0) -> None:
    """staging <- 16-bit bits of scale * grads."""
    if kind == "fp16":
        np.multiply(grads, np.float32(scale), out=staging.view(np.float16), casting="unsafe")
    else:
        to_bf16(grads if scale == 1.0 else grads * np.float32(scale), staging)


def decode(kind: str, staging: np.ndarray, grads: np.ndarray) -> None:
    if kind == "fp16":
        grads[...] = staging.view(np.float16)
    else:
        from_bf16(staging, grads)


def mpi_sum_op(kind: str):
    """An MPI.Op summing 16-bit payloads (sent as MPI.UINT16_T) in float32."""
    from mpi4py import MPI

    def add(inbuf, outbuf, datatype):
        a = np.frombuffer(inbuf, dtype=np.uint16)
        b = np.frombuffer(outbuf, dtype=np.uint16)
        fa, fb = np.empty(a.shape, np.float32), np.empty(b.shape, np.float32)
        decode(kind, a, fa)
        decode(kind, b, fb)
        encode(kind, fa + fb, b)

    return MPI.Op.Create(add, commute=True)
