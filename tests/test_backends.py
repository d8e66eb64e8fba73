"""Keras's backend (TensorFlow or JAX) and the device: chosen by the config, recorded with the
run, refused in one line where they cannot be had. The test process trains on TensorFlow; JAX
runs in processes of their own, as a backend cannot change inside one process."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from src import backend
from src.train import train
from tests.conftest import FIXTURE_DIR, PROJECT_ROOT, compose_config
from tests.test_sweep import runs_of, sweep


def score(tracking_uri: str, model_uri: str) -> tuple[str, float]:
    """Load a logged model through MLflow in this process and score it on the fixture's test
    images: the backend that ran it and its accuracy."""
    import keras
    import mlflow

    from src import data

    cfg = compose_config().data
    raw = data.load_mnist(FIXTURE_DIR, cfg.cache_dir, cfg.url, cfg.sha256)
    splits = data.prepare(raw, val_fraction=0.1, seed=42, one_hot=False)
    mlflow.set_tracking_uri(tracking_uri)
    probabilities = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(splits.x_test))
    accuracy = float(np.mean(probabilities.argmax(axis=1) == splits.test_labels))
    return keras.backend.backend(), accuracy


def score_on(keras_backend: str, tracking_uri: str, model_uri: str) -> tuple[str, float]:
    """:func:`score` in a process of its own, on ``keras_backend``."""
    call = f"score({tracking_uri!r}, {model_uri!r})"
    code = f"import json; from tests.test_backends import score; print(json.dumps({call}))"
    env = {**os.environ, "KERAS_BACKEND": keras_backend}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    name, accuracy = json.loads(done.stdout.splitlines()[-1])
    return name, accuracy


def train_command(tmp_path: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            f"data.dir={FIXTURE_DIR}",
            "trainer.verbose=0",
            f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
        ],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_cpu_device(tag: str) -> None:
    cores = len(os.sched_getaffinity(0))
    assert tag.startswith("CPU: ") and tag.endswith(f", {cores} cores"), tag


def test_a_tensorflow_run_records_backend_and_device_and_its_model_scores_on_jax(
    tiny_config, store_uri
):
    result = train(tiny_config())
    run = MlflowClient(store_uri).get_run(result.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["backend.name"] == params["keras.backend"] == "tensorflow"
    assert params["keras.backend_version"] == importlib.metadata.version("tensorflow")
    assert params["keras.version"] == importlib.metadata.version("keras")
    assert params["trainer.device"] == "auto"
    assert_cpu_device(tags["device"])

    recorded = run.data.metrics["test_accuracy"]
    assert score(store_uri, result.model_uri) == ("tensorflow", pytest.approx(recorded))
    name, accuracy = score_on("jax", store_uri, result.model_uri)
    assert name == "jax"
    assert accuracy == pytest.approx(recorded, abs=1 / 500)  # At most 1 of 500 digits flips.


def test_a_jax_run_records_backend_and_device_and_its_model_scores_on_tensorflow(
    tmp_path, store_uri, jax_cache
):
    done = train_command(tmp_path, "backend=jax")
    assert done.returncode == 0, done.stderr
    assert "Trained with Keras on jax, on CPU: " in done.stdout
    assert any(jax_cache.iterdir())  # The user's JAX_COMPILATION_CACHE_DIR, not the default.
    _, _, [run] = runs_of(tmp_path)
    params = run.data.params
    assert params["backend.name"] == params["keras.backend"] == "jax"
    assert params["keras.backend_version"] == importlib.metadata.version("jax")
    assert_cpu_device(run.data.tags["device"])
    model_uri = run.data.tags["model_uri"]
    mlflow.set_tracking_uri(store_uri)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri))
    assert f"jax=={importlib.metadata.version('jax')}" in requirements.read_text().split()

    recorded = run.data.metrics["test_accuracy"]
    assert score_on("jax", store_uri, model_uri) == ("jax", pytest.approx(recorded))
    name, accuracy = score(store_uri, model_uri)
    assert name == "tensorflow"
    assert accuracy == pytest.approx(recorded, abs=1 / 500)


def test_a_second_jax_run_of_a_config_compiles_nothing_the_first_compiled(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")  # The default: ~/.cache/jax.
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    home = tmp_path / "home"
    env = {"HOME": str(home), "JAX_EXPLAIN_CACHE_MISSES": "1"}  # JAX names every miss.
    runs = [
        train_command(tmp_path, "backend=jax", "tracking.enabled=false", "data.limit=300", **env)
        for _ in range(2)
    ]
    for done in runs:
        assert done.returncode == 0, done.stderr
    first, second = (done.stdout.count("PERSISTENT COMPILATION CACHE MISS") for done in runs)
    assert first > 10  # The training, evaluation and prediction steps, the initializers ...
    assert second == 0
    assert len(list((home / ".cache" / "jax").iterdir())) >= first


def test_every_preset_sweeps_on_jax(tmp_path):
    done = sweep(tmp_path, "backend=jax", "experiment=fast,throughput")
    assert done.returncode == 0, done.stderr
    _, [parent], jobs = runs_of(tmp_path)
    assert parent.info.status == "FINISHED"
    assert sorted(job.data.params["trainer.steps_per_execution"] for job in jobs) == ["32", "8"]
    for job in jobs:
        assert job.info.status == "FINISHED"
        assert job.data.params["keras.backend"] == "jax"
        assert job.data.metrics["test_accuracy"] > 0.1


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib"]])
def test_a_sweep_over_backends_in_one_process_is_refused_before_any_job(tmp_path, launcher):
    done = sweep(tmp_path, "backend=tensorflow,jax", *launcher)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: a sweep over backend needs a process per job")
    assert "hydra/launcher=local_jobs" in line
    assert not (tmp_path / "store").exists()


def test_keras_backend_in_the_environment_chooses_the_default(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert compose_config().backend.name == "jax"
    assert compose_config(["backend=tensorflow"]).backend.name == "tensorflow"


def test_pytorch_is_refused_in_one_line(tmp_path):
    done = train_command(tmp_path, KERAS_BACKEND="torch")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: KERAS_BACKEND=torch is not offered: the project trains with tensorflow or "
        "jax; unset KERAS_BACKEND or set it to one of them"
    )
    assert not (tmp_path / "store").exists()


def test_another_backend_than_the_process_has_is_refused_before_anything_is_recorded(
    tiny_config, tmp_path
):
    with pytest.raises(backend.BackendError, match="already trains with tensorflow"):
        train(tiny_config("backend=jax"))
    assert not (tmp_path / "store").exists()


def test_a_gpu_that_is_not_there_stops_the_run_before_anything_is_recorded(tiny_config, tmp_path):
    with pytest.raises(backend.BackendError) as raised:
        train(tiny_config("trainer.device=gpu"))
    assert str(raised.value) == (
        "trainer.device=gpu, but tensorflow finds no GPU it can use: install GPU support with "
        "`make install GPU=1 BACKEND=tensorflow` (it needs the NVIDIA driver on the machine), "
        "or set trainer.device=auto"
    )
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("device", "warns"), [("auto", True), ("cpu", False)])
def test_an_nvidia_gpu_the_backend_cannot_use_is_named_in_one_warning(
    monkeypatch, capsys, device, warns
):
    import keras  # noqa: F401  (the process's backend, TensorFlow without CUDA libraries)

    monkeypatch.setattr(backend, "machine_has_nvidia_gpu", lambda: True)
    assert_cpu_device(backend.training_device(device))
    lines = capsys.readouterr().err.splitlines()
    expected = [
        "warning: this machine has an NVIDIA GPU, but tensorflow cannot use it and trains on "
        "the CPU: install GPU support with `make install GPU=1 BACKEND=tensorflow` (it needs "
        "the NVIDIA driver on the machine)"
    ]
    assert lines == (expected if warns else [])


@pytest.mark.slow
def test_a_sweep_over_backends_runs_each_job_in_its_own_process(tmp_path):
    done = sweep(tmp_path, "backend=tensorflow,jax", "hydra/launcher=local_jobs")
    assert done.returncode == 0, done.stderr
    _, [parent], jobs = runs_of(tmp_path)
    assert parent.info.status == "FINISHED"
    assert sorted(job.data.params["keras.backend"] for job in jobs) == ["jax", "tensorflow"]
    assert all(job.info.status == "FINISHED" for job in jobs)


@pytest.mark.slow
def test_the_gpu_check_runs_every_installed_backend_and_writes_its_table(tmp_path):
    # The script itself, on the CPU: the same runs as on a GPU, on 600 of the fixture's images.
    command = [sys.executable, "benchmarks/gpu.py", f"--data-dir={FIXTURE_DIR}", "--device=cpu"]
    command += ["--limit=600", f"--out={tmp_path}"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    expected = [
        (name, run, tracked)
        for name in ("tensorflow", "jax")
        for run, tracked in [
            ("default", True),
            ("default", False),
            ("experiment=fast", True),
            ("experiment=fast", False),
            ("plain program", False),
        ]
    ]
    assert [(row["backend"], row["run"], row["tracked"]) for row in rows] == expected
    for row in rows:
        assert row["fit s"] > 0 and row["images/s"] > 0 and 0 < row["test accuracy"] <= 1
        assert row["process s"] > row["fit s"]
    assert all(row["device"].startswith("CPU: ") for row in rows if row["run"] != "plain program")
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| jax |") == table.count("\n| tensorflow |") == 5
    assert table in done.stdout
