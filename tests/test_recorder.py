"""Recording from a second process (tracking.background=true, the default): it records what
recording in the training process records, and a training process that dies does not leave
its run RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from src.recorder import Recorder
from src.train import train
from tests.test_reliability import training_at_epoch_one
from tests.test_sweep import runs_of


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
    client, process, run_id = training_at_epoch_one(tmp_path, "trainer.epochs=30", "data.limit=400")
    process.kill()  # SIGKILL: no handler runs in the training process.
    process.wait(timeout=30)
    deadline = time.monotonic() + 60
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "the training process ended unexpectedly"
    assert 1 in [m.step for m in client.get_metric_history(run_id, "val_loss")]


def recording_process_of(process: subprocess.Popen[str]) -> int:
    """The pid of the recording process that ``process`` started."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # Gone meanwhile.
        if parent == process.pid and b"src.recorder" in command:
            return int(stat.parent.name)
    raise AssertionError("the training process has no recording process")


@pytest.mark.slow
def test_a_killed_recording_process_leaves_the_run_failed_not_running(tmp_path):
    client, process, run_id = training_at_epoch_one(tmp_path, "trainer.epochs=30", "data.limit=400")
    os.kill(recording_process_of(process), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: the recording process was killed by SIGKILL."), last
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert "the recording process was killed by SIGKILL" in run.data.tags["error"]
    assert 1 in [m.step for m in client.get_metric_history(run_id, "val_loss")]


@pytest.mark.slow
def test_a_sweep_whose_recording_process_is_killed_closes_its_runs_and_goes_on(tmp_path):
    # Job 0 trains long enough to be killed in; job 1, with a new recording process, is short.
    _, process, _ = training_at_epoch_one(
        tmp_path, "trainer.epochs=30,1", "data.limit=400", multirun=True
    )
    os.kill(recording_process_of(process), signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-3000:]
    assert "job 0 (trainer.epochs=30)" in stderr.strip().splitlines()[-1]
    _, [parent], jobs = runs_of(tmp_path)
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_failed"] == 1 and parent.data.metrics["jobs_finished"] == 1
    statuses = {run.data.params["trainer.epochs"]: run.info.status for run in jobs}
    assert statuses == {"30": "FAILED", "1": "FINISHED"}


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
