"""The command line itself, run for real in a subprocess with every output under tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import psutil
from mlflow.tracking import MlflowClient

from tests.conftest import FIXTURE_DIR


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """The command, in a process group of its own; it must leave no process of that group
    behind (MLflow's git look-ups start child processes)."""
    command = [
        sys.executable,
        "-m",
        "src.train",
        f"data.dir={FIXTURE_DIR}",
        f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "trainer.verbose=2",
        *overrides,
    ]
    # Not the project root as the working folder: the command works from anywhere.
    with subprocess.Popen(
        command, cwd=tmp_path, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True
    ) as process:
        stdout, stderr = process.communicate(timeout=300)
    left = [p.name() for p in psutil.process_iter() if _group(p.pid) == process.pid]
    assert not left, f"left running: {left}"
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


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
    # The address printed opens the experiment's runs table in the UI's model-training view.
    page = f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert f"open http://127.0.0.1:5000{page}" in result.stdout
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # Quiet: no TensorFlow, absl, CUDA or MLflow start-up lines, only the epochs and a summary.
    noise = ("cuda", "absl", "oneDNN", "I0000", "E0000", "INFO mlflow", "alembic")
    assert not [line for line in result.stderr.splitlines() if any(n in line for n in noise)]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    # The job's result.json, for scripts: what it trained, where, and what it cost.
    outcome = json.loads((tmp_path / "hydra" / "result.json").read_text())
    assert outcome["status"] == "finished" and outcome["run_id"] == run.info.run_id
    assert outcome["metrics"]["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert outcome["job_seconds"] > 0
    assert outcome["process_cpu_seconds"] > 1  # TensorFlow's import alone takes more.
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


def run_help(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "src.train", *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_groups_and_the_composed_config_without_loading_tensorflow(tmp_path):
    fast = run_help(tmp_path, "optimizer=sgd", "--help")
    assert fast.returncode == 0, fast.stderr
    assert "optimizer: adam, sgd" in fast.stdout
    assert "loss: categorical, sparse" in fast.stdout
    assert "schema/" not in fast.stdout  # The schemas are not options.
    assert "_target_: keras.optimizers.SGD" in fast.stdout  # Composed with the override.
    # Hydra's own help (it answers --resolve), from the same template, says the same.
    hydra_help = run_help(tmp_path, "optimizer=sgd", "--help", "--resolve")
    assert hydra_help.returncode == 0, hydra_help.stderr
    assert "optimizer: adam, sgd" in hydra_help.stdout
    assert "_target_: keras.optimizers.SGD" in hydra_help.stdout
    # Neither TensorFlow nor MLflow is loaded to answer.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from src import usage; usage.print_help(['--help']); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().splitlines()[-1] == "[]"


def test_a_bad_override_with_help_gets_a_short_error(tmp_path):
    result = run_help(tmp_path, "optimizer=nope", "--help")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "Could not find 'optimizer/nope'" in result.stderr
    assert "Traceback" not in result.stderr
