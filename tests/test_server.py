"""A sweep against a real `mlflow server` on 127.0.0.1, checked over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_server import MlflowServer
from tests.test_sweep import sweep

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    running = MlflowServer(tmp_path / "server").start()
    yield running
    running.stop()


def test_two_job_sweep_against_a_real_tracking_server(tmp_path, server):
    # Credentials in URIs (this server ignores them; data.dir is set, so data.url is not read)
    # must never be recorded or printed.
    with_password = server.url.replace("http://", "http://alice:s3cret-token@")
    data_url = "data.url=https://carol:s3cret-data@example.org/mnist.npz"
    result = sweep(
        tmp_path, "optimizer=adam,sgd", f"tracking.uri={with_password}", data_url,
        "tracking.log_model=true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "store").exists()  # Nothing went to a local store.
    assert "s3cret" not in result.stdout + result.stderr

    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("mnist-cnn")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [run for run in runs if run.data.tags.get("sweep_role") == "parent"]
    jobs = [run for run in runs if run.data.tags.get("sweep_role") != "parent"]
    assert parent.info.status == "FINISHED"
    assert len(jobs) == 2
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    assert {run.data.params["optimizer.name"] for run in jobs} == {"adam", "sgd"}
    mlflow.set_tracking_uri(server.url)
    for run in jobs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1]
        model = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
        probabilities = np.asarray(model.predict(np.zeros((3, 28, 28, 1), dtype=np.float32)))
        assert probabilities.shape == (3, 10)
        recorded = [*run.data.params.values(), *run.data.tags.values(), run.info.run_name]
        assert not [value for value in recorded if "s3cret" in value]
        assert run.data.params["tracking.uri"] == with_password.replace("s3cret-token", "***")
        config = Path(client.download_artifacts(run.info.run_id, "config", str(tmp_path)))
        assert "s3cret" not in (config / "config.yaml").read_text()
        assert "s3cret" not in (config / "overrides.yaml").read_text()
    assert not [value for value in parent.data.tags.values() if "s3cret" in value]
    comparison = client.list_artifacts(parent.info.run_id, "comparison")
    assert len(comparison) == 3
    # The artifacts were uploaded through the server into its own artifact root.
    assert any((server.folder / "artifacts").rglob("comparison.csv"))
