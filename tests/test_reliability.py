"""Honest run status under failure: interrupts, divergence, a tracking server that dies, and
many parallel writers into one SQLite store."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from src import tracking
from src.errors import DivergedError
from src.train import train
from tests.conftest import FIXTURE_DIR
from tests.mlflow_server import MlflowServer
from tests.test_sweep import assert_every_record, runs_of, sweep

pytestmark = pytest.mark.slow


def start_training(
    tmp_path: Path, *overrides: str, multirun: bool = False, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "src.train",
            *(["-m", f"hydra.sweep.dir={tmp_path / 'sweep'}"] if multirun else []),
            f"data.dir={FIXTURE_DIR}",
            "trainer.verbose=0",
            f"hydra.run.dir={tmp_path / 'hydra'}",
            *overrides,
        ],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def training_at_epoch_one(
    tmp_path: Path, *overrides: str, multirun: bool = False
) -> tuple[MlflowClient, subprocess.Popen[str], str]:
    """Start training into a new store and wait until a run has logged epoch 1. Returns the
    store's client, the process and that run's id. The store is created first, as the project
    creates it: the test's own client would otherwise race the process to create it."""
    uri, _ = tracking.prepare_store(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "mnist-cnn")
    client = MlflowClient(uri)
    process = start_training(tmp_path, *overrides, f"tracking.uri={uri}", multirun=multirun)
    return client, process, wait_for_epoch(client, process, 1)


