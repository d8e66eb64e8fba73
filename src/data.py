"""MNIST: find the files, verify them, read them, hold out a validation set, scale, encode.

NumPy only: this module knows nothing of Hydra, Keras or MLflow. Every problem with the files
is raised as a :class:`DataError` whose message names the file and what to do about it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.errors import PipelineError

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
NPZ_NAME = "mnist.npz"
CHECKSUM_FILE = "SHA256SUMS"

# The four original IDX files, by role, and their published sha256 checksums.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
OFFICIAL_SHA256 = {
    IDX_FILES["train_images"]: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    IDX_FILES["train_labels"]: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    IDX_FILES["test_images"]: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    IDX_FILES["test_labels"]: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_DOWNLOAD_TIMEOUT_S = 30


class DataError(PipelineError, ValueError):
    """The MNIST files are missing, unreadable, corrupt or not what they claim to be."""


@dataclass(frozen=True)
class RawMnist:
    """The four arrays as stored (uint8), and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # the folder, file or URL the arrays were read from
    sha256: str  # one checksum over the files read, for the run's records


@dataclass(frozen=True)
class Splits:
    """Model-ready arrays: float32 images (n, 28, 28, 1) in [0, 1]; labels as the loss needs."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_labels: np.ndarray  # integer test labels whatever the encoding, for the confusion matrix


def load_mnist(
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str],
    url: str,
    sha256: str,
    verify: bool = True,
) -> RawMnist:
    """Read MNIST from ``data_dir`` if given, else from ``cache_dir/mnist.npz``, downloading it
    there from ``url`` first (checked against ``sha256``) if it is not cached yet."""
    if data_dir is not None:
        return _load_folder(Path(data_dir).expanduser(), npz_sha256=sha256, verify=verify)
    cached = Path(cache_dir).expanduser() / NPZ_NAME
    if not cached.exists():
        _download(url, cached, sha256)
    elif verify:
        _check_sha256(cached, sha256, hint=f"delete it to download it again from {url}")
    return _read_npz(cached)


def _load_folder(folder: Path, npz_sha256: str, verify: bool) -> RawMnist:
    if not folder.is_dir():
        raise DataError(
            f"data.dir {folder} is not a folder: point data.dir at a folder holding the four "
            f"MNIST IDX files ({', '.join(IDX_FILES.values())}) or {NPZ_NAME}"
        )
    expected = _expected_checksums(folder, npz_sha256)
    idx_paths = {role: folder / name for role, name in IDX_FILES.items()}
    present = [path for path in idx_paths.values() if path.exists()]
    if present:
        missing = [path.name for path in idx_paths.values() if not path.exists()]
        if missing:
            raise DataError(
                f"{folder} holds only some of the MNIST IDX files: {', '.join(missing)} "
                "missing; copy all four there"
            )
        if verify:
            for path in idx_paths.values():
                _check_sha256(path, expected.get(path.name), hint=_verify_hint(folder))
        return _read_idx_folder(folder, idx_paths)
    npz = folder / NPZ_NAME
    if npz.exists():
        if verify:
            _check_sha256(npz, expected.get(NPZ_NAME), hint=_verify_hint(folder))
        return _read_npz(npz)
    raise DataError(
        f"no MNIST files in {folder}: put the four IDX files ({', '.join(IDX_FILES.values())}) "
        f"or {NPZ_NAME} there"
    )


def _verify_hint(folder: Path) -> str:
    return (
        f"replace it with a fresh copy; for a deliberately different dataset list its checksums "
        f"in {folder / CHECKSUM_FILE} or set data.verify=false"
    )


def _expected_checksums(folder: Path, npz_sha256: str) -> dict[str, str]:
    """The checksums to hold the folder's files to: its SHA256SUMS file if it has one (as
    ``sha256sum`` writes it), else the official ones."""
    listing = folder / CHECKSUM_FILE
    if not listing.exists():
        return {**OFFICIAL_SHA256, NPZ_NAME: npz_sha256}
    expected = {}
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(
                f"{listing}, line {number}: expected '<sha256>  <file name>', got {line!r}"
            )
        expected[parts[1].lstrip("*")] = parts[0].lower()
    return expected


def sha256_of(path: Path) -> str:
    """The file's sha256, computed once per version of the file (each file is both verified
    and fingerprinted, and a sweep's in-process jobs read the same files)."""
    return _sha256(*_version(path))


