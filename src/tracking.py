"""Every MLflow call of the project: the store, the run of one job, a sweep's parent run, the
queries behind the comparison, and the upload of a run recorded while its store was away.
Nothing else imports mlflow but src.migrate, which copies one store into another."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import psutil
import requests
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from src import backend, report
from src.errors import TrackingError, one_line
from src.schema import PROJECT_ROOT
from src.uris import mask_text, without_credentials

if TYPE_CHECKING:
    import keras

try:
    import fcntl
except ImportError:  # Windows has none: a new store's creation is then not serialised.
    fcntl = None  # type: ignore[assignment]

# MLflow's own HTTP retries (7, over about 4 minutes) ride out a server's restart; a command's
# first look at its store makes fewer (see few_retries), so that a wrong address fails at once.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# One run's records sent one batch at a time, in order: MLflow's default pool of 10 threads sends
# a run's batches at once, and a PostgreSQL store then fails on its latest-metric key (a hung
# request, a run created twice, records lost; measured with 8 writers against the team server).
os.environ.setdefault("MLFLOW_ASYNC_LOGGING_THREADPOOL_SIZE", "1")
# Records sent once a second, and none left waiting for the thread's next poll when the run ends
# (MLflow's default polls its queue with a 1-s timeout, and ending a run waits for that poll).
# MLflow reads it as a whole number of seconds: "0.5" stops its logging thread.
os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
# System metrics sampled every second (MLflow's default is 10 s): a sweep's short job still gets
# several samples. Measured: no cost in CPU seconds against 10 s (closing note of issue 19).
os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
# MLflow prints the run's URL (credentials included) when a run ends; the summary says it.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # MLflow's own setting; INFO shows migrations.
    logging.getLogger("mlflow").setLevel(logging.WARNING)

DEFAULT_STORE = PROJECT_ROOT / "mlruns" / "mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's UI opens an experiment with this tag in its model-training view, not the GenAI one.
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
BEST_ALIAS = "best"
# What a store that stopped answering looks like from here.
UNREACHABLE = (MlflowException, requests.exceptions.RequestException, OSError)


# The store.


@contextmanager
def few_retries() -> Iterator[None]:
    """MLflow's HTTP requests retried twice, within seconds, for the duration (unless the user
    set MLflow's variables): for a command's first look at its store, where no answer means a
    wrong address more often than a restart."""
    few = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    ours = {name: value for name, value in few.items() if name not in os.environ}
    os.environ.update(ours)
    try:
        yield
    finally:
        for name in ours:
            os.environ.pop(name, None)


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: the project's SQLite store in ``mlruns/`` when none is set."""
    return uri or f"sqlite:///{DEFAULT_STORE}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextmanager
def _creating(database: Path) -> Iterator[None]:
    """Let one process at a time create a new SQLite store: MLflow builds a new database's
    schema in many transactions, and processes doing it at once fail (4 at once: 3 failed).
    Whoever finds the database missing creates it (the body of this ``with``) holding an
    exclusive lock on its folder; the others wait, then open it without holding the lock."""
    folder = None
    if fcntl is not None:
        with contextlib.suppress(OSError):  # A folder that cannot be read: no lock.
            folder = os.open(database.parent, os.O_RDONLY)
    if folder is None:
        yield
        return
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if not database.exists() or database.stat().st_size == 0:
            yield
            return
    finally:
        os.close(folder)  # Releases the lock.
    yield


def open_store(uri: str | None) -> MlflowClient:
    """A client of the store, which is created first if it does not exist yet, one process at
    a time (see ``_creating``). A store that cannot be used raises TrackingError."""
    tracking_uri = resolve_uri(uri)
    database = sqlite_path(tracking_uri)
    try:
        if database is None:
            return MlflowClient(tracking_uri)
        database.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(database.parent, os.W_OK | os.X_OK):
            raise PermissionError("permission denied")
        with _creating(database):
            return MlflowClient(tracking_uri)  # Creates the database's tables if it has none.
    except UNREACHABLE as error:
        raise _store_error(tracking_uri, error) from error


