"""python -m src.migrate between two SQLite stores (into the team server: test_cluster.py)."""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from src import migrate
from src.train import train


def test_every_record_moves_and_a_second_migration_copies_only_what_is_new(
    tiny_config, store_uri, tmp_path, capsys
):
    cfg = tiny_config("trainer.epochs=2", "tracking.register=true")
    trained = train(cfg, overrides=["trainer.epochs=2"])
    source = MlflowClient(store_uri)
    experiment_id = source.get_run(trained.run_id).info.experiment_id
    child = source.create_run(experiment_id, tags={"mlflow.parentRunId": trained.run_id})
    source.log_metric(child.info.run_id, "loss", 0.5, step=3)
    source.set_terminated(child.info.run_id, "FAILED")
    source.create_run(experiment_id)  # Still running: left for a later migration.
    target_uri = f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}"

    assert migrate.main(["--from", store_uri, "--to", target_uri]) == 0
    assert capsys.readouterr().out.endswith(
        ": 2 runs copied, 0 already there, 1 still running (run it again once they end), "
        "1 model versions registered.\n"
    )

    target = MlflowClient(target_uri)
    copies = {
        run.data.tags[migrate.MARK]: run
        for run in target.search_runs([target.get_experiment_by_name("mnist-cnn").experiment_id])
    }
    assert set(copies) == {trained.run_id, child.info.run_id}
    run, copy = source.get_run(trained.run_id), copies[trained.run_id]
    assert copy.data.params == run.data.params
    assert (copy.info.status, copy.info.start_time) == ("FINISHED", run.info.start_time)
    for key in run.data.metrics:
        moved = sorted((m.step, m.value) for m in target.get_metric_history(copy.info.run_id, key))
        assert moved == sorted(
            (m.step, m.value) for m in source.get_metric_history(run.info.run_id, key)
        )
    assert {a.path for a in target.list_artifacts(copy.info.run_id, "evaluation")} == {
        a.path for a in source.list_artifacts(run.info.run_id, "evaluation")
    }
    moved_child = copies[child.info.run_id]
    assert moved_child.info.status == "FAILED"
    assert moved_child.data.tags["mlflow.parentRunId"] == copy.info.run_id
    model_uri = copy.data.tags["model_uri"]
    assert model_uri != run.data.tags["model_uri"]  # The copy's own logged model.
    mlflow.set_tracking_uri(target_uri)
    probabilities = mlflow.pyfunc.load_model("models:/mnist-cnn@best").predict(
        np.zeros((2, 28, 28, 1), dtype=np.float32)
    )
    assert np.asarray(probabilities).shape == (2, 10)
    assert target.get_model_version_by_alias("mnist-cnn", "best").run_id == copy.info.run_id

    # A copy cut short (no completion mark) is made again, and a registration that did not
    # arrive is made; whole copies and their registrations are kept.
    target.set_tag(moved_child.info.run_id, f"{migrate.MARK}.complete", "false")
    target.delete_registered_model("mnist-cnn")
    summary = migrate.migrate(source, target, [])
    assert summary == (
        "1 runs copied, 1 already there, 1 still running (run it again once they end), "
        "1 model versions registered"
    )
    assert target.get_run(moved_child.info.run_id).info.lifecycle_stage == "deleted"
    assert target.get_model_version_by_alias("mnist-cnn", "best").run_id == copy.info.run_id
    again = migrate.migrate(source, target, [])
    assert again.startswith("0 runs copied, 2 already there") and again.endswith(
        ", 0 model versions registered"
    )
    assert migrate.main(["--from", f"sqlite:///{tmp_path / 'nowhere.db'}", "--to", target_uri]) == 2
    assert "there is no store at" in capsys.readouterr().err
