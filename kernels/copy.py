"""A run of elements copied with one memcpy, as a Numba intrinsic.

Math    copy_run(src, s0, dst, d0, n):   dst[d0 + j] = src[s0 + j]   for j < n
        src and dst contiguous 1-D arrays of one dtype, dst writeable; s0, d0 offsets and n a
        count, in elements (n < 0 copies nothing). The runs must not overlap. Unchecked: the
        caller keeps every index in bounds.
Why     Numba compiles ``for j in range(NR): d[j] = s[j]`` over slices to NR scalar loads and
        stores (LLVM may not assume the slices are disjoint, so it neither vectorizes nor
        calls memcpy), plus the wraparound arithmetic of each slice: 0.48 ns per float32
        packing a row-major GEMM operand here, against 0.13 for NumPy's copy. llvm.memcpy
        says the runs are disjoint; with n a compile-time constant (NR) LLVM expands it to
        vector loads and stores, with n a variable it calls libc's memcpy.
Used by the GEMM's packing of row-major B panels (kernels/matmul/template.py).
Oracle  tests/test_kernels.py against NumPy slices, both float dtypes, with offsets.
Bench   python bench/bench_matmul.py --quick   (the packed sizes, n >= 128)
"""
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic


@intrinsic
def copy_run(typingctx, src, s0, dst, d0, n):
    """copy_run(src, s0, dst, d0, n): dst[d0:d0 + n] = src[s0:s0 + n] (disjoint, unchecked)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == dst.ndim == 1
            and src.dtype == dst.dtype and all(isinstance(x, types.Integer) for x in (s0, d0, n))):
        return None
    if src.layout not in "CF" or dst.layout not in "CF" or not dst.mutable:
        raise TypingError(f"copy_run: expected contiguous 1-D arrays and a writeable destination, got {src} "
                          f"and {dst}")

    def codegen(context, builder, sig, args):
        sa = context.make_array(sig.args[0])(context, builder, args[0])
        da = context.make_array(sig.args[2])(context, builder, args[2])
        s0_, d0_, n_ = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3, 4))
        n_ = builder.select(builder.icmp_signed("<", n_, n_.type(0)), n_.type(0), n_)
        size = context.get_abi_sizeof(context.get_data_type(sig.args[0].dtype))
        cgutils.raw_memcpy(builder, builder.gep(da.data, [d0_]), builder.gep(sa.data, [s0_]), n_, size)
        return context.get_dummy_value()

    return types.void(src, s0, dst, d0, n), codegen