def _version(path: Path) -> tuple[str, int, int, int]:
    """What tells one version of a file from another: its path, inode, mtime and size."""
    stat = path.stat()
    return str(path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _sha256(path: str, inode: int, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None, hint: str) -> None:
    if expected is None:
        raise DataError(f"{path}: no checksum is known for this file; {hint}")
    actual = sha256_of(path)
    if actual != expected.lower():
        raise DataError(
            f"{path}: checksum mismatch (sha256 {actual[:12]}..., expected {expected[:12]}...); "
            f"{hint}"
        )


def _download(url: str, destination: Path, sha256: str) -> None:
    """Fetch ``url`` into ``destination`` atomically: nothing is left there unless the whole
    file arrived and its checksum is right."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    print(f"Downloading MNIST from {url} to {destination}", file=sys.stderr)
    handle, partial_name = tempfile.mkstemp(prefix=NPZ_NAME, suffix=".part", dir=destination.parent)
    partial = Path(partial_name)
    try:
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
        actual = sha256_of(partial)
        if actual != sha256.lower():
            raise DataError(
                f"{url}: the downloaded file's checksum is wrong (sha256 {actual[:12]}..., "
                f"expected {sha256[:12]}...); nothing was kept, try again or set data.dir"
            )
        partial.replace(destination)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(
            f"could not download MNIST from {url} ({reason}); without internet, put the four "
            f"IDX files ({', '.join(IDX_FILES.values())}) or {NPZ_NAME} in a folder and pass "
            f"data.dir=FOLDER, or copy {NPZ_NAME} to {destination}"
        ) from error
    finally:
        partial.unlink(missing_ok=True)


def _read_idx_folder(folder: Path, paths: dict[str, Path]) -> RawMnist:
    arrays = {role: _read_idx(path) for role, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_pair(images, labels, paths[f"{split}_images"], paths[f"{split}_labels"])
    checksum = hashlib.sha256(
        "".join(f"{p.name}:{sha256_of(p)}\n" for p in paths.values()).encode()
    ).hexdigest()
    return RawMnist(**arrays, source=str(folder.resolve()), sha256=checksum)


def _read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzip-compressed): uint8 images (n, rows, cols) or labels (n,), read once
    per version of the file (a sweep's in-process jobs read the same files)."""
    return _read_idx_version(*_version(path))


@functools.lru_cache(maxsize=8)
def _read_idx_version(name: str, inode: int, mtime_ns: int, size: int) -> np.ndarray:
    path = Path(name)
    try:
        with gzip.open(path, "rb") as stream:
            content = stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{path}: not a readable gzip file ({error}); replace it with a fresh copy"
        ) from error
    if len(content) < 8:
        raise DataError(f"{path}: too short to be an IDX file ({len(content)} bytes)")
    magic, count = int.from_bytes(content[:4], "big"), int.from_bytes(content[4:8], "big")
    if magic == _IDX_IMAGES_MAGIC and len(content) >= 16:
        rows, cols = int.from_bytes(content[8:12], "big"), int.from_bytes(content[12:16], "big")
        shape: tuple[int, ...] = (count, rows, cols)
        offset = 16
    elif magic == _IDX_LABELS_MAGIC:
        shape, offset = (count,), 8
    else:
        raise DataError(
            f"{path}: not an MNIST IDX file (magic number {magic:#010x}, expected "
            f"{_IDX_IMAGES_MAGIC:#010x} for images or {_IDX_LABELS_MAGIC:#010x} for labels)"
        )
    expected_bytes = int(np.prod(shape))
    if len(content) - offset != expected_bytes:
        raise DataError(
            f"{path}: truncated or padded: its header promises {expected_bytes} bytes of data, "
            f"it holds {len(content) - offset}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=offset).reshape(shape)


def _read_npz(path: Path) -> RawMnist:
    names = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = [np.asarray(archive[name]) for name in names]
    except KeyError as error:
        raise DataError(f"{path}: not Keras's MNIST archive (no array {error})") from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: not a readable .npz archive ({error})") from error
    train_images, train_labels, test_images, test_labels = arrays
    _check_pair(train_images, train_labels, path, path)
    _check_pair(test_images, test_labels, path, path)
    return RawMnist(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        source=str(path.resolve()),
        sha256=sha256_of(path),
    )


def _check_pair(
    images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path
) -> None:
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: images must be uint8 of shape (n, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{labels_path}: labels must be uint8 of shape (n,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}; "
            "the two files must come from the same set"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{labels_path}: label {int(labels.max())} is not a digit 0-9")


def prepare(
    raw: RawMnist,
    val_fraction: float,
    seed: int,
    one_hot: bool,
    limit: int | None = None,
) -> Splits:
    """Add the channel axis, scale pixels to [0, 1] float32, hold out a seeded random
    ``val_fraction`` of the (first ``limit``) training images, and encode the labels."""
    train_images, train_labels = raw.train_images, raw.train_labels
    if limit is not None:
        if limit > len(train_images):
            raise DataError(
                f"data.limit={limit} exceeds the {len(train_images)} training images in "
                f"{raw.source}: lower it or unset it"
            )
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    val_count = int(len(train_images) * val_fraction)
    if (val_fraction > 0 and val_count == 0) or val_count >= len(train_images):
        raise DataError(
            f"data.val_fraction={val_fraction} of {len(train_images)} training images leaves "
            "no validation or no training image: change data.val_fraction or data.limit"
        )
    order = np.random.default_rng(seed).permutation(len(train_images))
    val_index, train_index = order[:val_count], order[val_count:]

    def images(array: np.ndarray) -> np.ndarray:
        return (array.astype(np.float32) / np.float32(255.0))[..., np.newaxis]

    def labels(array: np.ndarray) -> np.ndarray:
        if one_hot:
            return np.eye(NUM_CLASSES, dtype=np.float32)[array]
        return array.astype(np.int64)

    return Splits(
        x_train=images(train_images[train_index]),
        y_train=labels(train_labels[train_index]),
        x_val=images(train_images[val_index]),
        y_val=labels(train_labels[val_index]),
        x_test=images(raw.test_images),
        y_test=labels(raw.test_labels),
        test_labels=raw.test_labels.astype(np.int64),
    )
