"""Train the MNIST CNN and record the run in MLflow.

    python -m src.train                                  # the original tf.keras program's run
    python -m src.train optimizer=sgd loss=categorical   # another run to compare it with
    python -m src.train --help                           # every option

``train(cfg)`` holds the pipeline, step by step as in the tutorial: load, build, compile, fit,
evaluate, log. ``main`` is the Hydra entry point: it only calls ``train`` and returns the metric
a sweeper optimises. TensorFlow and MLflow are imported inside ``train`` so that ``--help`` and
``--cfg job`` answer at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src import signals
from src.errors import PipelineError
from src.schema import ConfigError, LabelEncoding, register_configs, validate
from src.sweep import (
    JobResult,
    SweepContext,
    config_hash,
    current_sweep,
    job_metric,
    write_job_result,
)
from src.uris import mask_overrides, mask_uri

register_configs()

# The test forward pass has no training-time behaviour to preserve, so it uses large batches.
_EVALUATION_BATCH_SIZE = 512


@dataclass(frozen=True)
class TrainResult:
    run_id: str | None  # None for a dry run (tracking.enabled=false)
    model_uri: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    reused: bool = False  # True: an interrupted sweep's finished run, not trained again


def train(
    cfg: DictConfig, overrides: Sequence[str] = (), sweep: SweepContext | None = None
) -> TrainResult:
    """Run one training job as ``cfg`` says and record it; ``overrides`` are the command-line
    overrides that produced ``cfg`` (they name the run and are stored with it), ``sweep`` the
    sweep the job belongs to, if any."""
    started = time.perf_counter()
    validate(cfg)
    from src import data, records

    background = cfg.tracking.enabled and cfg.tracking.background
    if cfg.tracking.enabled:
        from src import store

        # Check, before anything is read or recorded, that the store can be used.
        store.check_store(cfg.tracking.uri)
    if background:
        from src.recorder import Recorder

        # Started first: it loads MLflow while this process loads TensorFlow and the data.
        recorder = Recorder.get()
    fingerprint = config_hash(cfg)
    if sweep is not None and sweep.resumed and not sweep.rerun:
        from src import tracking

        uri = tracking.resolve_uri(cfg.tracking.uri)
        done = tracking.reusable_child_run(uri, sweep.parent_run_id, fingerprint)
        if done is not None:
            print(
                f"Job {sweep.job_number}: reusing finished run {done.run_id} "
                "(sweep.rerun=true trains it again)"
            )
            return TrainResult(done.run_id, done.tags.get("model_uri"), done.metrics, reused=True)

    # Load: the data is read and checked before anything is recorded.
    raw = data.load_mnist(
        cfg.data.dir, cfg.data.cache_dir, cfg.data.url, cfg.data.sha256, cfg.data.verify
    )
    one_hot = LabelEncoding(cfg.loss.label_encoding) is LabelEncoding.one_hot
    splits = data.prepare(raw, cfg.data.val_fraction, cfg.trainer.seed, one_hot, cfg.data.limit)

    settings = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    # What is recorded never holds a password from a tracking URI.
    if settings["tracking"]["uri"]:
        settings["tracking"]["uri"] = mask_uri(settings["tracking"]["uri"])
    overrides = mask_overrides(list(overrides))
    run_name = cfg.tracking.run_name or records.run_name_from_overrides(overrides)
    tags = _run_tags(overrides, fingerprint, sweep)
    if background:
        # The run is opened while TensorFlow loads; entering the context waits for it.
        recording: Any = recorder.start_run(
            cfg.tracking.uri,
            cfg.tracking.experiment,
            run_name,
            tags,
            _output_dir(),
            logs_model=cfg.tracking.log_model,
        )
    elif cfg.tracking.enabled:
        from src import tracking

        recording = tracking.start_run(
            cfg.tracking.uri, cfg.tracking.experiment, run_name, tags, _output_dir()
        )
    else:
        recording = contextlib.nullcontext(records.DryRun())

    with recording as run:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter.
        import keras
        import numpy as np
        from hydra.utils import instantiate

        from src.divergence import divergence_guard

        # Build and compile.
        keras.utils.set_random_seed(cfg.trainer.seed)
        model = instantiate(cfg.model)
        loss = instantiate(cfg.loss.fn)
        steps_per_epoch = -(-len(splits.x_train) // cfg.trainer.batch_size)
        learning_rate = instantiate(
            cfg.schedule,
            learning_rate=cfg.optimizer.learning_rate,
            total_steps=steps_per_epoch * cfg.trainer.epochs,
        )
        model.compile(
            optimizer=instantiate(cfg.optimizer, _partial_=True)(learning_rate=learning_rate),
            loss=loss,
            metrics=["accuracy"],
            steps_per_execution=cfg.trainer.steps_per_execution,
        )

        run.log_params({**records.flatten(settings), "model.parameter_count": model.count_params()})
        run.log_dataset(
            records.DatasetRecord(
                name="mnist",
                source=raw.source,
                sha256=raw.sha256,
                train_size=len(splits.x_train),
                val_size=len(splits.x_val),
                test_size=len(splits.x_test),
            )
        )
        if run.records_artifacts:
            run.log_text(OmegaConf.to_yaml(settings), "config/config.yaml")
            run.log_text(OmegaConf.to_yaml(list(overrides)), "config/overrides.yaml")
            summary: list[str] = []
            model.summary(print_fn=lambda line, **_: summary.append(line))
            run.log_text("\n".join(summary) + "\n", "model_summary.txt")

        # Fit, with the per-epoch metrics recorded as they come.
        epoch_metrics = records.EpochMetricsLogger(run)
        fit_started = time.perf_counter()
        model.fit(
            splits.x_train,
            splits.y_train,
            batch_size=cfg.trainer.batch_size,
            epochs=cfg.trainer.epochs,
            shuffle=cfg.trainer.shuffle,
            validation_data=(splits.x_val, splits.y_val) if len(splits.x_val) else None,
            callbacks=[divergence_guard(), epoch_metrics.callback()],
            verbose=cfg.trainer.verbose,
        )

        fit_seconds = time.perf_counter() - fit_started
        train_samples = len(splits.x_train) * cfg.trainer.epochs
        run.log_metrics(
            {"fit_seconds": fit_seconds, "train_samples_per_second": train_samples / fit_seconds},
            step=cfg.trainer.epochs,
        )

        if cfg.tracking.log_model:
            # Logged while the test set is evaluated, when recording in the background.
            run.log_model(model)

        # Evaluate on the test set, once, with one forward pass.
        probabilities = model.predict(splits.x_test, batch_size=_EVALUATION_BATCH_SIZE, verbose=0)
        predicted = probabilities.argmax(axis=1)
        test_metrics = {
            "test_loss": float(keras.ops.convert_to_numpy(loss(splits.y_test, probabilities))),
            "test_accuracy": float(np.mean(predicted == splits.test_labels)),
        }
        run.log_metrics(test_metrics, step=cfg.trainer.epochs)
        if run.records_artifacts:
            from src import report

            matrix = report.confusion_matrix(splits.test_labels, predicted)
            run.log_evaluation(matrix, epoch_metrics.history)

    metrics = {name: values[-1] for name, values in epoch_metrics.history.items()}
    metrics.update(test_metrics)
    metrics.update(fit_seconds=fit_seconds, train_samples_per_second=train_samples / fit_seconds)
    result = TrainResult(run_id=run.run_id, model_uri=run.model_uri, metrics=metrics)
    if HydraConfig.initialized():
        # The outcome, machine-readable, in the job's folder (benchmarks and scripts read it).
        # job_seconds: the whole job, from its config to its run closed in the store.
        outcome = {**dataclasses.asdict(result), "job_seconds": time.perf_counter() - started}
        (_output_dir() / "result.json").write_text(json.dumps(outcome, indent=1))
    hint = store.ui_hint(store.resolve_uri(cfg.tracking.uri)) if cfg.tracking.enabled else None
    _print_summary(cfg, result, hint)
    return result


def _run_tags(
    overrides: Sequence[str], fingerprint: str, sweep: SweepContext | None
) -> dict[str, str]:
    """The run's tags: its command line, config fingerprint, sweep membership, git commit."""
    from src import records

    tags = {"overrides": " ".join(overrides) or "(none)", "config_hash": fingerprint}
    if sweep is not None:
        tags["mlflow.parentRunId"] = tags["sweep_id"] = sweep.parent_run_id
        tags["sweep_job"] = str(sweep.job_number)
    commit = records.git_commit()
    if commit:
        tags["git_commit"] = tags["mlflow.source.git.commit"] = commit
    return tags


