"""``python -m src.migrate``: copy the runs of one tracking store into another, typically the
project's SQLite store into the team server (``make migrate``).

Every run arrives with its status and times, its params, its tags, every metric's whole
history, its datasets, its artifacts, its logged models (MLflow 3 keeps them apart from the run's
artifacts) and its parent; registered models follow with their versions and aliases. A copied
run carries the tag ``migrated_from`` (its id in the source), so a second migration copies only
what is new, and a copy an interruption cut short is made again.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelOutput, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from src import tracking
from src.errors import TrackingError, one_line
from src.uris import mask_text

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line, not bars
MARK = "migrated_from"


def migrate(source: MlflowClient, target: MlflowClient, experiments: Sequence[str]) -> str:
    """Copy the named experiments (all when empty); returns what was copied, in one line."""
    ids: dict[str, str] = {}  # run ids and model ids, source -> target
    copied = kept = later = 0
    for experiment in _pages(source.search_experiments):
        if experiments and experiment.name not in experiments:
            continue
        target_id = _target_experiment(target, experiment)
        copies = _copies(target, target_id)
        ids.update(copies)
        runs = list(_pages(source.search_runs, experiment_ids=[experiment.experiment_id]))
        fresh = [run for run in runs if run.info.run_id not in copies]
        running = {run.info.run_id for run in runs if run.info.status == "RUNNING"}
        ended = [  # A running run and the jobs of a running sweep: the next migration's.
            run
            for run in fresh
            if run.info.run_id not in running
            and run.data.tags.get(tracking.PARENT_TAG) not in running
        ]
        for run in ended:
            _copy_run(source, target, run, target_id, ids)
        # Once every id is known, the tags that name a parent or a best run; parents first, so
        # that a job whose copy an interruption cuts short is remade under its parent's copy.
        for run in sorted(ended, key=lambda run: tracking.PARENT_TAG in run.data.tags):
            _close_copy(target, run, ids)
        copied, kept, later = (
            copied + len(ended),
            kept + len(runs) - len(fresh),
            later + len(fresh) - len(ended),
        )
    models = _copy_registry(source, target, ids)
    waiting = f", {later} still running (run it again once they end)" if later else ""
    return (
        f"{copied} runs copied, {kept} already there{waiting}, {models} model versions registered"
    )


def _pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    token = None
    while True:
        page = search(**kwargs, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _target_experiment(target: MlflowClient, experiment: Any) -> str:
    """The experiment's id in the target, made as the project makes one (a SQLite store keeps
    its artifacts beside its database), with the source's tags."""
    _, experiment_id = tracking.prepare_store(target.tracking_uri, experiment.name)
    for key, value in experiment.tags.items():
        target.set_experiment_tag(experiment_id, key, value)
    return experiment_id


def _copies(target: MlflowClient, experiment_id: str) -> dict[str, str]:
    """Source id -> target id of the runs copied whole before and of their models; a copy
    an interruption cut short is deleted, to be made again."""
    copies = {}
    for run in _pages(target.search_runs, experiment_ids=[experiment_id]):
        source_id = run.data.tags.get(MARK)
        if source_id is None:
            continue
        if run.data.tags.get(f"{MARK}.complete") == "true":
            copies[source_id] = run.info.run_id
        else:
            target.delete_run(run.info.run_id)
    for model in _pages(target.search_logged_models, experiment_ids=[experiment_id]):
        if model.source_run_id in copies.values() and MARK in model.tags:
            copies[model.tags[MARK]] = model.model_id
    return copies


def _copy_run(
    source: MlflowClient, target: MlflowClient, run: Run, experiment_id: str, ids: dict[str, str]
) -> None:
    old = run.info.run_id
    new = target.create_run(experiment_id, run.info.start_time, {MARK: old}, run.info.run_name)
    ids[old] = new_id = new.info.run_id
    history = [m for key in run.data.metrics for m in source.get_metric_history(old, key)]
    params = [Param(key, value) for key, value in run.data.params.items()]
    target.log_batch(new_id, history, params)  # MLflow splits it into requests it takes.
    if run.inputs and run.inputs.dataset_inputs:
        target.log_inputs(new_id, datasets=run.inputs.dataset_inputs)
    with tempfile.TemporaryDirectory() as folder:
        target.log_artifacts(new_id, source.download_artifacts(old, "", folder))
    _copy_models(source, target, run, experiment_id, new_id, ids)