def wait_for_epoch(client: MlflowClient, process: subprocess.Popen[str], epoch: int) -> str:
    """Wait until some run in the store has logged ``epoch``; return its id."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        try:
            experiment = client.get_experiment_by_name("mnist-cnn")
            if experiment is not None:
                for run in client.search_runs([experiment.experiment_id]):
                    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
                    if epoch in steps:
                        return str(run.info.run_id)
        except Exception:  # The store may not exist yet, or be mid-write.
            pass
        time.sleep(0.2)
    raise AssertionError(f"no run reached epoch {epoch}")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_ends_killed_with_its_finished_epochs(tmp_path, signum, code):
    client, process, run_id = training_at_epoch_one(tmp_path, "trainer.epochs=30")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-3000:]
    assert "recorded as KILLED" in stderr
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val_accuracy"))
    assert steps and steps == list(range(1, len(steps) + 1)) and len(steps) < 30
    for name in ("loss", "accuracy", "val_loss", "learning_rate", "epoch_seconds"):
        assert sorted(m.step for m in client.get_metric_history(run_id, name)) == steps, name


def test_an_interrupted_sweep_ends_killed_parent_and_job(tmp_path):
    _, process, _ = training_at_epoch_one(
        tmp_path, "trainer.epochs=30", "trainer.seed=1,2", multirun=True
    )
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode == 130
    _, [parent], jobs = runs_of(tmp_path)
    assert parent.info.status == "KILLED"
    assert [run.info.status for run in jobs] == ["KILLED"]


def test_a_diverging_run_stops_after_its_epoch_and_fails(tiny_config, store_uri):
    cfg = tiny_config("optimizer=sgd", "optimizer.learning_rate=1e12", "trainer.epochs=5")
    with pytest.raises(DivergedError, match=r"training diverged: .* in epoch 1; lower"):
        train(cfg)
    client = MlflowClient(store_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist-cnn").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["diverged"] == "true"
    assert run.data.tags["diverged_epoch"] == "1"
    # Training stopped after epoch 1, whose (non-finite) loss is recorded as it was.
    [loss] = client.get_metric_history(run.info.run_id, "loss")
    assert loss.step == 1 and not math.isfinite(loss.value)


def test_a_diverging_job_fails_while_the_sweep_goes_on(tmp_path):
    result = sweep(tmp_path, "optimizer=sgd", "optimizer.learning_rate=0.01,1e12")
    assert result.returncode == 1
    assert (
        "job 1 (optimizer.learning_rate=1000000000000.0)" in result.stderr.strip().splitlines()[-1]
    )
    _, [parent], jobs = runs_of(tmp_path)
    assert sorted(run.info.status for run in jobs) == ["FAILED", "FINISHED"]
    [failed] = [run for run in jobs if run.info.status == "FAILED"]
    assert failed.data.tags["diverged"] == "true"
    assert parent.data.metrics["jobs_failed"] == 1


def test_a_dead_tracking_server_loses_nothing(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        process = start_training(
            tmp_path,
            "trainer.epochs=15",  # Time for the kill to land before the run ends.
            f"tracking.uri={server.url}",
            "data.limit=1000",
            # The user's own setting is kept: MLflow's default 7 would wait ~4 minutes here.
            env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"},
        )
        client = MlflowClient(server.url)
        run_id = wait_for_epoch(client, process, 1)
        server.stop(signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        assert "stopped answering" in stderr
        [kept] = (tmp_path / "hydra").glob("offline-*")
        assert f"python -m src.replay {kept}" in stderr

        # The server comes back on the same store; the kept run is sent into it.
        server = MlflowServer(tmp_path / "server", port=server.port).start()
        replay = subprocess.run(
            [sys.executable, "-m", "src.replay", str(kept)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert replay.returncode == 0, replay.stderr[-3000:]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for name in ("loss", "val_accuracy", "epoch_seconds"):
            steps = sorted(m.step for m in client.get_metric_history(run_id, name))
            assert steps == list(range(1, 16)), name
        assert "test_accuracy" in run.data.metrics
        assert run.data.tags["model_uri"].startswith("models:/")
        paths = {item.path for item in client.list_artifacts(run_id, "evaluation")}
        assert "evaluation/confusion_matrix.csv" in paths
        assert not kept.exists() and kept.with_name(f"{kept.name}.sent").exists()
    finally:
        server.stop()


def test_a_sweep_waits_out_a_restart_of_its_server(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        process = start_training(
            tmp_path,
            f"tracking.uri={server.url}",
            "tracking.log_model=false",
            "data.limit=1000",
            "trainer.epochs=3",
            "trainer.seed=1,2",
            multirun=True,
        )
        client = MlflowClient(server.url)
        wait_for_epoch(client, process, 1)
        server.stop()
        # Down for longer than a command's first look at its store would wait: job 0 closes its
        # run meanwhile, and waits for the server.
        time.sleep(20)
        server = MlflowServer(tmp_path / "server", port=server.port).start()
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        assert "stopped answering" not in stderr
        experiment = client.get_experiment_by_name("mnist-cnn").experiment_id
        runs = client.search_runs([experiment])
        [parent] = [run for run in runs if run.data.tags.get("sweep_role") == "parent"]
        jobs = [run for run in runs if run.data.tags.get("sweep_role") != "parent"]
        assert parent.info.status == "FINISHED" and len(jobs) == 2
        assert_every_record(client, jobs, epochs=3)
    finally:
        server.stop()


def test_a_sweeps_job_waits_for_its_store_where_a_command_fails_at_once(tmp_path):
    server = MlflowServer(tmp_path / "server")  # Not started yet.
    code = (
        "import sys\nfrom src import tracking\n"
        "try:\n    tracking.prepare_store(sys.argv[1], 'mnist-cnn', sys.argv[2] == 'job')\n"
        "except tracking.TrackingError as error:\n    sys.exit(f'error: {error}')"
    )

    def open_store(who: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-c", code, server.url, who]
        return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)

    job, command = open_store("job"), open_store("command")
    try:
        _, stderr = command.communicate(timeout=120)
        assert command.returncode == 1
        assert "no tracking server answers there" in stderr.strip().splitlines()[-1]
        assert job.poll() is None  # Still waiting for the server.
        server.start()
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-3000:]
        assert MlflowClient(server.url).get_experiment_by_name("mnist-cnn") is not None
    finally:
        job.kill()  # Only if a failed check left it waiting.
        server.stop()


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    # Each process imports MLflow, then waits for the same signal to open the new store, so
    # that they create it at the same moment (without the creation lock 3 of 4 failed).
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    go = tmp_path / "go"
    code = (
        "import sys, time; from pathlib import Path; from src import tracking; "
        f"Path(sys.argv[1]).touch(); go = Path({str(go)!r})\n"
        "while not go.exists(): time.sleep(0.01)\n"
        f"print(tracking.prepare_store({store!r}, 'shared')[1])"
    )
    ready = [tmp_path / f"ready-{index}" for index in range(4)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(flag)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = [process.communicate(timeout=120) for process in processes]
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    client = MlflowClient(store)
    [experiment] = [e for e in client.search_experiments() if e.name == "shared"]
    assert {stdout.strip() for stdout, _ in results} == {experiment.experiment_id}


def test_twelve_jobs_on_four_workers_lose_nothing(tmp_path):
    result = sweep(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "trainer.epochs=2",
        "data.limit=200",
        "trainer.seed=range(12)",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "locked" not in result.stderr
    client, [parent], jobs = runs_of(tmp_path)
    assert len(jobs) == 12 and parent.data.metrics["jobs_finished"] == 12
    assert_every_record(client, jobs, epochs=2)


def test_the_run_of_a_killed_process_is_closed_by_the_next_process_that_opens_the_store(tmp_path):
    client, process, run_id = training_at_epoch_one(tmp_path, "trainer.epochs=30")
    process.kill()  # SIGKILL: nothing runs in the training process.
    process.wait(timeout=30)
    assert client.get_run(run_id).info.status == "RUNNING"
    tracking.prepare_store(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "another")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == f"its process ({process.pid}) ended without closing it"
    assert 1 in [m.step for m in client.get_metric_history(run_id, "val_loss")]
