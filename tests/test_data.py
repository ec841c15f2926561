"""fastnn.data: minibatches without replacement, resumable epochs, batch-size schedules,
train/test split, IDX files and the MNIST/digits loaders."""
import gzip
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnn.data import batch_count, batches, load_digits, load_mnist, read_idx, train_test_split, write_idx
from fastnn.schedules import BatchSize


class DoublingBatchSize:
    """A user-defined schedule: the batch size doubles every ``every`` samples seen."""

    def __init__(self, start: int, every: int):
        self.start, self.every, self.seen = start, every, 0

    @property
    def batch_size(self) -> int:
        return self.start * 2 ** (self.seen // self.every)

    def advance(self, n_samples: int) -> None:
        self.seen += n_samples


def indices(n, **kwargs):
    """The sample indices of each batch: x = arange(n) makes each batch its own index list."""
    x = np.arange(n)
    return [xb.tolist() for xb, _ in batches(x, **kwargs)]


# --- batches -------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 70), batch_size=st.integers(1, 80), seed=st.integers(0, 2**70),
       epoch=st.integers(0, 1000), shuffle=st.booleans(), data=st.data())
def test_epoch_is_the_seeded_permutation_resumable_anywhere(n, batch_size, seed, epoch, shuffle, data):
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,)))
    order = rng.permutation(n) if shuffle else np.arange(n)
    got = indices(n, batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle)
    assert sum(got, []) == order.tolist()  # every index exactly once, in the documented order
    assert [len(b) for b in got[:-1]] == [batch_size] * (len(got) - 1)
    assert 1 <= len(got[-1]) <= batch_size
    start = data.draw(st.integers(0, n), label="start_sample")
    rest = indices(n, batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle, start_sample=start)
    assert sum(rest, []) == order[start:].tolist()


def test_same_seed_and_epoch_give_the_same_batches_and_epochs_differ():
    assert indices(50, batch_size=7, seed=3, epoch=2) == indices(50, batch_size=7, seed=3, epoch=2)
    assert indices(50, batch_size=7, seed=3, epoch=2) != indices(50, batch_size=7, seed=3, epoch=3)
    assert indices(50, batch_size=7, seed=3, epoch=2) != indices(50, batch_size=7, seed=4, epoch=2)


def test_a_seed_beyond_32_bits_is_not_another_seeds_later_epoch():
    """default_rng([seed, epoch]) joined 32-bit words: [2**32, 0] and [0, 1] are one seed."""
    assert indices(50, batch_size=50, seed=2**32, epoch=0) != indices(50, batch_size=50, seed=0, epoch=1)
    assert indices(50, batch_size=50, seed=2**32 + 5, epoch=0) != indices(50, batch_size=50, seed=5, epoch=1)


