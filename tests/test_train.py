"""train(cfg) end to end on the fixture, checked through MlflowClient in a temporary store."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from src.train import train

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds")


def _history(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def test_train_records_params_metrics_artifacts_and_model(tiny_config, store_uri):
    cfg = tiny_config("trainer.epochs=2", "optimizer.learning_rate=0.002")
    result = train(cfg, overrides=["trainer.epochs=2", "optimizer.learning_rate=0.002"])

    client = MlflowClient(store_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "epochs=2,learning_rate=0.002"

    params = run.data.params
    assert params["optimizer.name"] == "adam"
    assert float(params["optimizer.learning_rate"]) == 0.002
    assert params["loss.name"] == "sparse"
    assert float(params["model.dense_dropout"]) == 0.5
    assert float(params["model.conv_dropout"]) == 0.25
    assert params["trainer.batch_size"] == "32"
    assert params["trainer.epochs"] == "2"
    assert params["model.parameter_count"] == "1630090"
    assert params["data.limit"] == "null"

    for name in EPOCH_METRICS:
        history = _history(client, result.run_id, name)
        assert [step for step, _ in history] == [1, 2], name
        assert all(np.isfinite(value) for _, value in history), name
    assert _history(client, result.run_id, "learning_rate")[0][1] == pytest.approx(0.002)
    accuracy = run.data.metrics["test_accuracy"]
    assert 0.5 < accuracy <= 1.0  # 2 epochs on 1,792 images learn far beyond chance.
    assert run.data.metrics["test_loss"] == pytest.approx(result.metrics["test_loss"])
    assert result.metrics["val_accuracy"] == pytest.approx(run.data.metrics["val_accuracy"])

    tags = run.data.tags
    assert tags["overrides"] == "trainer.epochs=2 optimizer.learning_rate=0.002"
    assert tags["dataset.sha256"] and len(tags["dataset.sha256"]) == 64
    assert tags["dataset.sizes"] == "train=1792 val=208 test=500"  # 56 whole batches of 32
    assert tags["model_uri"] == result.model_uri
    inputs = run.inputs.dataset_inputs
    assert [item.dataset.name for item in inputs] == ["mnist"]
    assert inputs[0].dataset.digest == tags["dataset.sha256"][:16]

    artifacts = {
        item.path
        for folder in ("config", "plots", "evaluation")
        for item in client.list_artifacts(result.run_id, folder)
    }
    artifacts |= {item.path for item in client.list_artifacts(result.run_id) if not item.is_dir}
    assert artifacts == {
        "config/config.yaml",
        "config/overrides.yaml",
        "model_summary.txt",
        "plots/training_curves.png",
        "evaluation/confusion_matrix.png",
        "evaluation/confusion_matrix.csv",
        "evaluation/misclassified.png",
    }
    matrix_path = client.download_artifacts(result.run_id, "evaluation/confusion_matrix.csv")
    matrix = np.loadtxt(matrix_path, delimiter=",", skiprows=1, dtype=np.int64)[:, 1:]
    assert matrix.sum() == 500
    assert np.trace(matrix) / 500 == pytest.approx(accuracy)


def test_logged_model_loads_and_predicts_probabilities(tiny_config, store_uri):
    import mlflow

    from src import data

    result = train(tiny_config())
    assert result.model_uri and result.model_uri.startswith("models:/")
    mlflow.set_tracking_uri(store_uri)
    raw = data.load_mnist(str(tiny_config().data.dir), "unused", "unused", "unused")
    images = (raw.test_images.astype(np.float32) / 255.0)[..., np.newaxis]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mlflow.pyfunc.load_model(result.model_uri)
        probabilities = np.asarray(model.predict(images))
    # As the README shows it, with images as they are: Keras has nothing to warn about.
    assert not [str(w.message) for w in caught if "structure of `inputs`" in str(w.message)]
    assert probabilities.shape == (500, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # The loaded model is the trained one: it agrees with the labels exactly as often as the
    # run's test accuracy says.
    hits = np.mean(probabilities.argmax(axis=1) == raw.test_labels)
    assert hits == pytest.approx(result.metrics["test_accuracy"], abs=1e-9)


def test_the_model_is_stored_in_keras_native_format_and_loads_safely(tiny_config, store_uri):
    import keras
    import mlflow

    result = train(tiny_config())
    mlflow.set_tracking_uri(store_uri)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=result.model_uri))
    [saved] = list(folder.rglob("*.keras"))
    assert not list(folder.rglob("*.pb"))  # No TensorFlow SavedModel.
    assert "save_exported_model: false" in (folder / "MLmodel").read_text()
    model = keras.saving.load_model(saved, safe_mode=True)
    assert model.count_params() == 1_630_090


def test_categorical_loss_trains_on_one_hot_labels(tiny_config, store_uri):
    result = train(tiny_config("loss=categorical", "optimizer=sgd", "tracking.log_model=false"))
    run = MlflowClient(store_uri).get_run(result.run_id)
    assert run.data.params["loss.name"] == "categorical"
    assert run.data.params["loss.label_encoding"] == "one_hot"
    assert run.data.params["optimizer.name"] == "sgd"
    assert np.isfinite(run.data.metrics["test_loss"])
    assert "model_uri" not in run.data.tags


def test_same_seed_gives_same_per_epoch_metrics(tiny_config, store_uri):
    overrides = ("trainer.epochs=2", "tracking.log_model=false", "data.limit=1000")
    first = train(tiny_config(*overrides))
    second = train(tiny_config(*overrides))
    other_seed = train(tiny_config(*overrides, "trainer.seed=7"))
    client = MlflowClient(store_uri)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert _history(client, first.run_id, name) == _history(client, second.run_id, name)
    assert _history(client, first.run_id, "loss") != _history(client, other_seed.run_id, "loss")


def test_a_failing_job_ends_its_run_failed(tiny_config, store_uri, monkeypatch):
    import keras

    def broken_fit(*args, **kwargs):
        raise RuntimeError("the fit broke")

    monkeypatch.setattr(keras.Model, "fit", broken_fit)
    with pytest.raises(RuntimeError, match="the fit broke"):
        train(tiny_config())
    client = MlflowClient(store_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist-cnn").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: the fit broke"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "error")] == [
        "error/traceback.txt"
    ]


def test_a_dry_run_trains_but_records_nothing(tiny_config, tmp_path):
    result = train(tiny_config("tracking.enabled=false"))
    assert result.run_id is None and result.model_uri is None
    assert 0.0 < result.metrics["test_accuracy"] <= 1.0
    assert not (tmp_path / "store").exists()


def test_records_the_store_refused_are_kept_and_sent_when_it_answers_again(
    tiny_config, store_uri, tmp_path, monkeypatch
):
    import mlflow
    from mlflow.exceptions import MlflowException

    real_log_artifacts, calls = mlflow.log_artifacts, []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("the store hiccupped")
        return real_log_artifacts(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_artifacts", failing_once)
    monkeypatch.chdir(tmp_path)
    result = train(tiny_config("trainer.epochs=2"))
    client = MlflowClient(store_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.name"] == "adam"
    for name in EPOCH_METRICS:
        assert [step for step, _ in _history(client, result.run_id, name)] == [1, 2], name
    assert "test_accuracy" in run.data.metrics
    assert run.data.tags["model_uri"] == result.model_uri
    assert [item.path for item in client.list_artifacts(result.run_id, "plots")] == [
        "plots/training_curves.png"
    ]
    assert len(run.inputs.dataset_inputs) == 1
    [sent] = tmp_path.glob("offline-*.sent")
    assert sent.name == f"offline-{result.run_id}.sent"


def test_runs_register_their_model_and_best_follows_the_best_version(
    tiny_config, store_uri, capsys
):
    first = train(tiny_config("tracking.register=true", "data.limit=300"))
    better = train(tiny_config("tracking.register=true", "trainer.epochs=2"))
    worse = train(tiny_config("tracking.register=true", "data.limit=300", "optimizer=sgd"))
    assert first.metrics["val_accuracy"] < better.metrics["val_accuracy"]
    assert worse.metrics["val_accuracy"] < better.metrics["val_accuracy"]

    client = MlflowClient(store_uri)
    versions = client.search_model_versions("name = 'mnist-cnn'")
    assert sorted(int(version.version) for version in versions) == [1, 2, 3]
    best = client.get_model_version_by_alias("mnist-cnn", "best")
    assert int(best.version) == 2 and best.run_id == better.run_id
    assert float(best.tags["val_accuracy"]) == pytest.approx(better.metrics["val_accuracy"])
    assert "models:/mnist-cnn@best stays version 2" in capsys.readouterr().out.splitlines()[-1]
    assert train(tiny_config("data.limit=300")).run_id is not None  # register=null: not a sweep
    assert len(client.search_model_versions("name = 'mnist-cnn'")) == 3


def test_system_metrics_are_sampled_every_second_unless_turned_off(tiny_config, store_uri):
    # A run of a few seconds: MLflow's default of one sample every 10 s would record none.
    sampled = train(tiny_config("tracking.log_model=false"))
    quiet = train(tiny_config("tracking.log_model=false", "tracking.system_metrics=false"))
    client = MlflowClient(store_uri)
    cpu = client.get_metric_history(sampled.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 2 and all(0 <= item.value <= 100 * 64 for item in cpu)
    assert "system/system_memory_usage_megabytes" in client.get_run(sampled.run_id).data.metrics
    assert not any(name.startswith("system/") for name in client.get_run(quiet.run_id).data.metrics)


@pytest.mark.parametrize(("wrong", "rows"), [(0, 1), (1, 1), (7, 2), (50, 6)])
def test_the_misclassified_figure_shows_the_first_wrong_digits_with_their_labels(wrong, rows):
    from src import report

    images = np.zeros((100, 28, 28), dtype=np.float32)
    images += (np.arange(100, dtype=np.float32) / 100)[:, None, None]  # digit i is all i / 100
    true = np.zeros(100, dtype=np.int64)
    predicted = true.copy()
    predicted[1 : 1 + 2 * wrong : 2] = np.arange(wrong) % 9 + 1  # digits 1, 3, 5, ... are wrong

    figure = report.plot_misclassified(images, true, predicted)
    [axes] = figure.axes
    assert figure.get_suptitle() == f"{wrong} of 100 test digits misclassified"
    mosaic = axes.images[0].get_array()
    assert mosaic.shape[0] == rows * (28 + 8)  # 6 digits a row, a title's room above each
    shown = min(wrong, 36)
    assert [text.get_text() for text in axes.texts] == [
        f"predicted {n % 9 + 1}, true 0" for n in range(shown)
    ]
    for n, text in enumerate(axes.texts):  # Each title sits just above its own digit.
        x, y = text.get_position()
        assert mosaic[int(y) + 2, int(x)] == pytest.approx((1 + 2 * n) / 100)
