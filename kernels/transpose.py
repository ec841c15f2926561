"""An L x L block transpose in vector registers, as a Numba intrinsic (L = 256 bits / element:
8 float32, 4 float64).

Math    transpose_block(src, s0, lds, rows, dst, d0, ldd):
            dst[d0 + j*ldd + i] = src[s0 + i*lds + j]        for i < rows <= L, j < L
        src and dst are 1-D float32 or float64 arrays of one dtype; s0, d0 offsets and lds, ldd
        row strides in elements. Each of the L stores writes L elements: with rows < L (then
        ldd = rows, e.g. MR = 6 rows of a GEMM's A panel), store j's last L - rows elements are
        junk that store j + 1 overwrites, and the last store's junk lands on the L - rows
        elements after the block, which the caller writes afterwards. Source rows past ``rows``
        are not read. Unchecked: the caller keeps every index in bounds.
How     L unaligned vector loads (one per source row), log2(L) rounds of zip shuffles (round r
        pairs row i with row i + L/2: zip_lo and zip_hi interleave their low and high halves;
        after log2(L) perfect shuffles rows and columns have swapped), L vector stores. LLVM
        lowers the shuffles to unpck/perm instructions: 48 for the 8 x 8 float32 block on AVX2.
        Scalar code moves one element per load and store (measured 1.5-2.1 cycles/element
        packing a transposed GEMM operand here); this moves L per vector (0.66-0.80).
Used by the GEMM's packing of a transposed (column-major) B operand and the locally connected
        input gradient's transposed weight blocks.
Oracle  tests/test_kernels.py against NumPy's .T, both dtypes, with offsets and strides.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def lanes(itemsize: int) -> int:
    """L for an element size in bytes: the elements of one 256-bit vector."""
    return 32 // itemsize


def _zip_masks(n: int) -> tuple[list[int], list[int]]:
    lo = [x for i in range(n // 2) for x in (i, n + i)]
    hi = [x for i in range(n // 2, n) for x in (i, n + i)]
    return lo, hi


@intrinsic
def transpose_block(typingctx, src, s0, lds, rows, dst, d0, ldd):
    """transpose_block(src, s0, lds, rows, dst, d0, ldd): the rows x L block of src at s0 (row
    stride lds) written transposed into dst at d0 (row stride ldd)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == dst.ndim == 1
            and src.dtype == dst.dtype and src.dtype in (types.float32, types.float64)
            and all(isinstance(a, types.Integer) for a in (s0, lds, rows, d0, ldd))):
        return None
    size = src.dtype.bitwidth // 8
    n = lanes(size)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        sa = context.make_array(sig.args[0])(context, builder, args[0])
        da = context.make_array(sig.args[4])(context, builder, args[4])
        s0_, lds_, nr_, d0_, ldd_ = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 2, 3, 5, 6))
        vty = ir.VectorType(context.get_value_type(sig.args[0].dtype), n)
        last = builder.sub(nr_, i64(1))
        rows = []
        for i in range(n):        # rows past the last valid one re-read it (their lanes are junk)
            r = builder.select(builder.icmp_signed("<", i64(i), nr_), i64(i), last) if i else i64(0)
            ptr = builder.gep(sa.data, [builder.add(s0_, builder.mul(lds_, r))])
            rows.append(builder.load(builder.bitcast(ptr, vty.as_pointer()), align=size))
        lo, hi = (ir.Constant(ir.VectorType(ir.IntType(32), n), m) for m in _zip_masks(n))
        for _ in range(n.bit_length() - 1):
            rows = [v for i in range(n // 2) for v in (builder.shuffle_vector(rows[i], rows[i + n // 2], lo),
                                                      builder.shuffle_vector(rows[i], rows[i + n // 2], hi))]
        for j in range(n):
            ptr = builder.gep(da.data, [builder.add(d0_, builder.mul(ldd_, i64(j)))])
            builder.store(rows[j], builder.bitcast(ptr, vty.as_pointer()), align=size)
        return context.get_dummy_value()

    return types.void(src, s0, lds, rows, dst, d0, ldd), codegen