def test_no_shuffle_is_in_order_with_a_short_last_batch():
    assert indices(10, batch_size=4, shuffle=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_drop_last_drops_only_a_short_batch():
    assert indices(10, batch_size=4, shuffle=False, drop_last=True) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert indices(8, batch_size=4, shuffle=False, drop_last=True) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert indices(3, batch_size=4, drop_last=True) == []


def test_start_sample_resumes_mid_batch_and_at_the_end():
    full = sum(indices(23, batch_size=5, seed=1, epoch=4), [])
    assert indices(23, batch_size=5, seed=1, epoch=4, start_sample=7)[0] == full[7:12]
    assert indices(23, batch_size=5, seed=1, epoch=4, start_sample=23) == []


def test_pairs_are_aligned_copies_and_y_none_yields_none():
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    y = np.arange(10) * 10
    for xb, yb in batches(x, y, 4, seed=5):
        np.testing.assert_array_equal(xb[:, 0] / 3 * 10, yb)
        assert xb.flags.c_contiguous and not np.shares_memory(xb, x)
    assert all(yb is None for _, yb in batches(x, batch_size=4))


def test_growing_schedule_within_an_epoch_covers_every_index_once():
    schedule = DoublingBatchSize(start=4, every=16)
    got = indices(100, batch_size=schedule, seed=2)
    assert [len(b) for b in got] == [4, 4, 4, 4, 8, 8, 16, 32, 20]
    assert sorted(sum(got, [])) == list(range(100))
    assert schedule.seen == 100


def test_growing_schedule_with_drop_last_does_not_count_the_dropped_batch():
    schedule = DoublingBatchSize(start=4, every=16)
    assert [len(b) for b in indices(100, batch_size=schedule, drop_last=True)] == [4, 4, 4, 4, 8, 8, 16, 32]
    assert schedule.seen == 80


def test_schedule_has_counted_each_batch_inside_the_loop_body():
    schedule = DoublingBatchSize(start=3, every=1000)
    seen = 0
    for xb, _ in batches(np.zeros(10), batch_size=schedule):
        seen += len(xb)
        assert schedule.seen == seen  # so a checkpoint here stores a consistent (schedule, start_sample)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"x": np.zeros((0, 3))}, ValueError, "empty data set"),
    ({"x": np.zeros(5), "y": np.zeros(4)}, ValueError, "same number of samples, got 5 and 4"),
    ({"x": np.float64(1.0)}, TypeError, r"leading sample axis, got float64 of shape \(\)"),
    ({"x": [[1.0], [2.0]]}, TypeError, r"leading sample axis, got list \(no shape: convert it with np.asarray\)"),
    ({"batch_size": 0}, ValueError, "batch_size: expected an int >= 1, got 0"),
    ({"batch_size": 2.0}, TypeError, "batch_size: expected an int >= 1, got float"),
    ({"batch_size": True}, TypeError, "batch_size"),
    ({"start_sample": 6}, ValueError, r"start_sample: expected 0..5 .*got 6"),
    ({"start_sample": -1}, ValueError, "start_sample: expected an int >= 0, got -1"),
    ({"seed": -1}, ValueError, "seed"),
    ({"epoch": 1.5}, TypeError, "epoch"),
    ({"shuffle": "False"}, TypeError, "shuffle: expected True or False, got str 'False'"),
    ({"drop_last": "False"}, TypeError, "drop_last: expected True or False, got str 'False'"),
])
def test_bad_arguments_raise_at_call_time(kwargs, error, match):
    kwargs = {"x": np.zeros(5), **kwargs}
    with pytest.raises(error, match=match):
        batches(**kwargs)  # no next(): checks run before the first batch


def test_bad_schedule_size_raises_when_read():
    schedule = DoublingBatchSize(start=0, every=1)
    with pytest.raises(ValueError, match="schedule.batch_size: expected an int >= 1, got 0"):
        next(batches(np.zeros(5), batch_size=schedule))


# --- train_test_split ----------------------------------------------------------------------

def test_split_is_disjoint_complete_stratified_and_seeded():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    x = np.arange(100)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction=0.2, seed=7)
    assert len(x_test) == 20 and np.intersect1d(x_train, x_test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([x_train, x_test])), x)
    np.testing.assert_array_equal(y[x_train], y_train)
    np.testing.assert_array_equal(y[x_test], y_test)
    np.testing.assert_array_equal(np.bincount(y_test), [10, 6, 4])
    again = train_test_split(x, y, test_fraction=0.2, seed=7)
    np.testing.assert_array_equal(again[1], x_test)
    assert not np.array_equal(train_test_split(x, y, test_fraction=0.2, seed=8)[1], x_test)


@pytest.mark.parametrize("args, error, match", [
    ((np.zeros((5, 2)), np.zeros(5), "0.2"), TypeError,
     "test_fraction: expected a number in \\(0, 1\\), got str '0.2'"),
    ((np.zeros((5, 2)), np.zeros(5), None), TypeError, "test_fraction: .* got NoneType None"),
    ((np.zeros((5, 2)), np.zeros(5), True), TypeError, "test_fraction: .* got bool True"),
    ((np.zeros((5, 2)), None), TypeError, "expected a y array, got None"),
    ((np.zeros((5, 2)), np.zeros(5), 0.2, 0, "no"), TypeError, "stratify: expected True or False, got str 'no'"),
])
def test_train_test_split_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        train_test_split(*args)