def prepare_store(
    uri: str | None, experiment: str, wait_for_store: bool = False
) -> tuple[str, str]:
    """Open the store and create the experiment if they do not exist yet, and close the runs
    of processes on this machine that died without closing them. Returns the tracking URI and
    the experiment id; a store that cannot be used raises TrackingError, within seconds unless
    ``wait_for_store`` (a sweep's job, whose launcher has reached the store: no answer is then
    a restart, waited out with MLflow's retries)."""
    client = open_store(uri)
    try:
        with contextlib.nullcontext() if wait_for_store else few_retries():
            experiment_id = _experiment_id(client, experiment, sqlite_path(client.tracking_uri))
            _close_runs_of_dead_processes(client)
    except UNREACHABLE as error:
        raise _store_error(client.tracking_uri, error) from error
    return client.tracking_uri, experiment_id


def _store_error(uri: str, error: BaseException) -> TrackingError:
    """The one line for a store that cannot be used: a SQLite folder that cannot be written,
    a SQLite database MLflow refuses, or a server that does not answer."""
    database = sqlite_path(uri)
    if database is not None and isinstance(error, OSError):
        reason = error.strerror or error
        problem = f"{database.parent} cannot be written ({reason}); choose a folder you can write"
    elif database is not None and _half_migrated(database):
        problem = (
            "MLflow's migration of this database was interrupted (it was being created by two "
            f"programs at once); move it away (mv {database} {database}.broken) and run again"
        )
    elif database is not None:
        problem = f"MLflow cannot use it ({one_line(error)})"
    elif "error code 401 " in str(error):
        problem = (
            "the server refused the credentials (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to a user of that server"
        )
    elif "Invalid Host header" in str(error):
        problem = (
            "the server refuses this address as a Host (HTTP 403); start it with "
            "ALLOWED_HOSTS=<this host name> (make server) or --allowed-hosts"
        )
    elif "error code 403 " in str(error):
        problem = "this user may not write there (HTTP 403); ask the server's admin for access"
    else:
        problem = (
            f"no tracking server answers there ({one_line(error)}); start it "
            "(make server) or fix the URI"
        )
    return TrackingError(f"tracking.uri={mask_text(uri)}: {problem}")


def _half_migrated(database: Path) -> bool:
    """Whether an interrupted migration left its temporary tables in the database."""
    query = "select 1 from sqlite_master where name like '\\_alembic\\_tmp\\_%' escape '\\'"
    try:
        location = f"{database.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(location, uri=True)) as db:
            return db.execute(query).fetchone() is not None
    except (sqlite3.Error, ValueError):
        return False


def _experiment_id(client: MlflowClient, name: str, database: Path | None) -> str:
    """The named experiment's id, created if it does not exist yet (here or concurrently); a
    local store keeps its artifacts beside its database, whatever the working folder."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"
        location = (database.parent / "artifacts" / slug).resolve().as_uri() if database else None
        try:
            kind = {KIND_TAG: MODEL_TRAINING}
            return client.create_experiment(name, artifact_location=location, tags=kind)
        except MlflowException as error:
            experiment = client.get_experiment_by_name(name)
            if error.error_code != "RESOURCE_ALREADY_EXISTS" or experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"tracking.experiment={name} is deleted in {mask_text(client.tracking_uri)}: "
            "restore it in the UI or choose another name"
        )
    if KIND_TAG not in experiment.tags:  # Made before the project tagged its experiments.
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, MODEL_TRAINING)
    return str(experiment.experiment_id)


def ui_address(uri: str, experiment: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The address of the experiment's runs table in MLflow's UI, in the model-training view
    (``ui``: where the UI listens; a tracking server serves its own); the UI's start page if
    the store does not answer or has no such experiment."""
    if uri.startswith(("http://", "https://")):
        ui = without_credentials(uri).rstrip("/")
    try:
        found = MlflowClient(uri).get_experiment_by_name(experiment)
    except UNREACHABLE:
        found = None
    if found is None:
        return f"{ui}/"
    return f"{ui}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"


