"""Bad input, on the real command line: a clear message naming what is wrong, a non-zero exit,
and no run left behind (in particular none RUNNING)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import FIXTURE_DIR
from tests.mlflow_server import free_port


def _copy(tmp: Path) -> Path:
    folder = tmp / "mnist"
    shutil.copytree(FIXTURE_DIR, folder)
    return folder


def _rewrite(
    tmp: Path, name: str, change: Callable[[bytes], bytes], keep_sums: bool = False
) -> Path:
    folder = _copy(tmp)
    path = folder / name
    path.write_bytes(gzip.compress(change(gzip.decompress(path.read_bytes())), mtime=0))
    if not keep_sums:
        (folder / "SHA256SUMS").unlink()
    return folder


def _truncated(tmp: Path) -> Path:
    folder = _copy(tmp)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (folder / "SHA256SUMS").unlink()
    return folder


def _not_gzip(tmp: Path) -> Path:
    folder = _copy(tmp)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x00" * 4096)
    (folder / "SHA256SUMS").unlink()
    return folder


def _missing_file(tmp: Path) -> Path:
    folder = _copy(tmp)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    return folder


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _unwritable(tmp: Path) -> Path:
    folder = tmp / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


# (overrides, exit code, a piece of the message); "{tmp}" and "{port}" are filled in. The
# command line's own paths only: every range rule is checked in-process in test_config.py.
CONFIG_CASES = [
    (
        ["optimizer.learning_rate=0"],
        2,
        "optimizer.learning_rate=0.0 is not allowed: it must be a number > 0",
    ),
    (
        ["data.val_fraction=0"],
        2,
        "optimized_metric=val_accuracy needs validation images, and data.val_fraction=0 holds "
        "out none: set optimized_metric=test_accuracy",
    ),
    (["trainer.epochs=many"], 1, "trainer.epochs"),
    (["sweep.seeds=3"], 2, "error: sweep.seeds=3 repeats the jobs of a sweep: add -m"),
    (["optimizer=adamw"], 1, "Could not find 'optimizer/adamw'"),
    (
        ["tracking.uri={tmp}/plain-folder"],
        2,
        "is not allowed: it must be unset (the project's store) or a tracking URI",
    ),
    (
        ["tracking.uri=http://user:secret@127.0.0.1:{port}"],
        1,
        "tracking.uri=http://user:***@127.0.0.1:{port}: no tracking server answers there",
    ),
]
# Each kind of damage is checked in-process in test_data.py; these prove the command line.
DATA_CASES = [
    (lambda tmp: tmp / "absent", "is not a folder: point data.dir at a folder"),
    (_truncated, "train-images-idx3-ubyte.gz: not a readable gzip file"),
    (
        lambda tmp: _rewrite(
            tmp, "train-labels-idx1-ubyte.gz", lambda b: b[:8] + b"\x07" + b[9:], keep_sums=True
        ),
        "train-labels-idx1-ubyte.gz: checksum mismatch",
    ),
]


def run(tmp_path: Path, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            f"hydra.run.dir={tmp_path / 'hydra'}",
            "trainer.verbose=0",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_nothing_recorded(store: Path) -> None:
    if not store.exists():
        return
    client = MlflowClient(f"sqlite:///{store}")
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id])
        assert runs == [], [(run.info.run_name, run.info.status) for run in runs]


@pytest.mark.parametrize(
    ("overrides", "code", "message"), CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES]
)
def test_bad_config_values_and_uris(tmp_path, overrides, code, message):
    port = free_port()  # Nothing listens there.
    filled = [item.format(tmp=tmp_path, port=port) for item in overrides]
    store = tmp_path / "store" / "mlflow.db"
    defaults = [f"data.dir={FIXTURE_DIR}"]
    if not any(item.startswith("tracking.uri=") for item in filled):
        defaults.append(f"tracking.uri=sqlite:///{store}")
    result = run(tmp_path, [*defaults, *filled])
    assert result.returncode == code, result.stderr[-2000:]
    assert message.format(port=port) in result.stderr
    if code == 2:  # The project's own errors are one line.
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "secret" not in result.stderr + result.stdout
    assert_nothing_recorded(store)


@pytest.mark.parametrize(("make_folder", "message"), DATA_CASES)
def test_bad_data(tmp_path, make_folder, message):
    store = tmp_path / "store" / "mlflow.db"
    folder = make_folder(tmp_path)
    overrides = [f"data.dir={folder}", f"tracking.uri=sqlite:///{store}"]
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "SHA256SUMS").exists():
        overrides.append("data.verify=false")  # Reach the file's structure, not its checksum.
    result = run(tmp_path, overrides)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert_nothing_recorded(store)


def test_a_store_folder_that_cannot_be_written(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/mnist-store/mlflow.db"  # Not writable even for root.
    else:
        target = f"{_unwritable(tmp_path)}/sub/mlflow.db"
    result = run(tmp_path, [f"data.dir={FIXTURE_DIR}", f"tracking.uri=sqlite:///{target}"])
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith(f"error: tracking.uri=sqlite:///{target}:") and "cannot be written" in last
    )


def test_data_limit_beyond_the_data(tmp_path):
    store = tmp_path / "store" / "mlflow.db"
    result = run(
        tmp_path, [f"data.dir={FIXTURE_DIR}", "data.limit=5000", f"tracking.uri=sqlite:///{store}"]
    )
    assert result.returncode == 1
    assert (
        "data.limit=5000 exceeds the 2000 training images" in result.stderr.strip().splitlines()[-1]
    )
    assert_nothing_recorded(store)


def test_a_sweep_whose_tracking_server_is_down_stops_before_any_job(tmp_path):
    port = free_port()  # Nothing listens there.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            "-m",
            f"data.dir={FIXTURE_DIR}",
            f"tracking.uri=http://127.0.0.1:{port}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "trainer.seed=0,1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking.uri=http://127.0.0.1:{port}: no tracking server")
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "sweep").glob("*/result.json"))
