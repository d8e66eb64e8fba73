"""Scale-out for real (``make test-cluster``, as root): the team server (``make server``:
PostgreSQL and ``mlflow server``), sweeps through the one-node SLURM (``make slurm-up``) into
it, many writers at once, a server restart, ``scancel`` and a time limit, moving a SQLite store
in, and basic auth."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.conftest import FIXTURE_DIR, PROJECT_ROOT
from tests.mlflow_server import free_port
from tests.test_sweep import assert_every_record

pytestmark = pytest.mark.cluster


def make(
    *arguments: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", *arguments],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class TeamServer:
    """``make server`` in a folder of its own (one every user can enter: PostgreSQL runs as
    the postgres user when the tests run as root), on a free port."""

    def __init__(self, auth: bool = False, allowed_hosts: str = "") -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="team-server-"))
        self.folder.chmod(0o755)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = [f"SERVER_DIR={self.folder}", f"PORT={self.port}", f"AUTH={int(auth)}"]
        self.settings.append(f"ALLOWED_HOSTS={allowed_hosts}")

    def start(self) -> TeamServer:
        started = make("server", *self.settings)
        assert started.returncode == 0, started.stderr[-3000:]
        assert f"Tracking server: {self.url}" in started.stdout
        return self

    def stop(self) -> None:
        stopped = make("server-stop", *self.settings)
        assert stopped.returncode == 0, stopped.stderr[-3000:]


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    was_up = shutil.which("sinfo") is not None and _answers(["sinfo"])
    started = make("slurm-up")
    assert started.returncode == 0, started.stderr[-3000:]
    yield
    if not was_up:
        make("slurm-down")


def _answers(command: list[str]) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def server() -> Iterator[TeamServer]:
    running = TeamServer().start()
    yield running
    running.stop()
    shutil.rmtree(running.folder, ignore_errors=True)


def train(
    tmp_path: Path, server: TeamServer, experiment: str, *overrides: str
) -> subprocess.Popen[str]:
    """A sweep (``-m``) into the team server, on the fixture data."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "src.train",
            "-m",
            "tracking=server",
            f"tracking.uri={server.url}",
            f"tracking.experiment={experiment}",
            f"data.dir={FIXTURE_DIR}",
            "trainer.verbose=0",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *overrides,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: int = 900) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def runs_in(server: TeamServer, experiment: str) -> tuple[MlflowClient, list, list]:
    """The experiment's parent runs and job runs, read through the server."""
    client = MlflowClient(server.url)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000) if found else []
    parents = [run for run in runs if run.data.tags.get("sweep_role") == "parent"]
    jobs = [run for run in runs if run.data.tags.get("sweep_role") != "parent"]
    return client, parents, jobs


def wait_for_job_epoch(
    server: TeamServer, experiment: str, process: subprocess.Popen[str], job: int | None = None
) -> object:
    """Wait until a job's run (``job``: that one) has logged epoch 1; return the run."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        client, _, jobs = runs_in(server, experiment)
        for run in jobs:
            if job is not None and run.data.tags.get("sweep_job") != str(job):
                continue
            if client.get_metric_history(run.info.run_id, "val_loss"):
                return run
        time.sleep(1)
    raise AssertionError("no job reached epoch 1")


def test_the_cluster_stops_and_starts_again_at_once(slurm):
    before = _daemons()
    # Output captured, as by CI: a daemon left holding the pipe would hang make here.
    stopped = make("slurm-down", timeout=120)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert _daemons() == {}
    started = make("slurm-up", timeout=120)
    assert started.returncode == 0, started.stderr[-3000:]
    after = _daemons()
    assert set(after) == {"slurmctld", "slurmd"}
    assert all(after[name] != before[name] for name in after)  # Started anew.
    assert _answers(["sinfo"])


def _daemons() -> dict[str, str]:
    """SLURM's running daemons and their process ids."""
    pids = {
        name: subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.strip()
        for name in ("slurmctld", "slurmd")
    }
    return {name: pid for name, pid in pids.items() if pid}