def ui_hint(uri: str, experiment: str) -> str:
    """How to look at this experiment's runs, and for a local store what serves them."""
    if uri.startswith(("http://", "https://")):
        return f"open {ui_address(uri, experiment)}"
    serve = (
        "make ui" if uri == resolve_uri(None) else f"mlflow ui --backend-store-uri {mask_text(uri)}"
    )
    return f"run `{serve}` and open {ui_address(uri, experiment)}"


# Runs whose process died (kill -9, the out-of-memory killer): every run records its host and
# process, and the next process that opens the store closes them.


def _process_tags() -> dict[str, str]:
    me = psutil.Process()
    started = repr(me.create_time())
    return {
        "process.host": socket.gethostname(),
        "process.pid": str(me.pid),
        "process.started": started,
    }


def _close_runs_of_dead_processes(client: MlflowClient) -> None:
    """Close as KILLED the RUNNING runs whose process, on this machine, is gone."""
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    host = socket.gethostname().replace("'", "")
    for run in client.search_runs(
        experiments, f"attributes.status = 'RUNNING' and tags.`process.host` = '{host}'"
    ):
        tags = run.data.tags
        try:
            started = psutil.Process(int(tags["process.pid"])).create_time()
            if abs(started - float(tags["process.started"])) < 1:
                continue  # Still running.
        except psutil.NoSuchProcess:
            pass
        except (psutil.Error, KeyError, ValueError):
            continue  # Cannot tell: leave it alone.
        reason = f"its process ({tags.get('process.pid')}) ended without closing it"
        client.set_tag(run.info.run_id, "error", reason)
        client.set_terminated(run.info.run_id, "KILLED")
        print(f"Run {run.info.run_id} closed KILLED: {reason}.", file=sys.stderr)


# One job's run.


