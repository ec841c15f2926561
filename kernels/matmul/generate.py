"""Writes the register-blocked GEMM modules ``gemm_<MR>x<NR>.py`` next to this file.

Why generated   Numba has no unroll pragma: a micro-kernel whose MR x NR accumulators live in
                vector registers must be written out as MR*NR scalar variables, which LLVM's
                SLP vectorizer then packs into vector FMAs. ``cache=True`` needs real files
                (``exec``-made functions cannot be cached), so the source is written to disk
                and committed; tests/test_matmul.py checks the files match this generator.
Run             python -m fastnn.kernels.matmul.generate        (rewrites every SHAPES file)
"""
from __future__ import annotations

from pathlib import Path

from .blocks import MT

HERE = Path(__file__).parent

# (MR, NR) register tiles shipped: NR is the vector (column) direction, MR the broadcast rows.
# 6x16 fp32 / 6x8 fp64 fill 12 of AVX2's 16 ymm registers (BLIS haswell); 8x32 / 8x16 are the
# AVX-512 tiles of the research notes (16 zmm accumulators of 32).
SHAPES = ((6, 16), (6, 8), (8, 32), (8, 16))


def _accumulate(mr: int, nr: int, a_expr) -> list[str]:
    """Zeroed accumulators and the k loop of rank-1 updates (a_expr(i) reads A[i, p])."""
    lines = []
    for i in range(mr):
        lines.append("    " + " = ".join(f"c{i}_{j}" for j in range(nr)) + " = z")
    lines += ["    for p in range(kc):", "        bo = uint64(p) * ldbu"]
    lines += [f"        b{j} = b[bo + uint64({j})]" for j in range(nr)]
    for i in range(mr):
        lines.append(f"        a{i} = {a_expr(i)}")
        lines += [f"        c{i}_{j} += a{i} * b{j}" for j in range(nr)]
    return lines


def _write_back(nr: int) -> list[str]:
    """Body of store_c: tile rows -> C with the epilogue, one row of NR values at a time."""
    js = range(nr)
    at = {j: f"c[ro + uint64({j})]" for j in js}
    lines = ["    ldcu = uint64(ldc)", "    z = t.dtype.type(0)", "    one = t.dtype.type(1)",
             "    for i in range(MR):", "        ro = uint64(i) * ldcu", "        to = uint64(i * NR)"]
    lines += [f"        v{j} = t[to + uint64({j})]" for j in js]
    lines += ["        if first:", "            if beta == 0:"] + [f"                v{j} = alpha * v{j}" for j in js]
    lines += ["            else:"] + [f"                v{j} = alpha * v{j} + beta * {at[j]}" for j in js]
    lines += ["        else:"] + [f"            v{j} = alpha * v{j} + {at[j]}" for j in js]
    lines += ["        if last:", "            if bias.shape[0] > 0:"] + [f"                v{j} += bias[{j}]" for j in js]
    lines += ["            if act == 1:"] + [f"                v{j} = max(v{j}, z)" for j in js]
    lines += ["            elif act == 2:"] + [f"                v{j} = np.tanh(v{j})" for j in js]
    lines += ["            elif act == 3:"] + [f"                v{j} = one / (one + np.exp(-v{j}))" for j in js]
    lines += [f"        {at[j]} = v{j}" for j in js]
    return lines


def micro_source(mr: int, nr: int) -> str:
    """Packed micro-kernel ``micro`` (into a tile buffer) and the unrolled tile store ``store_c``."""
    doc = '    """Packed MR x NR tile: c[i*NR + j] = sum_p a[p*MR + i] * b[p*NR + j] (overwrites c)."""'
    lines = ["@njit(fastmath={'contract'}, **_OPTS)", "def micro(kc, a, b, c):", doc,
             "    ldbu = uint64(NR)", "    z = b.dtype.type(0)"]
    lines += _accumulate(mr, nr, lambda i: f"a[uint64(p * {mr} + {i})]")
    lines += [f"    c[{i * nr + j}] = c{i}_{j}" for i in range(mr) for j in range(nr)]
    lines += ["", "", "@njit(fastmath={'contract'}, **_OPTS)",
              "def store_c(t, c, ldc, alpha, beta, first, last, bias, act):",
              '    """Full MR x NR tile t -> C (c starts at the tile, row stride ldc), epilogue fused:',
              "    C = alpha*T + beta*C (first K block) or C + alpha*T (later blocks); on the last K",
              '    block + bias[j] (bias starts at the tile column; empty: none), then activation."""']
    lines += _write_back(nr)
    return "\n".join(lines) + "\n"


def direct_source(mr: int, nr: int, name: str = "micro_direct") -> str:
    """Unpacked micro-kernel on row-major A (row stride lda) and B (row stride ldb), over nt
    row tiles of mr rows in one call."""
    lines = ["@njit(fastmath={'contract'}, **_OPTS)",
             f"def {name}(kc, nt, a, lda, b, ldb, c, ldc):",
             f'    """Unpacked {mr} x {nr} tiles: c[(q*{mr} + i)*ldc + j] = sum_p a[(q*{mr} + i)*lda + p] *',
             "    b[p*ldb + j] for q < nt (overwrites c): one tile into a tile buffer (nt = 1), or a column",
             "    panel of nt tiles straight into C's rows (one call a panel: 5-8 % faster at 32^3-64^3",
             "    than a call a tile).",
             "",
             "    Indices are uint64 so Numba emits no negative-index wraparound select, which",
             '    would keep SLP from vectorizing the loads (measured: 15 vs 85 GFLOP/s)."""',
             "    ldbu = uint64(ldb)", "    ldcu = uint64(ldc)", "    z = b.dtype.type(0)",
             "    for q in range(nt):", f"        aq = a[q * {mr} * lda:]", f"        cq = c[q * {mr} * ldc:]"]
    body = [f"    ar{i} = aq[{i} * lda:]" for i in range(mr)] + _accumulate(mr, nr, lambda i: f"ar{i}[p]")
    body += [f"    cq[uint64({i}) * ldcu + uint64({j})] = c{i}_{j}" for i in range(mr) for j in range(nr)]
    lines += ["    " + ln for ln in body]
    return "\n".join(lines) + "\n"


