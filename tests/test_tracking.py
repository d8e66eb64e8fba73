"""The tracking module's pure helpers: run names, flattened params, where the store lives."""

from __future__ import annotations

from src import tracking
from src.schema import PROJECT_ROOT


def test_run_name_is_made_from_what_was_changed():
    assert tracking.run_name_from_overrides([]) == "defaults"
    assert (
        tracking.run_name_from_overrides(
            ["optimizer=sgd", "loss=categorical", "trainer.epochs=2", "tracking.uri=sqlite:///x"]
        )
        == "sgd,categorical,epochs=2"
    )
    assert tracking.run_name_from_overrides(["data.dir=/a", "hydra.run.dir=/b"]) == "defaults"
    assert (
        tracking.run_name_from_overrides(["optimizer.learning_rate=0.03142880890840111"])
        == "learning_rate=0.03143"
    )


def test_flatten_gives_dotted_keys():
    flat = tracking.flatten({"optimizer": {"name": "sgd", "learning_rate": 0.1}, "seed": 1})
    assert flat == {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1, "seed": 1}


def test_default_store_is_sqlite_in_the_project_mlruns_folder():
    assert tracking.resolve_uri(None) == f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    assert tracking.resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_local_artifacts_sit_beside_the_database(tmp_path):
    location = tracking._artifact_location(f"sqlite:///{tmp_path}/db/mlflow.db", "my exp/1")
    assert location == (tmp_path / "db" / "artifacts" / "my_exp_1").as_uri()
    assert tracking._artifact_location("http://127.0.0.1:5000", "x") is None
