"""The data loader on the small real-MNIST fixture: reading, checking, splitting, encoding."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from src import data
from tests.conftest import FIXTURE_DIR

TRAIN_COUNT, TEST_COUNT = 2000, 500


def load(folder: Path, verify: bool = True) -> data.RawMnist:
    return data.load_mnist(folder, cache_dir="unused", url="unused", sha256="0" * 64, verify=verify)


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    shutil.copytree(FIXTURE_DIR, folder)
    return folder


def write_npz(path: Path, raw: data.RawMnist) -> str:
    np.savez_compressed(
        path,
        x_train=raw.train_images,
        y_train=raw.train_labels,
        x_test=raw.test_images,
        y_test=raw.test_labels,
    )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reads_the_idx_fixture():
    raw = load(FIXTURE_DIR)
    assert raw.train_images.shape == (TRAIN_COUNT, 28, 28)
    assert raw.test_images.shape == (TEST_COUNT, 28, 28)
    assert raw.train_images.dtype == np.uint8
    assert raw.train_labels.shape == (TRAIN_COUNT,)
    # The real MNIST: its first training labels are 5 0 4 1 9 and its first test label is 7.
    assert raw.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert raw.test_labels[0] == 7
    assert set(raw.train_labels.tolist()) == set(range(10))
    assert raw.source == str(FIXTURE_DIR.resolve())
    assert len(raw.sha256) == 64


def test_reads_keras_npz_with_the_same_arrays(tmp_path):
    raw = load(FIXTURE_DIR)
    folder = tmp_path / "npz"
    folder.mkdir()
    digest = write_npz(folder / "mnist.npz", raw)
    from_npz = data.load_mnist(folder, "unused", "unused", sha256=digest)
    np.testing.assert_array_equal(from_npz.train_images, raw.train_images)
    np.testing.assert_array_equal(from_npz.test_labels, raw.test_labels)
    assert from_npz.sha256 == digest


def test_prepare_scales_adds_channel_and_holds_out_validation():
    raw = load(FIXTURE_DIR)
    splits = data.prepare(raw, val_fraction=0.1, seed=0, one_hot=False)
    assert splits.x_train.shape == (1800, 28, 28, 1)
    assert splits.x_val.shape == (200, 28, 28, 1)
    assert splits.x_test.shape == (500, 28, 28, 1)
    for images in (splits.x_train, splits.x_val, splits.x_test):
        assert images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
    assert splits.y_train.shape == (1800,)
    assert np.issubdtype(splits.y_train.dtype, np.integer)
    # Train and validation together are exactly the training set, nothing shared.
    pixels = {img.tobytes() for img in raw.train_images}
    held = [(x * 255).round().astype(np.uint8)[..., 0].tobytes() for x in splits.x_val]
    kept = [(x * 255).round().astype(np.uint8)[..., 0].tobytes() for x in splits.x_train]
    assert set(held) | set(kept) <= pixels
    assert not set(held) & set(kept)


def test_no_validation_fraction_trains_on_every_image():
    raw = load(FIXTURE_DIR)
    splits = data.prepare(raw, val_fraction=0, seed=0, one_hot=False)
    assert splits.x_train.shape == (2000, 28, 28, 1)
    assert len(splits.x_val) == len(splits.y_val) == 0
    assert sorted(splits.y_train.tolist()) == sorted(raw.train_labels.tolist())


@pytest.mark.parametrize(
    ("val_fraction", "batch_size", "train", "val"),
    [(0.1, 32, 1792, 208), (0.1, 96, 1728, 272), (0.1, 1, 1800, 200), (0.1, 4096, 1800, 200)],
)
def test_the_hold_out_is_rounded_up_so_training_fills_whole_batches(
    val_fraction, batch_size, train, val
):
    raw = load(FIXTURE_DIR)
    splits = data.prepare(raw, val_fraction, seed=0, one_hot=False, batch_size=batch_size)
    assert (len(splits.x_train), len(splits.x_val)) == (train, val)
    # The images held out at batch size 1 are held out at every batch size: the first of the
    # same seeded order, so that runs of other batch sizes are validated on the same images.
    exact = data.prepare(raw, val_fraction, seed=0, one_hot=False)
    np.testing.assert_array_equal(splits.x_val[:200], exact.x_val)


def test_without_validation_every_training_image_is_kept():
    splits = data.prepare(load(FIXTURE_DIR), val_fraction=0, seed=0, one_hot=False, batch_size=32)
    assert len(splits.x_train) == 2000  # Nowhere to move the last 16 images: all are trained on.


def test_one_hot_labels_follow_the_categorical_loss():
    raw = load(FIXTURE_DIR)
    sparse = data.prepare(raw, val_fraction=0.1, seed=3, one_hot=False)
    dense = data.prepare(raw, val_fraction=0.1, seed=3, one_hot=True)
    assert dense.y_train.shape == (1800, 10)
    assert dense.y_train.dtype == np.float32
    np.testing.assert_array_equal(dense.y_train.sum(axis=1), 1.0)
    np.testing.assert_array_equal(dense.y_train.argmax(axis=1), sparse.y_train)
    np.testing.assert_array_equal(dense.test_labels, raw.test_labels)


def test_split_is_seeded_and_limit_takes_the_first_images():
    raw = load(FIXTURE_DIR)
    first = data.prepare(raw, val_fraction=0.2, seed=1, one_hot=False, limit=500)
    again = data.prepare(raw, val_fraction=0.2, seed=1, one_hot=False, limit=500)
    other = data.prepare(raw, val_fraction=0.2, seed=2, one_hot=False, limit=500)
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.x_val, other.x_val)
    assert len(first.x_train) == 400 and len(first.x_val) == 100
    assert sorted([*first.y_train, *first.y_val]) == sorted(raw.train_labels[:500])


def test_limit_beyond_the_data_is_refused():
    with pytest.raises(data.DataError, match=r"data.limit=5000 exceeds the 2000 training images"):
        data.prepare(load(FIXTURE_DIR), val_fraction=0.1, seed=0, one_hot=False, limit=5000)


def _gunzip(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def _rewrite_gz(path: Path, content: bytes) -> None:
    with gzip.open(path, "wb") as stream:
        stream.write(content)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda f: (f / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all"),
            r"train-images-idx3-ubyte.gz: not a readable gzip file",
        ),
        (
            lambda f: (f / "train-labels-idx1-ubyte.gz").write_bytes(
                (f / "train-labels-idx1-ubyte.gz").read_bytes()[:200]
            ),
            r"train-labels-idx1-ubyte.gz: not a readable gzip file",
        ),
        (
            lambda f: _rewrite_gz(
                f / "t10k-labels-idx1-ubyte.gz",
                b"\x00\x00\x08\x04" + _gunzip(f / "t10k-labels-idx1-ubyte.gz")[4:],
            ),
            r"t10k-labels-idx1-ubyte.gz: not an MNIST IDX file \(magic number 0x00000804",
        ),
        (
            lambda f: _rewrite_gz(
                f / "t10k-images-idx3-ubyte.gz",
                _gunzip(f / "t10k-images-idx3-ubyte.gz")[:-784],
            ),
            r"t10k-images-idx3-ubyte.gz: truncated or padded",
        ),
        (
            lambda f: _rewrite_gz(
                f / "t10k-labels-idx1-ubyte.gz",
                b"\x00\x00\x08\x01\x00\x00\x01\xf3"
                + _gunzip(f / "t10k-labels-idx1-ubyte.gz")[8:-1],
            ),
            r"t10k-labels-idx1-ubyte.gz: 499 labels for 500 images",
        ),
        (
            lambda f: (f / "t10k-labels-idx1-ubyte.gz").unlink(),
            r"only some of the MNIST IDX files: t10k-labels-idx1-ubyte.gz missing",
        ),
    ],
    ids=["not-gzip", "truncated-gzip", "wrong-magic", "short-data", "count-mismatch", "missing"],
)
def test_damaged_files_are_refused_naming_the_file(fixture_copy, damage, message):
    damage(fixture_copy)
    (fixture_copy / "SHA256SUMS").unlink()
    with pytest.raises(data.DataError, match=message):
        load(fixture_copy, verify=False)


def test_checksum_mismatch_is_refused(fixture_copy):
    target = fixture_copy / "train-labels-idx1-ubyte.gz"
    raw = _gunzip(target)
    _rewrite_gz(target, raw[:8] + bytes([(raw[8] + 1) % 10]) + raw[9:])  # One label changed.
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz: checksum mismatch"):
        load(fixture_copy)


def test_files_are_held_to_the_official_checksums_without_a_listing(fixture_copy):
    (fixture_copy / "SHA256SUMS").unlink()
    with pytest.raises(data.DataError, match=r"checksum mismatch .*data.verify=false"):
        load(fixture_copy)
    assert load(fixture_copy, verify=False).train_images.shape == (TRAIN_COUNT, 28, 28)


@pytest.mark.parametrize(
    ("make_folder", "message"),
    [
        (lambda tmp: tmp / "absent", r"is not a folder: point data.dir at a folder"),
        (lambda tmp: tmp, r"no MNIST files in .*: put the four IDX files"),
    ],
    ids=["no-folder", "empty-folder"],
)
def test_missing_data_says_where_to_put_which_files(tmp_path, make_folder, message):
    with pytest.raises(data.DataError, match=message) as caught:
        load(make_folder(tmp_path))
    assert "train-images-idx3-ubyte.gz" in str(caught.value)
    assert "\n" not in str(caught.value)


class _Server:
    """A real HTTP server on 127.0.0.1 serving one folder, standing in for the download host."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(self.Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[_Server, str]]:
    folder = tmp_path / "mirror"
    folder.mkdir()
    digest = write_npz(folder / "mnist.npz", load(FIXTURE_DIR))
    server = _Server(folder)
    yield server, digest
    server.stop()


