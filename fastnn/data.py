"""Data sets and minibatches.

``batches`` draws one epoch of minibatches without replacement, the lecture's
``choose({1..N}, K)``, from a permutation seeded by ``(seed, epoch)``, so any
epoch can be replayed and resumed mid-way; the batch size may be a schedule
that grows with the samples seen. ``read_idx``/``write_idx``/``load_mnist``
handle the IDX files MNIST ships in; ``load_digits`` gives scikit-learn's
bundled 8x8 digits with nothing to download.
"""
from __future__ import annotations

import glob
import gzip
import importlib.util
import math
import numbers
import os
import zlib
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from .checks import check_bool, check_int, type_name

__all__ = [
    "BatchSizeSchedule", "batches", "batch_count", "train_test_split", "load_digits",
    "read_idx", "write_idx", "load_mnist",
]


@runtime_checkable
class BatchSizeSchedule(Protocol):
    """What ``batches`` needs from a batch-size schedule (e.g. ``fastnn.schedules.BatchSize``)."""

    @property
    def batch_size(self) -> int:
        """The size of the next batch."""

    def advance(self, n_samples: int) -> None:
        """Count ``n_samples`` more samples as seen."""


def _n_samples(x: object, y: object) -> int:
    """The common length of ``x`` and ``y`` (y may be None); both must be arrays of rank >= 1."""
    for what, a in (("x", x), ("y", y)):
        if (a is not None or what == "x") and len(getattr(a, "shape", ())) == 0:
            shape = (f" of shape {a.shape}" if hasattr(a, "shape") else "" if a is None else
                     " (no shape: convert it with np.asarray)")
            raise TypeError(f"{what}: expected an array with a leading sample axis, got {type_name(a)}{shape}")
    n = x.shape[0]
    if y is not None and y.shape[0] != n:
        raise ValueError(f"x and y: expected the same number of samples, got {n} and {y.shape[0]}")
    if n == 0:
        raise ValueError(f"empty data set: x has shape {x.shape}")
    return n


def batches(
    x: np.ndarray,
    y: np.ndarray | None = None,
    batch_size: int | BatchSizeSchedule = 32,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    start_sample: int = 0,
    shard=None,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """One epoch of minibatches ``(x[idx], y[idx])``, drawn without replacement.

    x: array (N, ...), any dtype; y: array (N, ...) or None. Every batch is a
    pair: with ``y=None`` it is ``(xb, None)``, so ``for xb, yb in batches(...)``
    works either way. Batches are copies (fancy indexing) in ``x``'s array type.

    The order is ``np.random.default_rng(np.random.SeedSequence(seed,
    spawn_key=(epoch,))).permutation(N)`` (or ``range(N)`` when ``shuffle`` is
    False): it depends on (seed, epoch) only, so each epoch is reproducible
    and epochs differ, for seeds of any size (``default_rng([seed, epoch])``
    would join 32-bit words: seed 2**32's epoch 0 would be seed 0's epoch 1).
    ``start_sample`` (0..N) skips that many samples of the epoch's order, so a
    checkpoint taken after ``s`` samples resumes with exactly the rest of the
    epoch.

    ``batch_size`` is an int >= 1 or a schedule (see ``BatchSizeSchedule``):
    its ``batch_size`` is read before each batch and ``advance(n)`` is called
    as each batch of n samples is handed out, before the caller sees it, so
    inside the loop body the schedule has counted every sample yielded so far
    (the count a checkpoint stores next to ``start_sample``). Skipped samples
    are not counted: restore the schedule's own state from the checkpoint.
    The last batch holds the remainder; ``drop_last`` drops it when it is
    short (and does not count it).

    ``shard``: an MPI communicator (or a ``(rank, size)`` pair) for data
    parallelism. ``batch_size`` is then the *global* batch: every rank walks the
    same permutation and takes its share of each global batch
    (``np.array_split(batch, size)[rank]``, sizes differing by at most one), so
    the ranks together see exactly what one process with the same seed sees, and
    every rank yields the same number of batches. A final global batch with
    fewer samples than ranks is dropped; schedules count global samples.

    Arguments are checked here, before the first batch; a schedule's size is
    checked as it is read.
    """
    n = _n_samples(x, y)
    seed = check_int(seed, "seed", 0)
    epoch = check_int(epoch, "epoch", 0)
    start_sample = check_int(start_sample, "start_sample", 0)
    if start_sample > n:
        raise ValueError(f"start_sample: expected 0..{n} (the number of samples), got {start_sample}")
    if isinstance(batch_size, BatchSizeSchedule):
        schedule, fixed = batch_size, None
    else:
        schedule, fixed = None, check_int(batch_size, "batch_size", 1)
    rank, size = _shard(shard)
    if fixed is not None:
        _check_per_rank(fixed, size, "batch_size")
    order = (np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,))).permutation(n)
             if check_bool(shuffle, "shuffle") else np.arange(n))
    return _iterate(x, y, order[start_sample:], fixed, schedule, check_bool(drop_last, "drop_last"), rank, size)


