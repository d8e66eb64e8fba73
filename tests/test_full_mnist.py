"""The default run on the full MNIST reaches the original program's accuracy, and
experiment=fast 99% in one epoch.

Not part of the default test command (it trains on 54,000 images): CI runs it with
``MNIST_FULL_DIR=../shared/data/mnist pytest -m full`` when that folder exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.full


def train_on_full_mnist(tmp_path: Path, *overrides: str):
    """One run on the full MNIST; its MLflow run."""
    data_dir = os.environ.get("MNIST_FULL_DIR")
    if not data_dir or not Path(data_dir).is_dir():
        pytest.fail("set MNIST_FULL_DIR to a folder holding the full MNIST files")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            f"data.dir={data_dir}",
            f"tracking.uri={store}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
            "trainer.verbose=2",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("mnist-cnn").experiment_id])
    return run


def test_default_run_on_full_mnist_reaches_98_percent(tmp_path):
    run = train_on_full_mnist(tmp_path)
    accuracy = run.data.metrics["test_accuracy"]
    print(f"full MNIST, default run: test_accuracy={accuracy:.4f}")
    assert run.data.tags["dataset.sizes"] == "train=53984 val=6016 test=10000"
    assert accuracy >= 0.98


def test_the_fast_preset_reaches_99_percent_in_one_epoch(tmp_path):
    run = train_on_full_mnist(tmp_path, "experiment=fast")
    accuracy = run.data.metrics["test_accuracy"]
    print(f"full MNIST, experiment=fast: test_accuracy={accuracy:.4f}")
    assert run.data.params["trainer.epochs"] == "1"
    assert run.data.tags["dataset.sizes"] == "train=60000 val=0 test=10000"
    assert accuracy >= 0.99
