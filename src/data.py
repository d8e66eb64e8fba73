"""MNIST: find the files, verify them, read them, hold out a validation set, scale, encode.

NumPy, and Keras's downloader for the cached copy; nothing of Hydra or MLflow. Every problem
with the files is raised as a :class:`DataError` whose message names the file and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.errors import PipelineError, one_line
from src.uris import mask_text

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
_IDX_MAGIC = {0x00000803: "images", 0x00000801: "labels"}
_ALL_FILES = f"the four IDX files ({', '.join(IDX_FILES.values())}) or {NPZ_NAME}"


class DataError(PipelineError, ValueError):
    """The MNIST files are missing, unreadable, corrupt or not what they claim to be."""


@dataclass(frozen=True)
class RawMnist:
    """The four arrays as stored (uint8), and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # the folder or file the arrays were read from
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
    """Read MNIST from ``data_dir`` if given, else from ``cache_dir/mnist.npz``, which Keras
    downloads there from ``url`` first, checked against ``sha256``, if it is not there yet."""
    if data_dir is None:
        return _read_npz(_download(url, Path(cache_dir).expanduser(), sha256), sha256.lower())
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"data.dir {folder} is not a folder: point data.dir at a folder with {_ALL_FILES}"
        )
    paths = [folder / name for name in IDX_FILES.values()]
    present = [path for path in paths if path.exists()] or [folder / NPZ_NAME]
    missing = [path.name for path in paths if not path.exists()]
    if not present[0].exists():
        raise DataError(f"no MNIST files in {folder}: put {_ALL_FILES} there")
    if len(present) != len(paths) and present[0].name != NPZ_NAME:
        raise DataError(
            f"{folder} holds only some of the MNIST IDX files: {', '.join(missing)} missing; "
            "copy all four there"
        )
    digests = {path.name: _sha256(path) for path in present}
    if verify:
        expected = _expected_checksums(folder, npz_sha256=sha256)
        hint = (
            "replace it with a fresh copy; for a deliberately different dataset list its "
            f"checksums in {folder / CHECKSUM_FILE} or set data.verify=false"
        )
        for name, digest in digests.items():
            if name not in expected:
                raise DataError(f"{folder / name}: no checksum is known for this file; {hint}")
            if digest != expected[name].lower():
                raise DataError(
                    f"{folder / name}: checksum mismatch (sha256 {digest[:12]}..., expected "
                    f"{expected[name][:12]}...); {hint}"
                )
    if present[0].name == NPZ_NAME:
        return _read_npz(present[0], digests[NPZ_NAME])
    train_images, train_labels, test_images, test_labels = map(_read_idx, paths)
    _check_pair(train_images, train_labels, paths[0], paths[1])
    _check_pair(test_images, test_labels, paths[2], paths[3])
    listing = "".join(f"{name}:{digest}\n" for name, digest in digests.items())
    checksum = hashlib.sha256(listing.encode()).hexdigest()
    arrays = (train_images, train_labels, test_images, test_labels)
    return RawMnist(*arrays, source=str(folder.resolve()), sha256=checksum)


def _expected_checksums(folder: Path, npz_sha256: str) -> dict[str, str]:
    """The checksums to hold the folder's files to: its SHA256SUMS file if it has one (as
    ``sha256sum`` writes it), else the official ones."""
    listing = folder / CHECKSUM_FILE
    if not listing.exists():
        return {**OFFICIAL_SHA256, NPZ_NAME: npz_sha256}
    expected = {}
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        parts = line.split()
        if parts and (len(parts) != 2 or len(parts[0]) != 64):
            raise DataError(f"{listing}, line {number}: expected '<sha256>  <file>', got {line!r}")
        if parts:
            expected[parts[1].lstrip("*")] = parts[0].lower()
    return expected


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, cache_dir: Path, sha256: str) -> Path:
    """The cached mnist.npz if its checksum is right, else fetched by Keras (checksum-verified)
    into a private folder and moved into the cache whole: concurrent jobs never read a partial
    file, and a download that fails or does not match leaves nothing in the cache."""
    import keras

    target = cache_dir / NPZ_NAME
    if target.exists() and _sha256(target) == sha256.lower():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as partial:
            fetched = keras.utils.get_file(
                NPZ_NAME, url, file_hash=sha256, cache_dir=partial, cache_subdir=""
            )
            os.replace(fetched, target)
    except Exception as error:
        raise DataError(
            f"could not download MNIST from {mask_text(url)} ({one_line(error)}); without "
            f"internet, put {_ALL_FILES} in a folder and pass data.dir=FOLDER, or copy {NPZ_NAME} "
            f"to {target}"
        ) from error
    return target


def _read_idx(path: Path) -> np.ndarray:
    """One gzip-compressed IDX file: uint8 images (n, rows, cols) or labels (n,)."""
    try:
        with gzip.open(path, "rb") as stream:
            content = stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a readable gzip file ({error}); replace it") from error
    magic = int.from_bytes(content[:4], "big")
    if len(content) < 8 or magic not in _IDX_MAGIC:
        raise DataError(f"{path}: not an MNIST IDX file (magic number {magic:#010x})")
    dimensions = 3 if _IDX_MAGIC[magic] == "images" else 1
    header = 4 + 4 * dimensions
    shape = tuple(int.from_bytes(content[i : i + 4], "big") for i in range(4, header, 4))
    if len(content) - header != int(np.prod(shape)):
        raise DataError(
            f"{path}: truncated or padded: its header promises {int(np.prod(shape))} bytes of "
            f"data, it holds {len(content) - header}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def _read_npz(path: Path, digest: str | None = None) -> RawMnist:
    names = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as archive:
            train_images, train_labels, test_images, test_labels = (archive[n] for n in names)
    except KeyError as error:
        raise DataError(f"{path}: not Keras's MNIST archive (no array {error})") from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: not a readable .npz archive ({error})") from error
    _check_pair(train_images, train_labels, path, path)
    _check_pair(test_images, test_labels, path, path)
    arrays = (train_images, train_labels, test_images, test_labels)
    return RawMnist(*arrays, source=str(path.resolve()), sha256=digest or _sha256(path))


def _check_pair(
    images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path
) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
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
    batch_size: int = 1,
) -> Splits:
    """Add the channel axis, scale pixels to [0, 1] float32, hold out a seeded random
    ``val_fraction`` of the (first ``limit``) training images, and encode the labels.

    With a validation set, the hold-out is rounded up so that the training images fill whole
    batches of ``batch_size`` (54,000 + 6,000 of MNIST at 32: 53,984 + 6,016): a last, smaller
    batch makes Keras compile its training step a second time (seconds on a GPU)."""
    train_images, train_labels = raw.train_images, raw.train_labels
    if limit is not None:
        if limit > len(train_images):
            raise DataError(
                f"data.limit={limit} exceeds the {len(train_images)} training images in "
                f"{raw.source}: lower it or unset it"
            )
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    val_count = int(len(train_images) * val_fraction)
    if val_fraction > 0 and val_count == 0:  # (A fraction below 1 always leaves training images.)
        raise DataError(
            f"data.val_fraction={val_fraction} of {len(train_images)} training images holds out "
            "no validation image: raise data.val_fraction, or add images"
        )
    if val_count and len(train_images) - val_count >= batch_size:
        val_count = len(train_images) - (len(train_images) - val_count) // batch_size * batch_size
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
