"""Per-machine block table of the GEMM: register tile (MR, NR) and cache blocks (MC, KC, NC).

Defaults   analytic (Low et al., "Analytical modeling is enough for high-performance BLIS",
           TOMS 2016), from the caches fastnn.sysinfo detects:
             KC  the KC x NR micro-panel of B fills L1 (it stays there while the A micro-
                 panels stream past; at most 512). Half of L1, the textbook choice, measured
                 5-8 % slower here (Zen 3: KC 256 vs 512 at n = 1024-2048, fp32 and fp64,
                 interleaved against OpenBLAS) than the whole of it, which ``fastnn tune`` chose;
                 fewer K blocks mean fewer read-modify-writes of C;
             MC  the MC x KC block of A fills about half of L2 (a multiple of MR);
             NC  the KC x NC block of B fills at most a quarter of L3 (a multiple of NR).
           MR x NR by SIMD width: AVX2 6x16 fp32 / 6x8 fp64 (12 of 16 ymm registers hold the
           tile: the BLIS haswell shapes), AVX-512 8x32 / 8x16 (16 of 32 zmm).
Tuned      ``fastnn tune`` times a sweep and writes JSON to ``table_path()`` (a user cache
           folder, keyed by CPU model and caches); it is read once per process.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np


#: products with m*n*k at most this run the direct kernel (gemm_small) in the calling thread
#: (no packing of full panels; operands of other layouts are copied row-major first)
SMALL_MNK = 96 ** 3
#: serial products of row-major operands with m*n at most this run the direct kernel too, at
#: any k. Measured on Zen 4 (AVX-512), one thread, direct against packed: 1.1-1.5x at m, n <=
#: 256 and k = 512-4096 (fp64 64x4096x256 the exception, 0.65x), 1.03-1.10x at 512^2, 0.9-1.0x
#: at 1024^2 (the packed path's block reuse pays from there)
DIRECT_MN = 256 * 256
#: the direct kernel sums K in runs of at most this, each run's tile added into C: one running
#: sum over K = 4096 was 10x less accurate than OpenBLAS in fp32, while the packed path adds K
#: blocks of at most KC = 512 (and runs of 512 inside the micro-kernel cost 5-10 % at n <= 64)
SMALL_K = 512
#: weight gradients a.T @ b (+ C) with K (the batch) at most DIRECT_T_K and M*N at most
#: DIRECT_T_MN run the direct transposed kernel (small_t_into) in one thread: no packing, A read
#: in place. Zen 4, fp32, one thread, direct / packed time (M x K x N): 784x32x128 0.58,
#: 1024x128x10 0.16, 1024x64x256 0.72, 512x128x512 0.91, 784x64x512 1.00, 784x64x1024 1.74
#: (C, 3 MiB, no longer stays in L2 while the column panels pass over it)
DIRECT_T_K = 128
DIRECT_T_MN = 512 * 512
#: rows of the transposed micro-kernel's tile (micro_direct_t): with MR rows LLVM hoists the MR
#: broadcasts of a step above its FMAs and spills (20 live registers of 16 on AVX2, measured
#: 44 GFLOP/s); 4 rows keep 2*4 accumulators, 4 broadcasts and 2 row loads in registers
MT = 4
#: bounds a block table entry must keep (a packed block of MAX_PANEL float64 is 256 MiB)
MAX_BLOCK = 1 << 16
MAX_PANEL = 1 << 25

@dataclass(frozen=True)
class Blocks:
    mr: int
    nr: int
    mc: int
    kc: int
    nc: int
    source: str = "analytic"

    def validated(self) -> "Blocks":
        sizes = dict(mr=self.mr, nr=self.nr, mc=self.mc, kc=self.kc, nc=self.nc)
        bad = {k: v for k, v in sizes.items() if type(v) is not int or not 1 <= v <= MAX_BLOCK}
        if bad or self.nc * self.kc > MAX_PANEL or self.mc * self.kc > MAX_PANEL:
            raise ValueError(f"block sizes: expected ints in [1, {MAX_BLOCK}] with MC*KC and NC*KC at most "
                             f"{MAX_PANEL} elements, got {sizes}")
        return Blocks(self.mr, self.nr, -(-self.mc // self.mr) * self.mr, self.kc,
                      -(-self.nc // self.nr) * self.nr, self.source)


def _bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)i?B?", size.strip(), re.I)
    if not m:
        return 0
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def register_tile(dtype, simd_bits: int) -> tuple[int, int]:
    lanes = max(simd_bits, 256) // 8 // np.dtype(dtype).itemsize
    return (8, 2 * lanes) if simd_bits >= 512 else (6, 2 * lanes)


def analytic(dtype, simd_bits: int | None = None, caches: dict[str, str] | None = None) -> Blocks:
    from fastnn.sysinfo import cache_sizes, simd_width_bits

    if simd_bits is None:
        from .settings import wide_vectors

        simd_bits = 512 if wide_vectors() else min(simd_width_bits(), 256)
    caches = cache_sizes() if caches is None else caches
    size = np.dtype(dtype).itemsize
    l1 = _bytes(caches.get("L1d", "")) or 32 << 10
    l2 = _bytes(caches.get("L2", "")) or 256 << 10
    l3 = _bytes(caches.get("L3", "")) or 8 << 20
    mr, nr = register_tile(dtype, simd_bits)
    kc = max(64, min(512, l1 // (nr * size)) // 16 * 16)
    mc = max(mr, (l2 // 2) // (kc * size) // mr * mr)
    nc = max(nr, min(8192, (l3 // 4) // (kc * size)) // nr * nr)
    return Blocks(mr, nr, mc, kc, nc, "analytic")


def table_path() -> Path:
    """Where ``fastnn tune`` writes this machine's table: $FASTNN_CACHE_DIR (a full path), else
    $XDG_CACHE_HOME/fastnn (when absolute, as the XDG spec asks), else ~/.cache/fastnn.
    FileNotFoundError when none can be named (no such variable and no home directory),
    ValueError for a relative FASTNN_CACHE_DIR."""
    from fastnn.sysinfo import cache_sizes, cpu_model

    xdg = os.environ.get("XDG_CACHE_HOME", "")
    try:
        if os.environ.get("FASTNN_CACHE_DIR"):
            root = Path(os.environ["FASTNN_CACHE_DIR"]).expanduser()
            if not root.is_absolute():      # each process would look in its own working directory
                raise ValueError(f"FASTNN_CACHE_DIR: expected a full path (the block table's folder), got "
                                 f"{os.environ['FASTNN_CACHE_DIR']!r}")
        elif os.path.isabs(xdg):
            root = Path(xdg) / "fastnn"
        else:
            root = Path.home() / ".cache" / "fastnn"
    except RuntimeError as e:           # "~" or "~user" with no home directory to expand to
        raise FileNotFoundError(f"no folder for the block table ({e}); set FASTNN_CACHE_DIR to a full path") from None
    key = re.sub(r"[^A-Za-z0-9]+", "-", cpu_model()).strip("-").lower()
    caches = "-".join(f"{k}{v}" for k, v in cache_sizes().items() if k != "L1i").lower()
    return root / f"matmul-{key}-{caches}.json"


def save(table: dict[str, Blocks], path: Path | None = None) -> Path:
    from fastnn.files import atomic_write

    text = json.dumps({k: asdict(v) for k, v in table.items()}, indent=1).encode()
    path = atomic_write(table_path() if path is None else path, lambda f: f.write(text))
    blocks_for.cache_clear()
    return path


@lru_cache(maxsize=None)
def blocks_for(dtype_char: str) -> Blocks:
    """The table entry for a dtype ('f' or 'd'): the tuned JSON when present and readable."""
    name = np.dtype(dtype_char).name
    default = analytic(np.dtype(dtype_char))
    path = "(no path)"
    try:
        path = table_path()
        entry = json.loads(path.read_text())[name]
        tuned = Blocks(**{**entry, "source": f"tuned ({path})"}).validated()
        if (tuned.mr, tuned.nr) == (default.mr, default.nr):
            return tuned
        warnings.warn(f"fastnn.matmul: the block table {path} was tuned for a {tuned.mr}x{tuned.nr} {name} register "
                      f"tile, this process compiles {default.mr}x{default.nr} (see `fastnn info`); using the analytic "
                      "blocks. Run `fastnn tune` in this setting to write a matching one", RuntimeWarning, stacklevel=2)
    except FileNotFoundError:
        pass
    except (OSError, KeyError, TypeError, ValueError, RecursionError) as e:
        warnings.warn(f"fastnn.matmul: ignoring the block table {path} ({type(e).__name__}: {e}); using the "
                      "analytic blocks. Run `fastnn tune` to write a new one", RuntimeWarning, stacklevel=2)
    return default.validated()
