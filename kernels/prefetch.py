"""Software prefetch for Numba kernels: ``prefetch(arr, i)`` asks the cache for the line
holding ``arr[i]`` (LLVM's ``llvm.prefetch``; on x86 ``prefetchw``: read for a coming write,
kept in every level), ``prefetch_read(arr, i)`` for a line only read (``prefetcht0``). A hint
only: no load, no fault, no result, nothing checked.

Used by the GEMM macro-kernel to fetch the MR rows of the C tile while the micro-kernel runs
(the GotoBLAS/OpenBLAS practice): C is touched once per K block, so its lines are cold, and
waiting on MR cache misses at write-back cost ~5-10 % of a large fp32 product here; and by
the locally connected input gradient to fetch the next pixel's weight blocks (1 KiB runs at
scattered positions, which the hardware prefetchers miss).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _prefetch_intrinsic(rw: int):
    def fn(typingctx, arr, idx):
        if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(idx, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.gep(ary.data, [args[1]])
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
            f = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            builder.call(f, [ptr, i32(rw), i32(3), i32(1)])      # rw, keep in all levels, data
            return context.get_dummy_value()

        return types.void(arr, idx), codegen

    return fn


prefetch = intrinsic(_prefetch_intrinsic(1))
prefetch.__doc__ = "prefetch(arr, i): a write prefetch of arr[i] (1-D array, integer index, unchecked)."
prefetch_read = intrinsic(_prefetch_intrinsic(0))
prefetch_read.__doc__ = "prefetch_read(arr, i): a read prefetch of arr[i] (1-D array, integer index, unchecked)."
