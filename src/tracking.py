"""Every MLflow call of the project: the store, the run's lifecycle (with its offline journal
when a server goes away), params, metrics, artifacts, the model, sweeps' parent runs, the
queries behind the comparison, and the upload of an offline journal. Nothing else imports
mlflow."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import requests
from matplotlib.figure import Figure
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from src.records import DatasetRecord, Outcome, SavedKerasModel
from src.store import (
    TrackingError,
    check_store,
    creating,
    ensure_sqlite_folder,
    resolve_uri,
    sqlite_path,
)
from src.uris import mask_uri

if TYPE_CHECKING:
    import keras

MODEL_NAME = "model"


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For a local SQLite store, artifacts go in an ``artifacts/`` folder beside the database,
    whatever the working directory; a server decides for itself."""
    database = sqlite_path(uri)
    if database is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("_") or "experiment"
    return (database.resolve().parent / "artifacts" / slug).as_uri()


# What a lost tracking server looks like from here: the client's own errors, or the network's.
UNREACHABLE = (MlflowException, requests.exceptions.RequestException, OSError)


class Run:
    """The open MLflow run of one training job.

    Every record goes to the store as it is made. If the store stops answering (a tracking
    server that died), the run goes offline: this and every later record is written to a
    journal in ``offline_dir`` instead, to be uploaded later with ``python -m src.replay``,
    so nothing recorded is lost and training carries on.
    """

    records_artifacts = True

    def __init__(self, run_id: str, uri: str, offline_dir: Path) -> None:
        self.run_id = run_id
        self.uri = uri
        self.model_uri: str | None = None
        self.offline_dir = offline_dir
        self.journal: Path | None = None  # Set once the run has gone offline.
        self._client = MlflowClient(uri)

    def _send(self, record: dict[str, Any], send: Any) -> bool:
        """Send one record, or journal it if the store is unreachable. True if it was sent."""
        if self.journal is None and self._try(send):
            return True
        self._write(record)
        return False

    def _try(self, send: Any) -> bool:
        """Send; on an error, send once more if the store still answers (a transient conflict
        between concurrent writers), else go offline. True if it was sent."""
        for attempt in (1, 2):
            try:
                send()
                return True
            except UNREACHABLE as error:
                if attempt == 2 or not self._store_answers():
                    self._go_offline(error)
        return False

    def _store_answers(self) -> bool:
        try:
            check_store(self.uri)
        except TrackingError:
            return False
        return True

    def _go_offline(self, error: BaseException) -> None:
        self.offline_dir.mkdir(parents=True, exist_ok=True)
        self.journal = self.offline_dir / f"offline-{self.run_id}.jsonl"
        self._write({"op": "run", "run_id": self.run_id, "uri": mask_uri(self.uri)})
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(
            f"warning: the tracking store {mask_uri(self.uri)} stopped answering ({reason[:300]}); "
            f"training goes on and the rest of this run is written to {self.journal}",
            file=sys.stderr,
        )

    def _write(self, record: Mapping[str, Any]) -> None:
        assert self.journal is not None
        with self.journal.open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def _local_copy(self, artifact_file: str) -> Path:
        path = self.offline_dir / f"offline-{self.run_id}-files" / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def log_params(self, params: Mapping[str, Any]) -> None:
        values = {key: str(_param_value(value)) for key, value in params.items()}
        self._send(
            {"op": "params", "params": values},
            lambda: self._client.log_batch(
                self.run_id, params=[Param(key, value) for key, value in values.items()]
            ),
        )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        values = {key: str(value) for key, value in tags.items()}
        self._send(
            {"op": "tags", "tags": values},
            lambda: self._client.log_batch(
                self.run_id, tags=[RunTag(key, value) for key, value in values.items()]
            ),
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        stamp = int(time.time() * 1000)
        values = {name: float(value) for name, value in metrics.items()}
        self._send(
            {"op": "metrics", "metrics": values, "step": step, "timestamp": stamp},
            lambda: self._client.log_batch(
                self.run_id,
                metrics=[Metric(name, value, stamp, step) for name, value in values.items()],
            ),
        )

    def log_dataset(self, record: DatasetRecord) -> None:
        self.set_tags(
            {
                "dataset.name": record.name,
                "dataset.source": record.source,
                "dataset.sha256": record.sha256,
                "dataset.sizes": f"train={record.train_size} val={record.val_size} "
                f"test={record.test_size}",
            }
        )
        with warnings.catch_warnings():
            # A local path matches several equivalent source types; MLflow picks one and warns.
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(record.source)
        dataset = MetaDataset(  # type: ignore[abstract]
            source=source, name=record.name, digest=record.sha256[:16]
        )
        # The tags above carry the same facts, so an offline run journals nothing more here.
        self._send({"op": "noop"}, lambda: mlflow.log_input(dataset, context="training"))

    def log_text(self, text: str, artifact_file: str) -> None:
        def journal_copy() -> None:
            self._local_copy(artifact_file).write_text(text)

        self._artifact(
            artifact_file,
            lambda: self._client.log_text(self.run_id, text, artifact_file),
            journal_copy,
        )

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        def journal_copy() -> None:
            figure.savefig(self._local_copy(artifact_file))

        self._artifact(
            artifact_file,
            lambda: self._client.log_figure(self.run_id, figure, artifact_file),
            journal_copy,
        )

    def _artifact(self, artifact_file: str, send: Any, journal_copy: Any) -> None:
        record = {"op": "artifact", "path": artifact_file}
        if self.journal is None and self._try(send):
            return
        journal_copy()
        self._write(record)

    def log_model(self, model: keras.Model | SavedKerasModel) -> str | None:
        """Log the model with MLflow's Keras flavor, in Keras's native format, with a signature:
        float32 images (n, 28, 28, 1) in, class probabilities (n, 10) out. Returns its URI and
        tags the run with it as ``model_uri`` (None if the run is offline: the model is then
        saved beside the journal)."""
        logged: list[Any] = []

        def send() -> None:
            logged.append(log_keras_model(model))

        if self.journal is None and self._try(send):
            self.model_uri = logged[-1].model_uri
            self.set_tags({"model_uri": logged[-1].model_uri})
            return self.model_uri
        path = self._local_copy("model.keras")
        model.save(path)
        self._write({"op": "model", "path": str(path)})
        return None

    def log_evaluation(self, matrix: np.ndarray, history: Mapping[str, list[float]]) -> None:
        """The confusion matrix (CSV and picture) and the training curves."""
        from src import report

        self.log_text(report.confusion_matrix_csv(matrix), "evaluation/confusion_matrix.csv")
        for figure, path in (
            (report.plot_confusion_matrix(matrix), "evaluation/confusion_matrix.png"),
            (report.plot_training_curves(history), "plots/training_curves.png"),
        ):
            self.log_figure(figure, path)
            report.close(figure)

    def close(self, outcome: Outcome) -> None:
        """End the run with ``outcome``: a failure keeps its error as a tag and its traceback
        as an artifact. Says where the journal is if part of the run could not be sent."""
        if outcome.error is not None:
            self.set_tags({"error": outcome.error, **(outcome.tags or {})})
        if outcome.traceback is not None:
            self.log_text(outcome.traceback, "error/traceback.txt")
        self.end(outcome.status)
        if self.journal is not None:
            print(
                f"warning: part of run {self.run_id} could not reach {mask_uri(self.uri)} and "
                f"is in {self.journal}; upload it when the store is back with:\n"
                f"  python -m src.replay {self.journal}",
                file=sys.stderr,
            )

    def end(self, status: str) -> None:
        """Close the run, through the fluent API that opened it. An offline run first tries
        once more to send its journal, so that a store that is back gets everything."""

        def close() -> None:
            if mlflow.active_run() is not None:
                mlflow.end_run(status)  # Pops the fluent API's run, then tells the store.
            else:
                self._client.set_terminated(self.run_id, status=status)

        if self.journal is None and self._try(close):
            return
        self._write({"op": "end", "status": status})
        # Clear the fluent API's active run (it is popped before the store is asked).
        with contextlib.suppress(*UNREACHABLE):
            mlflow.end_run(status)
        if self.journal is not None and self._store_answers():
            with contextlib.suppress(*UNREACHABLE):
                replay_journal(self.journal)
                print(
                    f"The tracking store answers again: {self.journal} was sent into the run.",
                    file=sys.stderr,
                )
                self.journal = None


def log_keras_model(model: keras.Model | SavedKerasModel) -> Any:
    """Log the model into the active run with MLflow's Keras flavor; returns MLflow's ModelInfo."""
    return mlflow.keras.log_model(
        model,
        name=MODEL_NAME,
        signature=model_signature(model),
        pip_requirements=model_requirements(),
    )


def model_signature(model: keras.Model | SavedKerasModel) -> ModelSignature:
    """Float32 images in, probabilities out. The input is unnamed: with a name, MLflow hands
    the model a dict, which Keras warns about on every predict."""
    input_shape = (-1, *model.input_shape[1:])
    output_shape = (-1, *model.output_shape[1:])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), input_shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), output_shape, "probabilities")]),
    )