@contextmanager
def start_run(
    tracking_uri: str,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    output_dir: Path,
    system_metrics: bool = True,
) -> Iterator[MlflowRun]:
    """Open one job's run in a store that ``prepare_store`` prepared, and close it with the
    status it earned: FINISHED, FAILED if the job raised, KILLED on an interrupt.
    ``system_metrics``: MLflow samples the process's CPU and memory use while the run is open."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        opened = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            tags={**tags, **_process_tags()},
            log_system_metrics=system_metrics,
        )
    except UNREACHABLE as error:
        raise _store_error(tracking_uri, error) from error
    run = MlflowRun(opened.info.run_id, tracking_uri, output_dir)
    try:
        yield run
    except BaseException as error:
        run.close(_status_of(error), error)
        raise
    run.close("FINISHED")


class MlflowRun:
    """One job's open MLflow run: the :class:`src.records.Recorder` that records into MLflow.

    Params, tags and per-epoch metrics go through MLflow's asynchronous logging, so a slow or
    lost server never stalls training; files are written to a local folder and sent with the
    model when the run closes. A copy of every record is kept, so that a store that stopped
    answering loses nothing: the whole run is then kept in ``offline-<run id>/`` in the job's
    folder, to be sent with ``python -m src.replay``.
    """

    def __init__(self, run_id: str, uri: str, output_dir: Path) -> None:
        self.run_id: str = run_id
        self.model_uri: str | None = None
        self._uri = uri  # With its password, if it has one: run.json keeps it masked.
        self._output_dir = output_dir
        self._folder = Path(tempfile.mkdtemp(prefix="mnist-run-"))  # artifacts/, model.keras
        # Everything sent, to keep the whole run if the store stops answering (see replay).
        self._record: dict[str, Any] = {"run_id": run_id, "uri": mask_text(uri), "metrics": []}
        self._record.update(params={}, tags={})
        self._sending: list[Any] = []  # MLflow's handles on the asynchronous records
        self._model: keras.Model | None = None

    def log_setup(
        self, params: Mapping[str, Any], tags: Mapping[str, str], texts: Mapping[str, str]
    ) -> None:
        values = {key: str(_param_value(value)) for key, value in params.items()}
        self._record["params"].update(values)
        self._sending.append(mlflow.log_params(values, synchronous=False))
        self._set_tags(tags)
        for artifact_file, text in texts.items():
            self._artifact(artifact_file).write_text(text)

    def _set_tags(self, tags: Mapping[str, str]) -> None:
        self._record["tags"].update(tags)
        self._sending.append(mlflow.set_tags(dict(tags), synchronous=False))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        values = {name: float(value) for name, value in metrics.items()}
        stamp = int(time.time() * 1000)
        self._record["metrics"].append([values, step, stamp])
        self._sending.append(mlflow.log_metrics(values, step, synchronous=False, timestamp=stamp))

    def log_results(
        self,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        predicted: np.ndarray,
        history: Mapping[str, list[float]],
        model: keras.Model | None,
    ) -> None:
        matrix = report.confusion_matrix(test_labels, predicted)
        csv = report.confusion_matrix_csv(matrix)
        self._artifact("evaluation/confusion_matrix.csv").write_text(csv)
        for path, figure in {
            "evaluation/confusion_matrix.png": report.plot_confusion_matrix(matrix),
            "evaluation/misclassified.png": report.plot_misclassified(
                test_images, test_labels, predicted
            ),
            "plots/training_curves.png": report.plot_training_curves(history),
        }.items():
            figure.savefig(self._artifact(path))
        self._model = model  # Sent when the run closes.

    def _artifact(self, artifact_file: str) -> Path:
        path = self._folder / "artifacts" / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def close(self, status: str, error: BaseException | None = None) -> None:
        """Send what is left and end the run with ``status``, keeping a failure's error in the
        tag ``error`` and its traceback in ``error/traceback.txt``; if the store does not
        answer, keep the whole run in the job's folder instead."""
        if error is not None:
            trace = "".join(traceback.format_exception(error))
            self._artifact("error/traceback.txt").write_text(trace)
            reason = mask_text(f"{type(error).__name__}: {error}")[:5000]
            self._set_tags({"error": reason, **getattr(error, "run_tags", {})})
        self._record["status"] = status
        try:
            mlflow.flush_async_logging()  # At once, not at the logging thread's next wake-up.
            for sending in self._sending:
                sending.wait()  # Raises the error of a record that was not sent.
            self.model_uri = _send_files(self._folder, self._record["tags"], self._model)
            mlflow.end_run(status)
        except BaseException as late:  # A lost store, a second Ctrl-C, a model not logged.
            lost = isinstance(late, UNREACHABLE)
            with contextlib.suppress(*UNREACHABLE), few_retries():  # MLflow forgets the run
                mlflow.end_run(status if lost else _status_of(late))  # even if this fails.
            if not lost:
                raise
            self._keep_offline(late)
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)

    def _keep_offline(self, error: BaseException) -> None:
        """Keep the whole run in the job's folder, and send it at once if the store is back."""
        folder = self._output_dir / f"offline-{self.run_id}"
        shutil.copytree(self._folder, folder, dirs_exist_ok=True)
        if self._model is not None:
            self._model.save(folder / "model.keras")
        (folder / "run.json").write_text(json.dumps(self._record))
        print(
            f"warning: the tracking store stopped answering ({one_line(error)}).", file=sys.stderr
        )
        try:
            self.model_uri = replay(folder, self._uri)
            print(f"It answers again: run {self.run_id} was sent in full.", file=sys.stderr)
        except UNREACHABLE:
            print(
                f"The whole run is kept in {folder}; send it when the store is back with:\n"
                f"  python -m src.replay {folder}",
                file=sys.stderr,
            )


def _status_of(error: BaseException) -> str:
    """KILLED for Ctrl-C and SIGTERM (see src.signals) and a pruned trial, else FAILED."""
    killed = isinstance(error, KeyboardInterrupt)
    return str(getattr(error, "run_status", "KILLED" if killed else "FAILED"))


def _send_files(folder: Path, tags: Mapping[str, str], model: keras.Model | None) -> str | None:
    """Send a run's files, dataset and model into the active run; returns the model's URI."""
    if (folder / "artifacts").is_dir():
        mlflow.log_artifacts(str(folder / "artifacts"))
    if "dataset.source" in tags:  # Not yet if the job stopped before training.
        with warnings.catch_warnings():
            # A local path matches several equivalent source types; MLflow picks one and warns.
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(tags["dataset.source"])
        digest = tags["dataset.sha256"][:16]
        dataset = MetaDataset(source, tags["dataset.name"], digest)  # type: ignore[abstract]
        mlflow.log_input(dataset, context="training")
    if model is None:
        return None
    import keras

    # Explicit requirements: MLflow's inference of them costs seconds per run.
    names = ("mlflow", "keras", *backend.PACKAGES[keras.backend.backend()])
    versions = [f"{name}=={importlib.metadata.version(name)}" for name in names]
    info = mlflow.keras.log_model(
        model, name="model", signature=_signature(model), pip_requirements=versions
    )
    mlflow.set_tag("model_uri", info.model_uri)
    return str(info.model_uri)