def test_a_slurm_sweep_records_every_job_in_the_team_server(tmp_path, slurm, server):
    process = train(
        tmp_path,
        server,
        "slurm-sweep",
        "hydra/launcher=slurm",
        "data.limit=400",
        "optimizer=adam,sgd",
        "loss=sparse,categorical",
    )
    code, stdout, stderr = finish(process)
    assert code == 0, stderr[-3000:]
    assert f"{server.url}/#/experiments/" in stdout

    client, [parent], jobs = runs_in(server, "slurm-sweep")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["launcher"] == "SlurmLauncher"
    assert parent.data.metrics["jobs_finished"] == 4
    assert len(jobs) == 4
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    slurm_ids = {run.data.tags["slurm_job_id"] for run in jobs}
    assert len(slurm_ids) == 4
    assert all(re.fullmatch(r"\d+_\d", job_id) for job_id in slurm_ids)  # One array, 4 tasks.
    assert_every_record(client, jobs, epochs=1)
    for run in jobs:
        paths = {item.path for item in client.list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/confusion_matrix.csv" in paths
    # The best job's model, registered by the sweep, is served from the team server.
    mlflow.set_tracking_uri(server.url)
    model = mlflow.pyfunc.load_model("models:/slurm-sweep@best")
    probabilities = np.asarray(model.predict(np.zeros((3, 28, 28, 1), dtype=np.float32)))
    assert probabilities.shape == (3, 10)


def test_a_sweep_of_local_jobs_runs_each_job_in_its_own_process(tmp_path, server):
    process = train(
        tmp_path, server, "local-jobs", "hydra/launcher=local_jobs", "data.limit=400",
        "optimizer=adam,sgd", "tracking.log_model=false",
    )  # fmt: skip
    code, _, stderr = finish(process)
    assert code == 0, stderr[-3000:]
    client, [parent], jobs = runs_in(server, "local-jobs")
    assert parent.data.tags["launcher"] == "LocalLauncher"
    assert len({run.data.tags["process.pid"] for run in jobs}) == 2
    assert_every_record(client, jobs, epochs=1)


def test_eight_writers_at_once_lose_nothing(server):
    written = subprocess.run(
        [sys.executable, "benchmarks/writers.py", server.url, "--writers", "8", "--runs", "3"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert written.returncode == 0, written.stderr[-3000:]
    figures = json.loads(written.stdout.splitlines()[-1])
    assert figures["failed_writers"] == 0 and figures["lost"] == 0
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(figures["experiment"]).experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    assert len(runs) == 24 and {run.info.status for run in runs} == {"FINISHED"}


def test_a_server_restarted_during_a_sweep_loses_no_job(tmp_path, slurm, server):
    process = train(
        tmp_path,
        server,
        "restart",
        "hydra/launcher=slurm",
        "trainer.epochs=5",
        "tracking.log_model=false",
        "optimizer=adam,sgd",
        "loss=sparse,categorical",
    )
    wait_for_job_epoch(server, "restart", process)
    server.stop()
    # Down for 20 s, longer than a command's first look at its store would wait: the first two
    # jobs close their runs meanwhile, and wait for the server.
    time.sleep(20)
    server.start()
    code, _, stderr = finish(process)
    assert code == 0, stderr[-3000:]
    client, [parent], jobs = runs_in(server, "restart")
    assert parent.info.status == "FINISHED"
    assert len(jobs) == 4
    assert_every_record(client, jobs, epochs=5)


def test_a_cancelled_slurm_job_ends_killed_and_the_sweep_goes_on(tmp_path, slurm, server):
    process = train(
        tmp_path,
        server,
        "scancel",
        "hydra/launcher=slurm",
        "data.limit=400",
        "tracking.log_model=false",
        "trainer.epochs=2,400",
    )
    long_job = wait_for_job_epoch(server, "scancel", process, job=1)
    subprocess.run(["scancel", long_job.data.tags["slurm_job_id"]], check=True)
    code, _, stderr = finish(process)
    assert code == 1
    assert "error: 1 of 2 jobs killed: job 1 (trainer.epochs=400)" in stderr

    client, [parent], jobs = runs_in(server, "scancel")
    assert parent.data.metrics["jobs_killed"] == 1 and parent.data.metrics["jobs_finished"] == 1
    killed = client.get_run(long_job.info.run_id)
    assert killed.info.status == "KILLED"
    assert "SIGTERM" in killed.data.tags["error"]
    assert client.get_metric_history(killed.info.run_id, "val_loss")  # Its epochs stay.
    [finished] = [run for run in jobs if run.info.run_id != long_job.info.run_id]
    assert finished.info.status == "FINISHED"


def test_a_slurm_job_out_of_time_ends_with_the_reason_and_the_sweep_goes_on(
    tmp_path, slurm, server
):
    process = train(
        tmp_path,
        server,
        "time-limit",
        "hydra/launcher=slurm",
        # SLURM may warn up to 60 s before the time asked (seen: 13 s into a 1-minute job, before
        # the run opened); 2 minutes let the job open its run first.
        "hydra.launcher.timeout_min=2",
        "hydra.launcher.signal_delay_s=20",
        "data.limit=400",
        "tracking.log_model=false",
        "trainer.epochs=5000",
    )
    code, _, stderr = finish(process)
    assert code == 1, stderr[-3000:]
    _, [parent], [job] = runs_in(server, "time-limit")
    assert parent.info.status == "FAILED"
    assert job.info.status in ("FAILED", "KILLED")
    assert "timed-out" in job.data.tags["error"] or "SIGTERM" in job.data.tags["error"]


def test_an_optuna_study_on_the_servers_postgresql_takes_trials_from_slurm_jobs(
    tmp_path, slurm, server
):
    storage = f"postgresql+psycopg://mlflow@/optuna?host={server.folder / 'postgres'}"
    process = train(
        tmp_path,
        server,
        "optuna-on-slurm",
        "hparams_search=optuna",
        "hydra/launcher=slurm",
        f"hydra.sweeper.storage='{storage}'",
        "hydra.sweeper.study_name=on-slurm",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "data.limit=400",
        "tracking.log_model=false",
    )
    code, _, stderr = finish(process)
    assert code == 0, stderr[-3000:]
    study = optuna.load_study(study_name="on-slurm", storage=storage)
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    _, [parent], jobs = runs_in(server, "optuna-on-slurm")
    assert sorted(run.data.tags["optuna.trial"] for run in jobs) == ["0", "1"]
    assert {run.data.tags["slurm_job_id"] for run in jobs}  # Both ran as SLURM jobs.
    best = min(study.trials, key=lambda trial: (-trial.value, trial.number))  # First of a tie.
    assert parent.data.tags["optuna.best_trial"] == str(best.number)
    [best_run] = [run for run in jobs if run.data.tags["optuna.trial"] == str(best.number)]
    assert parent.data.tags["best_run_id"] == best_run.info.run_id  # The sweep's table agrees.


def test_the_runs_of_a_sqlite_store_move_into_the_team_server(tmp_path, server):
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    swept = subprocess.run(
        [
            sys.executable, "-m", "src.train", "-m", f"tracking.uri={store}",
            "tracking.experiment=moving", f"data.dir={FIXTURE_DIR}", "data.limit=400",
            "trainer.verbose=0", "trainer.epochs=2", "optimizer=adam,sgd",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert swept.returncode == 0, swept.stderr[-3000:]
    command = [sys.executable, "-m", "src.migrate", "--from", store, "--to", server.url]
    moved = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "3 runs copied, 0 already there, 1 model versions registered" in moved.stdout

    source, target = MlflowClient(store), MlflowClient(server.url)
    experiment = source.get_experiment_by_name("moving").experiment_id
    copies = {
        run.data.tags["migrated_from"]: run
        for run in target.search_runs([target.get_experiment_by_name("moving").experiment_id])
    }
    ids = {old: copy.info.run_id for old, copy in copies.items()}
    for run in source.search_runs([experiment]):
        copy = copies[run.info.run_id]
        assert copy.info.status == run.info.status
        assert (copy.info.start_time, copy.info.end_time) == (
            run.info.start_time,
            run.info.end_time,
        )
        assert copy.data.params == run.data.params
        for key, value in run.data.tags.items():
            assert copy.data.tags[key] == ids.get(value, value) or key == "model_uri", key
        for key in run.data.metrics:
            history = [(m.step, m.value) for m in source.get_metric_history(run.info.run_id, key)]
            moved_history = target.get_metric_history(copy.info.run_id, key)
            assert sorted((m.step, m.value) for m in moved_history) == sorted(history), key
        assert _artifact_paths(target, copy.info.run_id) == _artifact_paths(source, run.info.run_id)
    jobs = [copy for copy in copies.values() if "mlflow.parentRunId" in copy.data.tags]
    [parent] = [copy for copy in copies.values() if copy not in jobs]
    assert {job.data.tags["mlflow.parentRunId"] for job in jobs} == {parent.info.run_id}
    mlflow.set_tracking_uri(server.url)
    for job in jobs:
        model = mlflow.pyfunc.load_model(job.data.tags["model_uri"])
        assert np.asarray(model.predict(np.zeros((2, 28, 28, 1), dtype=np.float32))).shape == (
            2,
            10,
        )
    best = target.get_model_version_by_alias("moving", "best")
    assert best.run_id == parent.data.tags["best_run_id"]

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert "0 runs copied, 3 already there, 0 model versions registered" in again.stdout


def _artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_a_server_with_basic_auth_takes_only_its_users_and_hosts(tmp_path):
    password = "s3cret-Pass-1234"
    credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    server = TeamServer(auth=True, allowed_hosts="team.example")
    without = make("server", *server.settings, env={"MLFLOW_TRACKING_PASSWORD": ""})
    assert without.returncode != 0
    assert "AUTH=1 needs MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in without.stderr
    os.environ.update(credentials)
    try:
        server.start()
        wrong = {**os.environ, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
        single = [sys.executable, "-m", "src.train", f"tracking.uri={server.url}"]
        single += [f"data.dir={FIXTURE_DIR}", "data.limit=400", "trainer.verbose=0"]
        refused = subprocess.run(
            single, cwd=tmp_path, env=wrong, capture_output=True, text=True, timeout=600
        )
        assert refused.returncode == 1
        [line] = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert "refused the credentials (HTTP 401)" in line
        assert "not-the-password" not in refused.stdout + refused.stderr
        taken = subprocess.run(single, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert taken.returncode == 0, taken.stderr[-3000:]
        assert password not in taken.stdout + taken.stderr
        client = MlflowClient(server.url)
        [run] = client.search_runs([client.get_experiment_by_name("mnist-cnn").experiment_id])
        assert run.info.status == "FINISHED"
        assert password not in json.dumps([run.data.params, run.data.tags])
        # The names it was told, and localhost; no other Host header.
        api = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
        for host, status in ((f"team.example:{server.port}", 200), ("elsewhere.example", 403)):
            answer = requests.get(api, headers={"Host": host}, auth=("admin", password), timeout=20)
            assert answer.status_code == status, (host, answer.text[:300])
    finally:
        server.stop()
        for key in credentials:
            os.environ.pop(key, None)
        shutil.rmtree(server.folder, ignore_errors=True)