def model_requirements() -> list[str]:
    """Explicit requirements: inferring them costs seconds per run."""
    return [
        f"{package}=={importlib.metadata.version(package)}"
        for package in ("mlflow", "keras", "tensorflow")
    ]


def _param_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    if isinstance(value, str) and "://" in value:
        return mask_uri(value)
    return "null" if value is None else value


def open_run(
    uri: str | None,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    offline_dir: Path,
) -> Run:
    """Open one run in the store (creating the store and the experiment if needed)."""
    tracking_uri, experiment_id = prepare_store(uri, experiment)
    mlflow.set_tracking_uri(tracking_uri)
    active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags))
    return Run(active.info.run_id, tracking_uri, offline_dir)


@contextmanager
def start_run(
    uri: str | None,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    offline_dir: Path,
) -> Iterator[Run]:
    """Open one run and close it with the status the job earned: FINISHED, FAILED (with the
    error as a tag and the traceback as an artifact) or KILLED on an interrupt."""
    run = open_run(uri, experiment, run_name, tags, offline_dir)
    try:
        yield run
    except BaseException as error:
        run.close(Outcome.of(error))
        raise
    else:
        run.close(Outcome.of(None))


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of the named experiment, created if it does not exist yet (by this process or
    by a concurrent one)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"tracking.experiment={name} is deleted in {uri}: restore it in the UI or "
            "choose another name"
        )
    return str(experiment.experiment_id)