def _signature(model: keras.Model) -> ModelSignature:
    """Float32 images in, probabilities out. The input is unnamed: with a name, MLflow hands
    the model a dict, which Keras warns about on every predict."""
    images = TensorSpec(np.dtype(np.float32), (-1, *model.input_shape[1:]))
    probabilities = TensorSpec(np.dtype(np.float32), (-1, *model.output_shape[1:]), "probabilities")
    return ModelSignature(inputs=Schema([images]), outputs=Schema([probabilities]))


def _param_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    if isinstance(value, str):
        return mask_text(value)
    return "null" if value is None else value


def register_model(
    uri: str, model_uri: str, name: str, metric: str, value: float, lower_is_better: bool
) -> str:
    """Register a logged model as a new version of the registered model ``name``, and point
    the alias ``best`` at it if its ``metric`` beats the version the alias points to (or none
    does). Returns a line that says what was done, or why nothing was."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints what this returns.
            version = mlflow.register_model(model_uri, name, tags={metric: repr(value)})
        try:
            current = client.get_model_version_by_alias(name, BEST_ALIAS)
        except MlflowException as error:
            if error.error_code != "INVALID_PARAMETER_VALUE":  # Not "no such alias".
                raise
            current = None
        said = f"Registered as version {version.version} of model '{name}'"
        if current is not None and metric in current.tags:
            best = float(current.tags[metric])
            if (value >= best) if lower_is_better else (value <= best):
                stays = f"stays version {current.version} ({metric} {best:.4f})"
                return f"{said}; models:/{name}@{BEST_ALIAS} {stays}."
        client.set_registered_model_alias(name, BEST_ALIAS, version.version)
    except UNREACHABLE as error:
        return f"warning: the model was not registered ({one_line(error)})."
    return f"{said}, now models:/{name}@{BEST_ALIAS} ({metric} {value:.4f})."


def replay(folder: Path, uri: str | None = None) -> str | None:
    """Send a run kept in ``folder`` while its store was away into its run, and close it as it
    ended (``uri``: the store's address now, if it changed, or with the password that
    ``run.json`` keeps masked). Returns the model's URI."""
    import keras

    record = json.loads((folder / "run.json").read_text())
    mlflow.set_tracking_uri(uri or record["uri"])
    metrics = [
        Metric(name, value, stamp, step)
        for values, step, stamp in record["metrics"]
        for name, value in values.items()
    ]
    params = [Param(key, value) for key, value in record["params"].items()]
    tags = [RunTag(key, value) for key, value in record["tags"].items()]
    model_file = folder / "model.keras"
    model = keras.saving.load_model(model_file, safe_mode=True) if model_file.exists() else None
    with few_retries(), mlflow.start_run(record["run_id"]):  # RUNNING again, whatever it was.
        client = MlflowClient()
        client.log_batch(record["run_id"], metrics=metrics, params=params, tags=tags)
        if "error" not in record["tags"]:  # Perhaps set meanwhile by the dead-process check.
            with contextlib.suppress(MlflowException):  # Not set: nothing to delete.
                client.delete_tag(record["run_id"], "error")
        model_uri = _send_files(folder, record["tags"], model)
        mlflow.end_run(record["status"])
    folder.rename(folder.with_name(folder.name + ".sent"))
    return model_uri


# Sweeps: one parent run per multirun, the jobs' runs nested under it. The parent is handled
# through the client, not the fluent API's active run, so that jobs in the same process can
# open their own runs freely.


