"""Recording from a second process (tracking.background=true, the default): it records what
recording in the training process records, and a training process that dies does not leave
its run RUNNING."""

from __future__ import annotations

import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from src.recorder import Recorder
from src.train import train
from tests.test_reliability import new_store, start_training, wait_for_epoch


def _everything(client: MlflowClient, run_id: str) -> dict[str, object]:
    run = client.get_run(run_id)
    artifacts = {
        item.path
        for folder in ("", "config", "plots", "evaluation")
        for item in client.list_artifacts(run_id, folder or None)
        if not item.is_dir
    }
    histories = {
        name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        for name in run.data.metrics
        if name not in ("fit_seconds", "train_samples_per_second", "epoch_seconds")
    }
    tags = {
        key
        for key in run.data.tags
        if not key.startswith("mlflow.") or key == "mlflow.source.git.commit"
    }
    params = {k: v for k, v in run.data.params.items() if k != "tracking.background"}
    return {
        "status": run.info.status,
        "params": params,
        "histories": histories,
        "artifacts": artifacts,
        "tags": tags,
        "datasets": len(run.inputs.dataset_inputs),
    }


def test_background_recording_records_what_in_process_recording_records(tiny_config, store_uri):
    overrides = ("trainer.epochs=2", "data.limit=600")
    background = train(tiny_config(*overrides))
    in_process = train(tiny_config(*overrides, "tracking.background=false"))
    client = MlflowClient(store_uri)
    assert client.get_run(background.run_id).data.params["tracking.background"] == "True"
    first, second = _everything(client, background.run_id), _everything(client, in_process.run_id)
    assert first == second
    assert first["status"] == "FINISHED"
    assert background.model_uri and in_process.model_uri
    assert background.model_uri != in_process.model_uri
    assert np.isclose(background.metrics["test_accuracy"], in_process.metrics["test_accuracy"])


@pytest.mark.slow
def test_a_killed_training_process_leaves_its_run_killed(tmp_path):
    store, client = new_store(tmp_path)
    process = start_training(
        tmp_path, "trainer.epochs=30", "data.limit=400", f"tracking.uri={store}"
    )
    run_id = wait_for_epoch(client, process, 1)
    process.kill()  # SIGKILL: no handler runs in the training process.
    process.wait(timeout=30)
    deadline = time.monotonic() + 60
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "the training process ended unexpectedly"
    assert 1 in [m.step for m in client.get_metric_history(run_id, "val_loss")]


def test_ctrl_c_while_the_run_is_opened_still_ends_it_killed(store_uri, tmp_path, monkeypatch):
    recorder = Recorder.get()
    context = recorder.start_run(store_uri, "mnist-cnn", "interrupted", {}, tmp_path, False)
    answer = recorder.receive
    interrupted: list[bool] = []

    def receive_interrupted_once() -> object:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # Ctrl-C while waiting for the run to open.
        return answer()

    monkeypatch.setattr(recorder, "receive", receive_interrupted_once)
    with pytest.raises(KeyboardInterrupt), context as run:
        run.log_params({"learning_rate": 0.001})
    # The close took up the open's answer first, and then got its own.
    assert interrupted and run.run_id is not None
    recorded = MlflowClient(store_uri).get_run(run.run_id)
    assert recorded.info.status == "KILLED"
    assert recorded.data.params == {}