# Sweeps: one parent run per multirun, the jobs' runs nested under it. The parent is handled
# through the client API (not the fluent "active run"), so that jobs running in the same
# process can open their own runs freely.

PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class RunSummary:
    """What the comparison of runs needs to know of one run."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def prepare_store(uri: str | None, experiment: str) -> tuple[str, str]:
    """Create the store (its database schema) and the experiment if they do not exist yet, so
    that concurrent jobs find them ready. Returns the tracking URI and the experiment id."""
    tracking_uri = resolve_uri(uri)
    ensure_sqlite_folder(tracking_uri)
    with creating(tracking_uri):
        return tracking_uri, _experiment_id(MlflowClient(tracking_uri), experiment, tracking_uri)


def find_sweep_to_resume(uri: str, experiment_id: str, fingerprint: str) -> str | None:
    """The newest unfinished (interrupted or failed) sweep run with this fingerprint, if any."""
    runs = MlflowClient(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.sweep_fingerprint = '{fingerprint}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs and runs[0].info.status != RunStatus.to_string(RunStatus.FINISHED):
        return str(runs[0].info.run_id)
    return None


def start_sweep_run(
    uri: str, experiment_id: str, name: str, tags: Mapping[str, str], resume_run_id: str | None
) -> str:
    """Open the sweep's parent run (or reopen an interrupted one) and return its id."""
    client = MlflowClient(uri)
    if resume_run_id is not None:
        client.update_run(resume_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        client.set_tag(resume_run_id, "sweep_resumed", "true")
        return resume_run_id
    run = client.create_run(experiment_id, run_name=name, tags=dict(tags))
    return str(run.info.run_id)


def reusable_child_run(uri: str, parent_run_id: str, config_hash: str) -> RunSummary | None:
    """A finished child run of this sweep that trained exactly this config, if there is one."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=(
            f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.config_hash = '{config_hash}' "
            "and attributes.status = 'FINISHED'"
        ),
        max_results=1,
    )
    return _summary(runs[0]) if runs else None


def find_runs(
    uri: str,
    experiment: str,
    parent_run_id: str | None = None,
    filter_string: str = "",
    max_results: int = 1000,
) -> list[RunSummary]:
    """Runs of an experiment, optionally only one sweep's children, newest first."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    clauses = [clause for clause in (filter_string.strip(),) if clause]
    if parent_run_id is not None:
        clauses.append(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )
    return [_summary(run) for run in runs]


def latest_sweep_run_id(uri: str, experiment: str) -> str | None:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string="tags.sweep_role = 'parent'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return str(runs[0].info.run_id) if runs else None


def metric_history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    history = MlflowClient(uri).get_metric_history(run_id, metric)
    return sorted((item.step, item.value) for item in history)


def log_to_run(
    uri: str,
    run_id: str,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    texts: Mapping[str, str] | None = None,
    figures: Mapping[str, Figure] | None = None,
) -> None:
    """Record metrics, tags, text and figure artifacts on a run that is not the active one."""
    client = MlflowClient(uri)
    for name, number in (metrics or {}).items():
        client.log_metric(run_id, name, number)
    for key, text in (tags or {}).items():
        client.set_tag(run_id, key, text)
    for path, content in (texts or {}).items():
        client.log_text(run_id, content, path)
    for path, figure in (figures or {}).items():
        client.log_figure(run_id, figure, path)


def end_run(uri: str, run_id: str, status: str) -> None:
    """Close a run with FINISHED, FAILED or KILLED, unless it is closed already."""
    client = MlflowClient(uri)
    if client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
        client.set_terminated(run_id, status=status)


def _summary(run: Any) -> RunSummary:
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        status=run.info.status,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
    )