def transposed_source(mr: int, nr: int, rows: int | None = None, name: str = "micro_direct_t") -> str:
    """Accumulating micro-kernel over nt row tiles (MT rows each, or ``rows``) of column-major A
    (column stride lda); ``mr`` is unused (the tile has those rows), kept for the common signature."""
    r = "MT" if rows is None else str(rows)
    lines = ["@njit(fastmath={'contract'}, **_OPTS)",
             f"def {name}(kc, nt, a, lda, b, ldb, c, ldc):",
             f'    """c[(q*{r} + i)*ldc + j] += sum_p a[p*lda + q*{r} + i] * b[p*ldb + j] for q < nt: A read',
             f"    transposed in place ({r} consecutive values per p) and the tiles added straight into C,",
             '    e.g. a weight gradient X.T @ dY summed over the samples p."""',
             "    ldbu = uint64(ldb)", "    ldau = uint64(lda)", "    ldcu = uint64(ldc)", "    z = b.dtype.type(0)",
             "    for q in range(nt):", f"        aq = a[q * {r}:]", f"        cq = c[q * {r} * ldc:]"]
    rows = MT if rows is None else rows
    body = _accumulate(rows, nr, lambda i: f"aq[ao + uint64({i})]")
    at = body.index("        bo = uint64(p) * ldbu")
    body = body[:at + 1] + ["        ao = uint64(p) * ldau"] + body[at + 1:]
    lines += ["    " + ln for ln in body]
    lines += [f"        cq[uint64({i}) * ldcu + uint64({j})] += c{i}_{j}" for i in range(rows) for j in range(nr)]
    return "\n".join(lines) + "\n"


def segmented_source(mr: int, nr: int) -> str:
    """micro_direct summed over nseg segments of kc (A and B advanced by sa and sb each)."""
    lines = ["@njit(fastmath={'contract'}, **_OPTS)",
             "def micro_direct_seg(kc, nseg, sa, sb, a, lda, b, ldb, c):",
             '    """c[i*NR + j] = sum_s sum_p a[i*lda + s*sa + p] * b[s*sb + p*ldb + j] (overwrites c): one',
             "    tile over a K split in nseg runs of kc, e.g. the kernel rows of an image patch read in",
             '    place, accumulated in registers (one tile store instead of nseg)."""',
             "    ldbu = uint64(ldb)", "    z = b.dtype.type(0)"]
    lines += [f"    ar{i} = a[{i} * lda:]" for i in range(mr)]
    body = _accumulate(mr, nr, lambda i: f"ar{i}[ao + uint64(p)]")
    zeros, loop = body[:mr], body[mr:]
    lines += zeros + ["    for s in range(nseg):", "        ao = uint64(s) * uint64(sa)",
                      "        bs = b[uint64(s) * uint64(sb):]"]
    lines += ["    " + ln.replace("b[bo", "bs[bo") for ln in loop]
    lines += [f"    c[{i * nr + j}] = c{i}_{j}" for i in range(mr) for j in range(nr)]
    return "\n".join(lines) + "\n"


def module_source(mr: int, nr: int) -> str:
    from .template import TEMPLATE as body

    gemm = body.split("# --- driver ---\n", 1)
    driver = gemm[1]
    drivers = (driver.replace("__NAME__", "gemm_cpu").replace("__PARALLEL__", "True")
               .replace("__LOOP__", "prange").replace("__TID__", "get_thread_id()")
               + "\n\n" + driver.replace("__NAME__", "gemm_serial").replace("__PARALLEL__", "False")
               .replace("__LOOP__", "range").replace("__TID__", "0"))
    head = gemm[0].replace("__MR__", str(mr)).replace("__NR__", str(nr))
    return (head + micro_source(mr, nr) + "\n\n" + direct_source(mr, nr) + "\n\n"
            + direct_source(mr, nr // 2, "micro_narrow") + "\n\n" + segmented_source(mr, nr)
            + "\n\n" + f"MT = {MT}\n\n\n" + transposed_source(mr, nr) + _transposed_8(mr, nr) + "\n\n" + drivers)


def _transposed_8(mr: int, nr: int) -> str:
    """micro_direct_t8, the transposed kernel over 8 rows, for the tiles half as wide as another
    (the local kernels' narrow fp32 tiles, kernels/local/tiles.py): a row of such a tile is one
    vector, and MT = 4 rows keep only 4 accumulators, too few to cover the FMA latency (Zen 5,
    8x16 fp32, a locally connected weight gradient: 3.3 -> 2.4-2.6 ms with 8 rows; the wide
    tiles' 4 rows of 2 vectors stay as fast as 8 rows, or faster)."""
    return "\n\n" + transposed_source(mr, nr, 8, "micro_direct_t8") if (mr, 2 * nr) in SHAPES else ""


def path_for(mr: int, nr: int) -> Path:
    return HERE / f"gemm_{mr}x{nr}.py"


def main() -> None:
    for mr, nr in SHAPES:
        path_for(mr, nr).write_text(module_source(mr, nr))
        print(f"wrote {path_for(mr, nr)}")


if __name__ == "__main__":
    main()
