"""Sweeps run as real commands: a parent run with nested job runs, failures, resume, parallel
workers writing into one SQLite store, and the compare command (Optuna: test_search.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from src import compare
from tests.conftest import FIXTURE_DIR


def sweep(tmp_path: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            "-m",
            f"data.dir={FIXTURE_DIR}",
            "data.limit=400",
            "trainer.verbose=0",
            "tracking.log_model=false",
            f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runs_of(tmp_path: Path) -> tuple[MlflowClient, list, list]:
    """The store's parent runs and job runs."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist-cnn")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("sweep_role") == "parent"]
    jobs = [run for run in runs if run.data.tags.get("sweep_role") != "parent"]
    return client, parents, jobs


EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds")


def assert_every_record(client: MlflowClient, jobs: list, epochs: int) -> None:
    """Every job finished with one value per epoch of every metric, and its test metrics."""
    for run in jobs:
        assert run.info.status == "FINISHED"
        for name in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
            assert steps == list(range(1, epochs + 1)), (run.info.run_id, name)
        assert {"test_loss", "test_accuracy"} <= set(run.data.metrics)


def test_grid_sweep_nests_every_job_under_one_parent(tmp_path):
    result = sweep(
        tmp_path, "optimizer=adam,sgd", "loss=sparse,categorical", "model.dense_dropout=0.3,0.5"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, [parent], jobs = runs_of(tmp_path)
    assert len(jobs) == 8
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    assert {run.data.tags["sweep_id"] for run in jobs} == {parent.info.run_id}
    assert sorted(int(run.data.tags["sweep_job"]) for run in jobs) == list(range(8))
    assert {run.info.status for run in jobs} == {"FINISHED"}
    combos = {
        (
            r.data.params["optimizer.name"],
            r.data.params["loss.name"],
            r.data.params["model.dense_dropout"],
        )
        for r in jobs
    }
    assert len(combos) == 8

    assert parent.info.status == "FINISHED"
    metrics = parent.data.metrics
    assert (metrics["jobs_total"], metrics["jobs_finished"], metrics["jobs_failed"]) == (8, 8, 0)
    best = max(jobs, key=lambda run: run.data.metrics["val_accuracy"])
    assert metrics["best_val_accuracy"] == pytest.approx(best.data.metrics["val_accuracy"])
    assert parent.data.tags["best_run_id"] in {run.info.run_id for run in jobs}
    assert parent.data.tags["sweep_overrides"].endswith(
        "optimizer=adam,sgd loss=sparse,categorical model.dense_dropout=0.3,0.5"
    )
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "comparison")}
    assert artifacts == {
        "comparison/comparison.csv",
        "comparison/comparison.txt",
        "comparison/validation_curves.png",
    }
    table = Path(
        client.download_artifacts(parent.info.run_id, "comparison/comparison.csv")
    ).read_text()
    assert len(table.strip().splitlines()) == 9  # Header and one row per job.
    assert "Runs by val_accuracy" in result.stdout


def test_a_failed_job_does_not_stop_the_others_and_resume_reuses_finished_jobs(tmp_path):
    # data.limit=5000 is more than the fixture's 2,000 training images: that job fails.
    first = sweep(tmp_path, "data.limit=300,5000,400")
    assert first.returncode == 1
    last_line = first.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: 1 of 3 jobs failed: job 1 (data.limit=5000)")
    _, [parent], jobs = runs_of(tmp_path)
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_failed"] == 1 and parent.data.metrics["jobs_finished"] == 2
    assert (
        "data.limit=5000 exceeds the 2000 training images" in parent.data.tags["jobs_failed_list"]
    )
    # The failing job stopped at its data, before opening a run; the parent names it.
    assert sorted(run.info.status for run in jobs) == ["FINISHED", "FINISHED"]

    # The same sweep again: the two finished jobs are reused, not trained again.
    second = sweep(tmp_path, "data.limit=300,5000,400")
    assert second.returncode == 1
    assert second.stdout.count("reusing finished run") == 2
    _, [resumed], jobs = runs_of(tmp_path)
    assert resumed.info.run_id == parent.info.run_id
    assert resumed.data.tags["sweep_resumed"] == "true"
    assert resumed.data.metrics["jobs_reused"] == 2
    assert sorted(run.info.status for run in jobs) == ["FINISHED", "FINISHED"]

    # sweep.rerun=true trains everything again, as a new sweep.
    third = sweep(tmp_path, "data.limit=300,400", "sweep.rerun=true")
    assert third.returncode == 0, third.stderr[-2000:]
    assert "reusing" not in third.stdout
    _, parents, jobs = runs_of(tmp_path)
    assert len(parents) == 2 and len(jobs) == 4