def replay_journal(journal: Path, uri: str | None = None) -> tuple[str, str]:
    """Upload what an offline run wrote to ``journal`` (see :class:`Run`) into its run, then
    close the run with the status it ended with. Returns the run id and that status."""
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    if not records or records[0].get("op") != "run":
        raise TrackingError(f"{journal}: not an offline run journal written by this project")
    run_id = records[0]["run_id"]
    tracking_uri = uri or records[0]["uri"]
    client = MlflowClient(tracking_uri)
    files = journal.parent / f"offline-{run_id}-files"
    # A journal without an end record belongs to a process that died before closing its run.
    status = RunStatus.to_string(RunStatus.FAILED)
    for record in records[1:]:
        op = record["op"]
        if op == "params":
            params = [Param(key, value) for key, value in record["params"].items()]
            client.log_batch(run_id, params=params)
        elif op == "tags":
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()])
        elif op == "metrics":
            stamp, step = record["timestamp"], record["step"]
            metrics = [Metric(k, v, stamp, step) for k, v in record["metrics"].items()]
            client.log_batch(run_id, metrics=metrics)
        elif op == "artifact":
            folder = str(Path(record["path"]).parent)
            artifact_path = None if folder == "." else folder
            client.log_artifact(run_id, str(files / record["path"]), artifact_path=artifact_path)
        elif op == "model":
            import keras

            model = keras.saving.load_model(record["path"], safe_mode=True)
            mlflow.set_tracking_uri(tracking_uri)
            with mlflow.start_run(run_id=run_id):
                info = log_keras_model(model)
            client.set_tag(run_id, "model_uri", info.model_uri)
        elif op == "end":
            status = record["status"]
    client.set_terminated(run_id, status=status)
    journal.rename(journal.with_suffix(".uploaded"))
    return run_id, status