def _close_copy(target: MlflowClient, run: Run, ids: dict[str, str]) -> None:
    """The run's tags, with the target's ids, the mark of a whole copy, and its status."""
    copied = {key: value for key, value in run.data.tags.items() if not key.startswith(MARK)}
    tags = {key: _with_new_ids(value, ids) for key, value in copied.items()}
    tags[f"{MARK}.complete"] = "true"
    new_id = ids[run.info.run_id]
    target.log_batch(new_id, tags=[RunTag(key, value) for key, value in tags.items()])
    target.set_terminated(new_id, run.info.status, run.info.end_time)


def _copy_models(
    source: MlflowClient,
    target: MlflowClient,
    run: Run,
    experiment_id: str,
    new_run_id: str,
    ids: dict[str, str],
) -> None:
    found = _pages(
        source.search_logged_models,
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    for model in found:
        tags = {**model.tags, MARK: model.model_id}
        copy = target.create_logged_model(
            experiment_id, model.name, new_run_id, tags, model.params, model.model_type
        )
        ids[model.model_id] = copy.model_id
        with tempfile.TemporaryDirectory() as folder:
            files = Path(
                mlflow.artifacts.download_artifacts(
                    model.artifact_location, dst_path=folder, tracking_uri=source.tracking_uri
                )
            )
            description = files / "MLmodel"
            if description.exists():  # It names its run and model; name the copies.
                description.write_text(_with_new_ids(description.read_text(), ids))
            target.log_model_artifacts(copy.model_id, str(files))
        target.finalize_logged_model(copy.model_id, model.status)
        target.log_outputs(new_run_id, [LoggedModelOutput(copy.model_id, step=0)])


def _with_new_ids(text: str, ids: dict[str, str]) -> str:
    for old, new in ids.items():
        text = text.replace(old, new)
    return text


def _copy_registry(source: MlflowClient, target: MlflowClient, ids: dict[str, str]) -> int:
    """Register again the versions whose model was copied (once), then set the aliases."""
    mlflow.set_tracking_uri(target.tracking_uri)  # Where MLflow looks up a version's models:/.
    count = 0
    for registered in _pages(source.search_registered_models):
        name, where = registered.name, f"name = '{registered.name}'"
        done = {  # "<source run id>/<version>" (unique across stores) -> the target's version
            copy.tags[MARK]: str(copy.version)
            for copy in _pages(target.search_model_versions, filter_string=where)
            if MARK in copy.tags
        }
        keys = {}  # the source's version -> its key
        for version in _pages(source.search_model_versions, filter_string=where):
            model = version.model_id or version.source.removeprefix("models:/")
            keys[str(version.version)] = key = f"{version.run_id}/{version.version}"
            if key in done or model not in ids or version.run_id not in ids:
                continue  # Registered before, or its run is not in the target.
            if not target.search_registered_models(filter_string=where):
                target.create_registered_model(name, registered.tags)
            model, run = ids[model], ids[version.run_id]
            tags = {**version.tags, MARK: key}
            copy = target.create_model_version(name, f"models:/{model}", run, tags, model_id=model)
            done[key] = str(copy.version)
            count += 1
        for alias, version in registered.aliases.items():
            if keys.get(str(version)) in done:
                target.set_registered_model_alias(name, alias, done[keys[str(version)]])
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.migrate", description=__doc__)
    parser.add_argument("--from", dest="source", help="default: the project's store in mlruns/")
    parser.add_argument("--to", dest="target", default="http://127.0.0.1:5000")
    parser.add_argument("--experiment", action="append", default=[], help="default: all")
    args = parser.parse_args(argv)
    database = tracking.sqlite_path(tracking.resolve_uri(args.source))
    if database is not None and not database.exists():
        print(f"error: --from: there is no store at {database}", file=sys.stderr)
        return 2
    try:
        source, target = tracking.open_store(args.source), tracking.open_store(args.target)
        summary = migrate(source, target, args.experiment)
    except TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except MlflowException as error:
        reason = one_line(error)
        print(
            f"error: the migration stopped ({reason}); run it again to copy the rest",
            file=sys.stderr,
        )
        return 1
    print(f"{mask_text(source.tracking_uri)} -> {mask_text(target.tracking_uri)}: {summary}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