def _output_dir() -> Path:
    """The job's own folder: Hydra's output folder, or the working directory outside Hydra."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def _print_summary(cfg: DictConfig, result: TrainResult, ui_hint: str | None) -> None:
    metrics = result.metrics
    epochs = cfg.trainer.epochs
    where = (
        f"Recorded as run {result.run_id} in experiment '{cfg.tracking.experiment}'"
        + (f", model {result.model_uri}" if result.model_uri else "")
        + f".\nTo compare runs, {ui_hint}."
        if ui_hint
        else "Dry run (tracking.enabled=false): nothing was recorded."
    )
    validation = (
        f"; validation accuracy {metrics['val_accuracy']:.4f}" if "val_accuracy" in metrics else ""
    )
    print(
        f"\nTest accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) "
        f"after {epochs} epoch{'s' if epochs != 1 else ''}{validation}.\n{where}"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point: train, and return the metric a sweeper optimises."""
    signals.install()
    overrides = mask_overrides(list(HydraConfig.get().overrides.task))
    sweep = current_sweep()
    try:
        result = train(cfg, overrides, sweep)
    except KeyboardInterrupt as error:
        # The run is closed KILLED already; in a sweep the parent is closed at exit.
        print(f"\nInterrupted ({error}): the run is recorded as KILLED.", file=sys.stderr)
        sys.exit(signals.exit_code(error))
    except Exception as error:
        if sweep is None:
            if isinstance(error, PipelineError):
                print(f"error: {error}", file=sys.stderr)
                sys.exit(2 if isinstance(error, ConfigError) else 1)
            raise
        # In a sweep one failed job does not stop the others: its run is already FAILED, the
        # sweep's summary names it, and the command exits non-zero at the end.
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        print(f"error: job {sweep.job_number} failed: {message}", file=sys.stderr)
        write_job_result(JobResult(sweep.job_number, overrides, "failed", None, None, message))
        return job_metric(None)
    metric = result.metrics.get(cfg.optimized_metric)
    if sweep is not None:
        status = "reused" if result.reused else "finished"
        write_job_result(JobResult(sweep.job_number, overrides, status, result.run_id, metric))
    return job_metric(metric)


if __name__ == "__main__":
    from src import usage

    if usage.wants_help(sys.argv[1:]):
        sys.exit(usage.print_help(sys.argv[1:]))
    main()