@pytest.mark.slow
def test_parallel_workers_lose_no_run_metric_or_artifact(tmp_path):
    result = sweep(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "trainer.epochs=2",
        "data.limit=200",
        "trainer.seed=1,2,3,4,5,6,7,8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
    client, [parent], jobs = runs_of(tmp_path)
    assert len(jobs) == 8 and parent.data.metrics["jobs_finished"] == 8
    assert parent.data.tags["launcher"] == "JoblibLauncher"
    assert_every_record(client, jobs, epochs=2)
    for run in jobs:
        paths = {item.path for item in client.list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/confusion_matrix.csv" in paths


def run_compare(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``python -m src.compare`` on the test's store."""
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    return subprocess.run(
        [sys.executable, "-m", "src.compare", "--tracking-uri", store, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_compare_prints_the_best_first_and_logs_to_the_sweep(tmp_path):
    assert sweep(tmp_path, "optimizer=adam,sgd").returncode == 0
    result = run_compare(tmp_path, "--sweep", "latest", "--plot", str(tmp_path / "curves.png"))
    assert result.returncode == 0, result.stderr
    _, [_parent], jobs = runs_of(tmp_path)
    lines = result.stdout.splitlines()
    # Of tied jobs the one started first ranks first.
    best = min(jobs, key=lambda run: (-run.data.metrics["val_accuracy"], run.info.start_time))
    first_row = next(line for line in lines if line.startswith("1 "))
    assert best.info.run_id in first_row and best.data.params["optimizer.name"] in first_row
    header = next(line for line in lines if line.startswith("rank"))
    assert "optimizer.name" in header and "optimizer.beta_1" not in header
    assert (tmp_path / "curves.png").stat().st_size > 1000

    filtered = run_compare(tmp_path, "--filter", "params.`optimizer.name` = 'rmsprop'")
    assert not (tmp_path / "comparison.png").exists()  # Nothing written for no runs.
    assert filtered.returncode == 1
    assert (
        filtered.stderr.strip()
        .splitlines()[-1]
        .startswith("error: no runs in experiment 'mnist-cnn' matching")
    )


def test_the_table_keeps_only_differing_params_and_sorts_by_direction():
    import pandas as pd

    runs = pd.DataFrame(
        {
            "run_id": ["d", "a", "b", "c"],
            "status": ["FINISHED", "FINISHED", "FINISHED", "FAILED"],
            "start_time": pd.to_datetime([4, 1, 2, 3], unit="s"),  # Newest first, as searched.
            "tags.mlflow.runName": ["lr=0.2", "lr=0.1", "lr=0.01", "lr=1"],
            "params.optimizer.learning_rate": ["0.2", "0.1", "0.01", "1"],
            "params.trainer.epochs": ["1", "1", "1", "1"],
            "params.tracking.uri": ["w", "x", "y", "z"],
            "metrics.val_loss": [0.2, 0.5, 0.2, None],
        }
    )
    rows = compare.table(runs, "val_loss")
    # Lowest loss first, the earlier of a tie first, none last.
    assert rows["run_id"].tolist() == ["b", "d", "a", "c"]
    runs["tags.optuna.trial"] = ["0", None, "1", None]  # Optuna's trial order wins a tie.
    assert compare.table(runs, "val_loss")["run_id"].tolist() == ["d", "b", "a", "c"]
    text = compare.to_text(rows, "val_loss")
    assert text.splitlines()[0] == "Runs by val_loss (lowest first):"
    header = text.splitlines()[1].split()
    assert header[:4] == ["rank", "run", "status", "optimizer.learning_rate"]
    assert "trainer.epochs" not in header and "tracking.uri" not in header


def test_a_sweep_registers_its_best_jobs_model_unless_told_not_to(tmp_path):
    result = sweep(tmp_path, "optimizer=adam,sgd", "tracking.log_model=true", "data.limit=300")
    assert result.returncode == 0, result.stderr[-3000:]
    client, [parent], _ = runs_of(tmp_path)
    best = client.get_model_version_by_alias("mnist-cnn", "best")
    assert best.run_id == parent.data.tags["best_run_id"]
    assert f"Best job {parent.data.tags['best_job']}: Registered as version 1" in result.stdout

    again = sweep(tmp_path, "optimizer=sgd", "tracking.log_model=true", "tracking.register=false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(client.search_model_versions("name = 'mnist-cnn'")) == 1


def test_a_sweep_over_seeds_compares_its_configs_and_registers_the_best_ones_best_seed(tmp_path):
    result = sweep(
        tmp_path, "optimizer=adam,sgd", "sweep.seeds=2", "tracking.log_model=true", "data.limit=300"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, [parent], jobs = runs_of(tmp_path)
    configs = sorted((r.data.params["optimizer.name"], r.data.params["trainer.seed"]) for r in jobs)
    assert configs == [("adam", "42"), ("adam", "43"), ("sgd", "42"), ("sgd", "43")]

    # The best config by its mean over the seeds; its best seed is the one registered.
    tags = parent.data.tags
    by_optimizer: dict[str, list] = {}
    for run in jobs:
        by_optimizer.setdefault(run.data.params["optimizer.name"], []).append(run)
    means = {
        name: sum(run.data.metrics["val_accuracy"] for run in runs) / len(runs)
        for name, runs in by_optimizer.items()
    }
    best_optimizer = tags["best_group"].rsplit("optimizer.name=", 1)[1]
    assert means[best_optimizer] == max(means.values())
    assert parent.data.metrics["best_group_val_accuracy_mean"] == pytest.approx(
        means[best_optimizer]
    )
    best = next(run for run in jobs if run.info.run_id == tags["best_run_id"])
    assert best.data.params["optimizer.name"] == best_optimizer
    assert best.data.metrics["val_accuracy"] == max(
        run.data.metrics["val_accuracy"] for run in by_optimizer[best_optimizer]
    )
    assert client.get_model_version_by_alias("mnist-cnn", "best").run_id == best.info.run_id
    seed, job = best.data.params["trainer.seed"], tags["best_job"]
    assert f"Best config's best seed, {seed} (job {job}): Registered as version 1" in result.stdout
    assert "Configs by mean val_accuracy over their seeds" in result.stdout
    assert f"Best: {tags['best_group']}, val_accuracy " in result.stdout
    logged = {item.path for item in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {
        "comparison/groups.csv",
        "comparison/groups.txt",
        "comparison/validation_curves.png",
    } <= logged

    compared = run_compare(tmp_path, "--sweep", "latest", "--plot", str(tmp_path / "groups.png"))
    assert compared.returncode == 0, compared.stderr
    assert compared.stdout.splitlines()[0].startswith(
        "Configs by mean val_accuracy over their seeds"
    )
    assert (tmp_path / "groups.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.seed=1,2"],
            "error: sweep.seeds=3 and a sweep over trainer.seed both choose the seeds: give one",
        ),
        (
            ["hparams_search=optuna"],
            "error: sweep.seeds=3 repeats the combinations of a grid sweep, and the "
            "OptunaSweeper chooses its own trials",
        ),
    ],
)
def test_seeds_a_sweep_cannot_repeat_are_refused_before_any_job(tmp_path, overrides, message):
    done = sweep(tmp_path, "sweep.seeds=3", *overrides)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(message)
    assert not (tmp_path / "store").exists()