def batch_count(n: int, batch_size: int, drop_last: bool = False, ranks: int = 1) -> int:
    """The batches ``batches`` yields from ``n`` samples in batches of ``batch_size`` over
    ``ranks`` ranks: a short last batch counts unless ``drop_last`` drops it, or it has fewer
    samples than ranks (then it is dropped too)."""
    tail = n % batch_size
    return n // batch_size + (not drop_last and tail >= ranks and tail > 0)


def _check_per_rank(batch: int, ranks: int, what: str) -> None:
    if batch < ranks:
        raise ValueError(f"{what}: expected at least one sample per rank ({ranks} ranks), got {batch}")


def _shard(shard) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    if hasattr(shard, "Get_rank"):
        return shard.Get_rank(), shard.Get_size()
    if not isinstance(shard, (tuple, list)) or len(shard) != 2:
        raise TypeError(f"shard: expected None, a communicator or a (rank, size) pair of ints, got {shard!r}")
    rank, size = check_int(shard[0], "shard rank", 0), check_int(shard[1], "shard size", 1)
    if rank >= size:
        raise ValueError(f"shard: expected (rank, size) with 0 <= rank < size, got {shard!r}")
    return rank, size


def _iterate(x: np.ndarray, y: np.ndarray | None, order: np.ndarray, fixed: int | None,
             schedule: BatchSizeSchedule | None, drop_last: bool, rank: int = 0,
             ranks: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    start = 0
    while start < len(order):
        size = fixed if schedule is None else check_int(schedule.batch_size, "schedule.batch_size", 1)
        _check_per_rank(size, ranks, "schedule.batch_size")
        idx = order[start:start + size]
        if (drop_last and len(idx) < size) or len(idx) < ranks:
            return
        start += len(idx)
        if schedule is not None:
            schedule.advance(len(idx))
        if ranks > 1:
            idx = np.array_split(idx, ranks)[rank]
        yield x[idx], (None if y is None else y[idx])


def train_test_split(
    x: np.ndarray,
    y: np.ndarray,
    test_fraction: float = 0.2,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(x, y)`` into ``(x_train, x_test, y_train, y_test)``, disjoint and complete.

    x: (N, ...), y: (N, ...) (class labels, 1-D, when ``stratify``). The test
    set holds ``ceil(test_fraction * N)`` samples, at least one and at most
    N - 1. With ``stratify`` each class contributes in proportion to its
    count (largest remainders get the leftover places), so class frequencies
    agree between the parts to within one sample per class; every class needs
    at least 2 samples (ValueError otherwise). Which samples go
    where depends on ``seed`` only; both parts keep the original order.
    """
    if y is None:
        raise TypeError("train_test_split: expected a y array, got None")
    n = _n_samples(x, y)
    seed = check_int(seed, "seed", 0)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise TypeError(f"test_fraction: expected a number in (0, 1), got {type(test_fraction).__name__} "
                        f"{test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
    n_test = int(np.ceil(test_fraction * n))
    if n_test >= n:
        raise ValueError(f"test_fraction={test_fraction} of {n} samples leaves no training samples")
    rng = np.random.default_rng(seed)
    if check_bool(stratify, "stratify"):
        if y.ndim != 1:
            raise ValueError(f"y: stratify=True expects 1-D class labels, got shape {y.shape}")
        classes, label, counts = np.unique(y, return_inverse=True, return_counts=True)
        if counts.min() < 2:              # it could not be in both parts (scikit-learn refuses it too)
            rare = classes[np.argmin(counts)].item()
            raise ValueError(f"y: stratify=True needs at least 2 samples of every class, got 1 of class {rare!r}; "
                             "pass stratify=False to split such labels at random")
        ideal = n_test * counts / n
        per_class = np.floor(ideal).astype(np.int64)
        leftover = n_test - per_class.sum()
        per_class[np.argsort(per_class - ideal, kind="stable")[:leftover]] += 1
        test = np.concatenate([rng.permutation(np.flatnonzero(label == k))[:t] for k, t in enumerate(per_class)])
    else:
        test = rng.permutation(n)[:n_test]
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    return x[~is_test], x[is_test], y[~is_test], y[is_test]


def _check_float_dtype(dtype: np.dtype | type) -> np.dtype:
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
    return dtype


def load_digits(dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (1797 samples of 8x8, no download).

    Returns x (1797, 64) of ``dtype``, pixel intensities scaled from 0..16 to
    [0, 1], rows in row-major pixel order; y (1797,) int64 labels 0..9.
    """
    dtype = _check_float_dtype(dtype)
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("load_digits needs scikit-learn's bundled data: pip install fastnn[data]")
    # Read the CSV that scikit-learn ships rather than importing scikit-learn (about 1 s).
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    table = np.loadtxt(path, delimiter=",")
    return (table[:, :-1] / 16.0).astype(dtype), table[:, -1].astype(np.int64)


# IDX type code -> big-endian dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
#: the most dimensions an IDX header may declare here: NumPy's limit on an array's rank
_MAX_DIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32     # NumPy 1.x: 32


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not, detected from its first bytes).

    Returns an array of the file's shape and type in native byte order:
    uint8, int8, int16, int32, float32 or float64 (type codes 0x08, 0x09,
    0x0B, 0x0C, 0x0D, 0x0E). A malformed file raises ValueError naming it
    and what is wrong; FileNotFoundError when it does not exist.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX header, expected at least 4 bytes, got {len(raw)}")
    if raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: bad IDX magic, expected the first two bytes to be 0x00 0x00, got {raw[:2]!r}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X}, expected one of {known}")
    if not 1 <= ndim <= _MAX_DIMS:
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions, expected 1 to {_MAX_DIMS} (NumPy's limit)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header, {ndim} dimensions need {header} bytes, got {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = dtype.itemsize * math.prod(shape)
    got = len(raw) - header
    if got < expected:
        raise ValueError(f"{path}: truncated IDX data, header says {shape} of {dtype.name} = {expected} bytes,"
                         f" got {got}")
    if got > expected:
        raise ValueError(f"{path}: {got - expected} trailing bytes after the {expected} bytes of IDX data"
                         f" for {shape} of {dtype.name}")
    data = np.frombuffer(raw, dtype=dtype, offset=header)
    return data.astype(dtype.newbyteorder("=")).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` (at least 1 dimension, each < 2**32; dtype uint8, int8,
    int16, int32, float32 or float64) as an IDX file, gzip-compressed when
    ``path`` ends in ``.gz``. Checks everything before creating the file.
    """
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"write_idx: expected dtype uint8, int8, int16, int32, float32 or float64,"
                        f" got {array.dtype}")
    if array.ndim == 0:
        raise ValueError(f"write_idx: expected at least 1 dimension, got shape {array.shape}")
    if max(array.shape) >= 2**32:
        raise ValueError(f"write_idx: every dimension must be < 2**32, got shape {array.shape}")
    payload = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
               + array.astype(_IDX_DTYPES[code], order="C").tobytes())
    if os.fsdecode(path).endswith(".gz"):
        payload = gzip.compress(payload)
    with open(path, "wb") as f:
        f.write(payload)


def _find(directory: str | os.PathLike, prefix: str, kind: str) -> str:
    """The file of ``prefix`` ("train", "t10k") and ``kind`` ("images-idx3") in ``directory`` or,
    as torchvision downloads it, in one ``<directory>/<DataSet>/raw``; named as LeCun's site
    names it (``train-images-idx3-ubyte``) or as Kaggle's copy does (``train-images.idx3-ubyte``),
    optionally with ``.gz``."""
    names = [f"{prefix}-{k}-ubyte{gz}" for k in (kind, kind.replace("-", ".")) for gz in ("", ".gz")]
    folders = [os.fspath(directory), *sorted(glob.glob(os.path.join(glob.escape(os.fspath(directory)), "*", "raw")))]
    found = [[p for p in (os.path.join(f, n) for n in names) if os.path.isfile(p)] for f in folders]
    if found[0]:
        return found[0][0]
    raw = [f[0] for f in found[1:] if f]
    if len(raw) > 1:
        raise ValueError(f"{directory}: several data sets hold {prefix}-{kind}-ubyte ({', '.join(raw)}): expected "
                         "one; pass its folder")
    if raw:
        return raw[0]
    raise FileNotFoundError(f"no MNIST file found in {directory} (or a <name>/raw folder in it), tried: "
                            f"{', '.join(names)}")


def load_mnist(
    directory: str | os.PathLike,
    split: str = "train",
    dtype: np.dtype | type = np.float32,
    flatten: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST (or any data set in its layout, e.g. Fashion-MNIST) from ``directory``.

    Reads ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` for
    ``split="train"`` and ``t10k-...`` for ``split="test"``, each optionally
    with ``.gz`` or named ``train-images.idx3-ubyte`` (Kaggle's copy), in
    ``directory`` or in torchvision's ``directory/MNIST/raw`` (any one
    ``<name>/raw``, e.g. FashionMNIST's). Returns x of ``dtype`` with pixels scaled from 0..255 to
    [0, 1], shape (N, H*W) when ``flatten`` else NHWC (N, H, W, 1); and
    y (N,) int64 labels.
    """
    prefixes = {"train": "train", "test": "t10k"}
    if not isinstance(split, str) or split not in prefixes:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    dtype = _check_float_dtype(dtype)
    flatten = check_bool(flatten, "flatten")
    images_path = _find(directory, prefixes[split], "images-idx3")
    labels_path = _find(directory, prefixes[split], "labels-idx1")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, H, W),"
                         f" got {images.dtype} of shape {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels of shape (N,),"
                         f" got {labels.dtype} of shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(images) == 0:
        raise ValueError(f"{images_path}: expected at least one image, got an empty data set")
    x = images.reshape(len(images), -1) if flatten else images[..., np.newaxis]
    x = x.astype(dtype)
    x /= 255
    return x, labels.astype(np.int64)