def open_sweep_run(
    uri: str | None, experiment: str, name: str, tags: Mapping[str, str], resume: bool
) -> tuple[str, str, bool]:
    """Open a sweep's parent run, or with ``resume`` reopen the newest one with the same
    ``sweep_fingerprint`` tag if it ended FAILED or KILLED. One still RUNNING is the same sweep
    running elsewhere, and is not joined (a dead launcher's parent is closed KILLED by
    ``prepare_store`` on its own host only). Returns the tracking URI, the parent's id, and
    whether it was reopened."""
    tracking_uri, experiment_id = prepare_store(uri, experiment)
    client = MlflowClient(tracking_uri)
    previous = client.search_runs(
        [experiment_id],
        filter_string=f"tags.sweep_fingerprint = '{tags['sweep_fingerprint']}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if resume and previous and previous[0].info.status in ("FAILED", "KILLED"):
        run_id = previous[0].info.run_id
        for key, value in {**_process_tags(), "sweep_resumed": "true"}.items():
            client.set_tag(run_id, key, value)  # Before RUNNING: no one takes it for dead.
        with contextlib.suppress(MlflowException):
            client.delete_tag(run_id, "error")
        client.update_run(run_id, status="RUNNING")
        return tracking_uri, run_id, True
    run = client.create_run(experiment_id, run_name=name, tags={**tags, **_process_tags()})
    return tracking_uri, run.info.run_id, False


def reusable_child_run(uri: str | None, parent_run_id: str, config_hash: str) -> Run | None:
    """A finished child run of this sweep that trained exactly this config, if there is one."""
    client = MlflowClient(resolve_uri(uri))
    runs = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.config_hash = '{config_hash}' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


def find_runs(uri: str, experiment: str, filter_string: str, max_results: int = 1000) -> Any:
    """The experiment's runs matching the filter, newest first, as ``mlflow.search_runs``'s
    pandas frame (empty if the experiment does not exist)."""
    import pandas as pd

    found = open_store(uri).get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(
        [found.experiment_id],
        filter_string=filter_string,
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )


def metric_history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    history = MlflowClient(uri).get_metric_history(run_id, metric)
    return sorted((item.step, item.value) for item in history)


def log_to_run(
    uri: str,
    run_id: str,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    texts: Mapping[str, str] | None = None,
    figures: Mapping[str, Any] | None = None,
) -> None:
    """Record metrics, tags, text and figure artifacts on a run that is not the active one."""
    client = MlflowClient(uri)
    stamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(name, value, stamp, 0) for name, value in (metrics or {}).items()],
        tags=[RunTag(key, value) for key, value in (tags or {}).items()],
    )
    for path, content in (texts or {}).items():
        client.log_text(run_id, content, path)
    for path, figure in (figures or {}).items():
        client.log_figure(run_id, figure, path)


def end_run(uri: str, run_id: str, status: str) -> None:
    """Close a run with FINISHED, FAILED or KILLED, unless it is closed already."""
    client = MlflowClient(uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status=status)


def main(argv: list[str] | None = None) -> int:
    """``python -m src.tracking``: create the store if it does not exist yet, through the
    project's lock (``make ui`` and ``make serve`` do, before MLflow opens it), and print the
    address of the experiment's runs; with ``--model``, check that the model exists."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m src.tracking", description=main.__doc__)
    parser.add_argument("--tracking-uri", help="default: the project's store in mlruns/")
    parser.add_argument("--experiment", default="mnist-cnn", help="default: %(default)s")
    parser.add_argument("--ui", default="http://127.0.0.1:5000", help="where the UI listens")
    parser.add_argument("--model", help="a model URI that must exist, e.g. models:/mnist-cnn@best")
    args = parser.parse_args(argv)
    try:
        uri, _ = prepare_store(args.tracking_uri, args.experiment)
        if args.model:
            mlflow.set_tracking_uri(uri)
            mlflow.models.get_model_info(args.model)
    except TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except MlflowException as error:
        print(
            f"error: MODEL={args.model} is not in {mask_text(uri)} ({one_line(error)}); a sweep "
            "registers its best model, a run with tracking.register=true its own",
            file=sys.stderr,
        )
        return 1
    print(f"The runs of '{args.experiment}': {ui_address(uri, args.experiment, args.ui)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