def test_downloads_once_into_the_cache_and_verifies(tmp_path, mirror):
    server, digest = mirror
    cache = tmp_path / "cache"
    raw = data.load_mnist(None, cache, f"{server.url}/mnist.npz", digest)
    assert (cache / "mnist.npz").exists()
    assert raw.train_images.shape == (TRAIN_COUNT, 28, 28)
    server.stop()  # The second load must come from the cache.
    again = data.load_mnist(None, cache, f"{server.url}/mnist.npz", digest)
    np.testing.assert_array_equal(again.test_labels, raw.test_labels)
    assert [p.name for p in cache.iterdir()] == ["mnist.npz"]


def test_a_download_with_the_wrong_checksum_leaves_nothing(tmp_path, mirror):
    server, _ = mirror
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match=r"could not download MNIST .*hash does not match"):
        data.load_mnist(None, cache, f"{server.url}/mnist.npz", "f" * 64)
    assert list(cache.iterdir()) == []


def test_offline_without_files_says_where_to_put_them(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError) as caught:
        data.load_mnist(None, cache, "http://127.0.0.1:9/mnist.npz", "0" * 64)
    message = str(caught.value)
    assert message.startswith("could not download MNIST from http://127.0.0.1:9/mnist.npz")
    assert "data.dir=FOLDER" in message and str(cache / "mnist.npz") in message
    assert "\n" not in message
    assert list(cache.iterdir()) == []


def test_a_corrupt_cached_file_is_downloaded_again(tmp_path, mirror):
    server, digest = mirror
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist.npz").write_bytes(b"garbage")
    raw = data.load_mnist(None, cache, f"{server.url}/mnist.npz", digest)
    assert raw.sha256 == digest
    assert raw.train_images.shape == (TRAIN_COUNT, 28, 28)
