"""Software prefetch for Numba kernels: ``prefetch(arr, i)`` asks the cache for the line
holding ``arr[i]`` (LLVM's ``llvm.prefetch``; on x86 ``prefetchw``: read for a coming write,
kept in every level). A hint only: no load, no fault, no result, nothing checked.

Used by the GEMM macro-kernel to fetch the MR rows of the C tile while the micro-kernel runs
(the GotoBLAS/OpenBLAS practice): C is touched once per K block, so its lines are cold, and
waiting on MR cache misses at write-back cost ~5-10 % of a large fp32 product here.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, idx):
    """prefetch(arr, i): a write prefetch of arr[i] (1-D array, integer index, unchecked)."""
    if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(1), i32(3), i32(1)])      # write, keep in all levels, data
        return context.get_dummy_value()

    return types.void(arr, idx), codegen
