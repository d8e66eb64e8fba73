"""The command line itself, run for real in a subprocess with every output under tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import FIXTURE_DIR

pytestmark = pytest.mark.slow


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            f"data.dir={FIXTURE_DIR}",
            f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
            "trainer.verbose=2",
            *overrides,
        ],
        cwd=tmp_path,  # Not the project root: the command works from anywhere.
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_line_run_with_sgd_and_categorical_loss(tmp_path):
    result = run_cli(tmp_path, "optimizer=sgd", "loss=categorical", "trainer.epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Test accuracy" in result.stdout and "Recorded as run" in result.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist-cnn")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "sgd,categorical,epochs=2"
    assert run.data.params["optimizer.name"] == "sgd"
    assert run.data.params["loss.name"] == "categorical"
    assert run.data.tags["overrides"].endswith("optimizer=sgd loss=categorical trainer.epochs=2")
    assert run.info.run_id in result.stdout
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    # Artifacts sit beside the store, not in the working directory.
    assert experiment.artifact_location.startswith((tmp_path / "store" / "artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()


def test_a_bad_value_stops_before_any_run_is_recorded(tmp_path):
    result = run_cli(tmp_path, "model.dense_dropout=1.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model.dense_dropout=1.5 is not allowed: it must be a rate in [0, 1)"
    )
    assert not (tmp_path / "store" / "mlflow.db").exists()