def test_stratified_leftover_places_go_to_the_largest_remainders():
    y = np.repeat([0, 1, 2], [5, 3, 3])  # 11 samples, 4 test places: ideal 1.82, 1.09, 1.09
    _, _, _, y_test = train_test_split(np.arange(11), y, test_fraction=4 / 11 - 1e-9)
    np.testing.assert_array_equal(np.bincount(y_test), [2, 1, 1])


def test_stratified_split_refuses_a_class_of_one_sample():
    y = np.array([0, 0, 1, 1, 2, 0, 1, 1])          # class 2 could only be in one part
    with pytest.raises(ValueError, match="at least 2 samples of every class, got 1 of class 2"):
        train_test_split(np.arange(8), y, test_fraction=0.5)
    x_train, x_test, _, _ = train_test_split(np.arange(8), y, test_fraction=0.5, stratify=False)
    assert len(x_train) == len(x_test) == 4


def test_unstratified_split_sizes():
    x_train, x_test, _, _ = train_test_split(np.arange(10), np.zeros(10), test_fraction=0.25, stratify=False)
    assert (len(x_train), len(x_test)) == (7, 3)
    assert sorted(np.concatenate([x_train, x_test]).tolist()) == list(range(10))


@pytest.mark.parametrize("n, fraction, match", [(10, 0.0, r"in \(0, 1\)"), (10, 1.0, r"in \(0, 1\)"),
                                                 (2, 0.9, "no training samples")])
def test_split_rejects_fractions_leaving_a_part_empty(n, fraction, match):
    with pytest.raises(ValueError, match=match):
        train_test_split(np.zeros(n), np.zeros(n), test_fraction=fraction)


def test_split_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="got 4 and 3"):
        train_test_split(np.zeros(4), np.zeros(3))


# --- IDX files and loaders -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, shape, suffix):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    else:
        array = rng.standard_normal(shape).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    got = read_idx(path)
    assert got.dtype == dtype and got.dtype.isnative and got.flags.writeable
    np.testing.assert_array_equal(got, array)
    as_bytes = os.fsencode(tmp_path / f"b.idx{suffix}")     # a bytes path ending in .gz: str.endswith raised
    write_idx(as_bytes, array)
    np.testing.assert_array_equal(read_idx(as_bytes), array)


def test_idx_bytes_follow_the_format(tmp_path):
    write_idx(tmp_path / "a", np.array([[1, -2, 3]], dtype=np.int16))
    assert (tmp_path / "a").read_bytes() == bytes.fromhex("00000b02" "00000001" "00000003" "0001fffe0003")


