"""The tracking module's helpers: run names, flattened params, where the store lives, and the
command that creates a store before MLflow's UI or scoring server opens it, and which sweep's
parent run a sweep reopens."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from src import records, tracking
from src.schema import PROJECT_ROOT


def test_run_name_is_made_from_what_was_changed():
    assert records.run_name_from_overrides([]) == "defaults"
    assert (
        records.run_name_from_overrides(
            ["optimizer=sgd", "loss=categorical", "trainer.epochs=2", "tracking.uri=sqlite:///x"]
        )
        == "sgd,categorical,epochs=2"
    )
    assert records.run_name_from_overrides(["data.dir=/a", "hydra.run.dir=/b"]) == "defaults"
    assert (
        records.run_name_from_overrides(["optimizer.learning_rate=0.03142880890840111"])
        == "learning_rate=0.03143"
    )


def test_flatten_gives_dotted_keys():
    flat = records.flatten({"optimizer": {"name": "sgd", "learning_rate": 0.1}, "seed": 1})
    assert flat == {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1, "seed": 1}


def test_default_store_is_sqlite_in_the_project_mlruns_folder():
    assert tracking.resolve_uri(None) == f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    assert tracking.resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_local_artifacts_sit_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri, experiment_id = tracking.prepare_store("sqlite:///db/mlflow.db", "my exp/1")
    location = MlflowClient(uri).get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "db" / "artifacts" / "my_exp_1").as_uri()


@pytest.mark.parametrize(
    ("earlier_status", "reopened"),
    [("RUNNING", False), ("FINISHED", False), ("FAILED", True), ("KILLED", True)],
)
def test_a_sweep_reopens_its_parent_only_if_it_failed_or_was_killed(
    tmp_path, earlier_status, reopened
):
    # RUNNING: the same sweep started again while it runs (its launcher, this process, lives).
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tags = {"sweep_role": "parent", "sweep_fingerprint": "same-overrides"}
    _, earlier, _ = tracking.open_sweep_run(uri, "mnist-cnn", "sweep: x", tags, resume=True)
    if earlier_status != "RUNNING":
        MlflowClient(uri).set_terminated(earlier, earlier_status)
    _, parent, resumed = tracking.open_sweep_run(uri, "mnist-cnn", "sweep: x", tags, resume=True)
    assert resumed is reopened
    assert (parent == earlier) is reopened
    assert MlflowClient(uri).get_run(parent).info.status == "RUNNING"


def test_passwords_in_uris_are_masked_everywhere_they_are_shown():
    import logging

    from src.errors import one_line
    from src.uris import MaskingFilter, mask_overrides, mask_text, without_credentials

    assert mask_text("http://bob:pw@10.0.0.1:5000/x") == "http://bob:***@10.0.0.1:5000/x"
    assert mask_text("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    # As urllib reads them: "@" in a password or a user (an e-mail address), an empty user;
    # IPv6 hosts keep their brackets; an "@" past the host, or in the next JSON value, is not
    # user info.
    assert mask_text("see http://bob:p@ss@[::1]:5000/x.") == "see http://bob:***@[::1]:5000/x."
    assert (
        mask_text("http://al@x.org:pw@h/ http://:token@h/")
        == "http://al@x.org:***@h/ http://:***@h/"
    )
    assert mask_text('{"a":"http://u:p@h:5","b":"c@d"}') == '{"a":"http://u:***@h:5","b":"c@d"}'
    assert mask_text("http://h:5000?next=a@b") == "http://h:5000?next=a@b"
    assert without_credentials("http://bob:p@ss@[::1]:5000/") == "http://[::1]:5000/"
    assert without_credentials("https://h:8443/?next=a@b") == "https://h:8443/?next=a@b"
    # Errors in one line: the first, masked before it is cut; the type's name if none.
    long_password = "x" * 400
    error = ConnectionError(f"http://bob:{long_password}@h refused\nsecond line")
    assert one_line(error) == "http://bob:***@h refused"
    assert one_line(ConnectionError(f"at http://b:{long_password}@h"), 17) == "at http://b:***@h"
    assert one_line(KeyError()) == "KeyError"
    assert mask_overrides(["tracking.uri=https://bob:pw@host", "optimizer=sgd"]) == [
        "tracking.uri=https://bob:***@host",
        "optimizer=sgd",
    ]
    # Hydra escapes ':' in the overrides it hands a sweep's jobs.
    assert mask_overrides([r"tracking.uri=http\://bob\:pw@host\:5000"]) == [
        r"tracking.uri=http\://bob\:***@host\:5000"
    ]
    record = logging.LogRecord("hydra", logging.INFO, "", 0, "#0 : %s", ("x=http://a:pw@h",), None)
    MaskingFilter().filter(record)
    assert record.getMessage() == "#0 : x=http://a:***@h"


def test_the_store_command_creates_a_store_and_prints_its_runs_address(tmp_path):
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    command = [sys.executable, "-m", "src.tracking", "--tracking-uri", store, "--ui", "http://h:9"]
    made = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    experiment = MlflowClient(store).get_experiment_by_name("mnist-cnn")
    assert made.stdout.strip() == (
        f"The runs of 'mnist-cnn': http://h:9/#/experiments/{experiment.experiment_id}"
        "/runs?workflowType=machine_learning"
    )
    assert made.stderr == ""  # No migration lines.
    unregistered = subprocess.run(
        [*command, "--model", "models:/mnist-cnn@best"], capture_output=True, text=True, timeout=120
    )
    assert unregistered.returncode == 1
    [line] = unregistered.stderr.strip().splitlines()
    assert line.startswith(f"error: MODEL=models:/mnist-cnn@best is not in {store} (")

    # A migration interrupted by a second client leaves its temporary tables behind.
    with contextlib.closing(sqlite3.connect(tmp_path / "store" / "mlflow.db")) as db:
        db.execute("create table _alembic_tmp_tags (key text)")
        db.execute("update alembic_version set version_num = '0a8213491aaa'")
        db.commit()
    broken = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1
    [line] = broken.stderr.strip().splitlines()
    assert line.startswith(f"error: tracking.uri={store}: MLflow's migration of this database")
    assert line.endswith(".broken) and run again")