def test_write_idx_rejects_unsupported_arrays(tmp_path):
    with pytest.raises(TypeError, match="got int64"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        write_idx(tmp_path / "a", np.uint8(3))
    assert not (tmp_path / "a").exists()


HEADER = bytes.fromhex("00000801" "00000003")  # ubyte, 1 dimension of size 3


@pytest.mark.parametrize("raw, match", [
    (b"\x00\x00", "truncated IDX header"),
    (b"\x01\x00\x08\x01" + bytes.fromhex("00000003") + b"abc", "bad IDX magic"),
    (b"\x00\x00\x0a\x01" + bytes.fromhex("00000003") + b"abc", "unknown IDX type code 0x0A"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x46" + bytes(4 * 70), "declares 70 dimensions, expected 1 to 64"),
    (b"\x00\x00\x08\x02" + bytes.fromhex("00000003"), "truncated IDX header"),
    (HEADER + b"ab", "truncated IDX data.*3 bytes, got 2"),
    (HEADER + b"abcd", "1 trailing bytes"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_malformed_idx_raises_naming_the_file(tmp_path, raw, match, compress):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_raises_naming_the_file(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(HEADER + b"abc")[:-6])
    with pytest.raises(ValueError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.fixture
def mnist_dir(tmp_path):
    """A small MNIST-style directory: 20 random 28x28 training images (gzipped), 5 test images (plain)."""
    rng = np.random.default_rng(1)
    sets = {}
    for prefix, n, suffix in [("train", 20, ".gz"), ("t10k", 5, "")]:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        sets[prefix] = images, labels
    return tmp_path, sets


@pytest.mark.parametrize("split, prefix", [("train", "train"), ("test", "t10k")])
def test_load_mnist_shapes_and_scaling(mnist_dir, split, prefix):
    directory, sets = mnist_dir
    images, labels = sets[prefix]
    x, y = load_mnist(directory, split)
    assert x.shape == (len(images), 784) and x.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_allclose(x, images.reshape(len(images), -1) / 255, rtol=1e-6)
    assert x.min() == 0.0 and x.max() == 1.0
    x4, _ = load_mnist(str(directory), split, dtype=np.float64, flatten=False)
    assert x4.shape == (len(images), 28, 28, 1) and x4.dtype == np.float64
    np.testing.assert_array_equal(x4[..., 0], images / 255)


def test_load_mnist_count_mismatch_names_both_files(mnist_dir):
    directory, _ = mnist_dir
    write_idx(directory / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="holds 5 images but .*t10k-labels-idx1-ubyte holds 4 labels"):
        load_mnist(directory, "test")


def test_a_global_batch_smaller_than_the_ranks_is_refused():
    x = np.arange(20.0).reshape(10, 2)
    with pytest.raises(ValueError, match="batch_size: expected at least one sample per rank \\(4 ranks\\), got 2"):
        batches(x, None, batch_size=2, shard=(0, 4))
    schedule = BatchSize(2, every_samples=100)
    with pytest.raises(ValueError, match="schedule.batch_size: expected at least one sample per rank"):
        list(batches(x, None, batch_size=schedule, shard=(1, 4)))
    assert [len(xb) for xb, _ in batches(x, None, batch_size=4, shard=(0, 4))] == [1, 1]


def test_idx_header_with_huge_dimensions_is_a_clear_error(tmp_path):
    path = tmp_path / "huge-idx"
    path.write_bytes(bytes([0, 0, 0x08, 4]) + (65536).to_bytes(4, "big") * 4 + b"\0" * 16)
    with pytest.raises(ValueError, match=f"{path}: truncated IDX data, header says \\(65536, 65536, 65536, 65536\\)"):
        read_idx(path)


def test_load_mnist_empty_set_is_a_clear_error(mnist_dir):
    directory, _ = mnist_dir
    write_idx(directory / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(directory / "t10k-labels-idx1-ubyte", np.zeros(0, dtype=np.uint8))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte: expected at least one image, got an empty"):
        load_mnist(directory, "test")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"split": ["train"]}, ValueError, r"split: expected 'train' or 'test', got \['train'\]"),
    ({"flatten": "no"}, TypeError, "flatten: expected True or False, got str 'no'")])
def test_load_mnist_bad_arguments_are_named(mnist_dir, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_mnist(mnist_dir[0], **kwargs)


def test_load_mnist_wrong_kind_of_file_names_it(mnist_dir):
    directory, _ = mnist_dir
    write_idx(directory / "t10k-images-idx3-ubyte", np.zeros((5, 784), dtype=np.uint8))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte: expected uint8 images of shape"):
        load_mnist(directory, "test")


def test_load_mnist_missing_files_lists_the_names_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte, .*train-images-idx3-ubyte.gz, "
                                                "train-images.idx3-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="split: expected 'train' or 'test', got 'val'"):
        load_mnist(tmp_path, "val")


def test_load_mnist_finds_torchvisions_and_kaggles_layouts(mnist_dir):
    """Only LeCun's names in the folder itself were found: torchvision's MNIST/raw and Kaggle's
    train-images.idx3-ubyte were "no MNIST file found"."""
    src, sets = mnist_dir
    want = load_mnist(src)
    for folder, rename in ((src.parent / "tv", lambda n: os.path.join("MNIST", "raw", n)),
                           (src.parent / "kaggle", lambda n: n.replace("-idx", ".idx"))):
        for f in os.listdir(src):
            target = folder / rename(f)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((src / f).read_bytes())
        got = load_mnist(folder)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    (src.parent / "tv" / "FashionMNIST" / "raw").mkdir(parents=True)
    for f in os.listdir(src):
        (src.parent / "tv" / "FashionMNIST" / "raw" / f).write_bytes((src / f).read_bytes())
    with pytest.raises(ValueError, match="several data sets hold train-images-idx3-ubyte .*FashionMNIST.*MNIST"):
        load_mnist(src.parent / "tv")


def test_load_digits_shapes_range_dtype():
    x, y = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    assert load_digits(np.float64)[0].dtype == np.float64
    from sklearn.datasets import load_digits as sklearn_digits     # the reference: scikit-learn's own loader

    ref = sklearn_digits()
    np.testing.assert_array_equal(x, (ref.data / 16).astype(np.float32))
    np.testing.assert_array_equal(x.reshape(-1, 8, 8) * 16, ref.images)      # row-major pixel order
    np.testing.assert_array_equal(y, ref.target)
    with pytest.raises(TypeError, match="floating dtype, got int32"):
        load_digits(np.int32)


def test_load_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install fastnn\[data\]"):
        load_digits()


def test_sharded_batches_partition_each_global_batch():
    x = np.arange(103)
    one = [xb for xb, _ in batches(x, batch_size=12, seed=3, epoch=1)]
    for size in (1, 2, 3, 4):
        shards = [[xb for xb, _ in batches(x, batch_size=12, seed=3, epoch=1, shard=(r, size))]
                  for r in range(size)]
        assert [len(s) for s in shards] == [len(one)] * size    # every rank takes every step (tail 7 >= size)
        for k, whole in enumerate(one):
            np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), whole)
    with pytest.raises(ValueError, match="rank < size"):
        batches(x, shard=(2, 2))


@pytest.mark.parametrize("shard, error, match", [
    ((0, 1.5), TypeError, "shard size: expected an int >= 1, got float 1.5"),
    ((0.5, 2), TypeError, "shard rank: expected an int >= 0, got float 0.5"),
    ((True, 2), TypeError, "shard rank: expected an int >= 0, got bool True"),
    ((-1, 2), ValueError, "shard rank: expected an int >= 0, got -1"),
    ((0, 0), ValueError, "shard size: expected an int >= 1, got 0"),
    (5, TypeError, r"shard: expected None, a communicator or a \(rank, size\) pair of ints, got 5"),
    ((0, 1, 2), TypeError, "pair of ints, got \\(0, 1, 2\\)"),
])
def test_shard_must_be_a_pair_of_ints(shard, error, match):
    with pytest.raises(error, match=match):
        batches(np.arange(10), None, 4, shard=shard)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_batch_count_is_what_batches_yields(drop_last, ranks):
    """len(DataLoader) for batches: a short tail counts unless dropped, or when it has fewer
    samples than ranks (fastnn train and fit size their schedules and progress by it)."""
    x = np.zeros((50, 2))
    for n in (1, 3, 7, 16, 17, 18, 50):
        for b in (1, 2, 4, 16, 60):
            if b < ranks or n < ranks:
                continue
            yielded = sum(1 for _ in batches(x[:n], batch_size=b, drop_last=drop_last, shard=(0, ranks)))
            assert batch_count(n, b, drop_last, ranks) == yielded, (n, b)
