"""Train the MNIST CNN and record the run in MLflow.

    python -m src.train                                  # the original tf.keras program's run
    python -m src.train optimizer=sgd loss=categorical   # another run to compare it with
    python -m src.train --help                           # every option

``train(cfg)`` holds the pipeline, step by step as in the tutorial: load, build, compile, fit,
evaluate, record. ``main`` is the Hydra entry point. TensorFlow and MLflow are imported inside
``train`` so that ``--help`` and ``--cfg job`` answer at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src import backend, collector, records, signals
from src.errors import DivergedError, PipelineError, TrialPruned, one_line
from src.schema import ConfigError, LabelEncoding, register_configs, validate
from src.sweep import RESULT_FILE, SweepContext, config_hash, current_sweep
from src.uris import mask_overrides, mask_text

if TYPE_CHECKING:
    import keras

    from src.data import RawMnist, Splits

register_configs()


@dataclass(frozen=True)
class TrainResult:
    run_id: str | None  # None for a dry run (tracking.enabled=false)
    model_uri: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    device: str | None = None  # where it trained (the run's tag ``device``)
    reused: bool = False  # True: an interrupted sweep's finished run, not trained again


def train(
    cfg: DictConfig, overrides: Sequence[str] = (), sweep: SweepContext | None = None
) -> TrainResult:
    """Run one training job as ``cfg`` says and record it; ``overrides`` are the command-line
    overrides that produced ``cfg`` (they name the run and are stored with it), ``sweep`` the
    sweep the job belongs to, if any."""
    validate(cfg)
    overrides = mask_overrides(list(overrides))
    fingerprint = config_hash(cfg)
    if sweep is not None and sweep.resumed:
        reused = _reuse_finished_job(cfg, sweep, fingerprint)
        if reused is not None:
            return reused

    with collector.setting_up() as set_up:
        # Load: the data is read and checked before anything is recorded.
        from src import data

        backend.import_keras(cfg.backend.name, cfg.trainer.device)
        device = backend.training_device(cfg.trainer.device)
        raw = data.load_mnist(
            cfg.data.dir, cfg.data.cache_dir, cfg.data.url, cfg.data.sha256, cfg.data.verify
        )
        one_hot = LabelEncoding(cfg.loss.label_encoding) is LabelEncoding.one_hot
        splits = data.prepare(
            raw,
            cfg.data.val_fraction,
            cfg.trainer.seed,
            one_hot,
            cfg.data.limit,
            cfg.trainer.batch_size,
        )

        model, loss = _build_and_compile(cfg, len(splits.x_train))
        store = _prepare_store(cfg, sweep)
        # The run starts with the collector back: the child processes of MLflow's git look-up
        # end when the collector frees their objects, and frozen ones would outlive the run.
        set_up()
        with _open_run(cfg, overrides, sweep, fingerprint, store) as run:
            run.log_setup(*_setup_records(cfg, overrides, model, raw, splits, device))
            history, fit_seconds = _fit(cfg, model, splits, run)
            metrics, predicted = _evaluate(model, loss, splits)
            samples = len(splits.x_train) * cfg.trainer.epochs
            metrics.update(fit_seconds=fit_seconds, train_samples_per_second=samples / fit_seconds)
            run.log_metrics(metrics, step=cfg.trainer.epochs)
            kept_model = model if cfg.tracking.log_model else None
            run.log_results(splits.x_test, splits.test_labels, predicted, history, kept_model)

    metrics.update({name: values[-1] for name, values in history.items()})
    result = TrainResult(run.run_id, run.model_uri, metrics, device)
    _print_summary(cfg, result)
    if cfg.tracking.register and result.model_uri and sweep is None:  # A sweep registers its best.
        _register(cfg, result.model_uri, metrics[cfg.optimized_metric])
    return result


def _build_and_compile(cfg: DictConfig, train_size: int) -> tuple[keras.Model, Any]:
    """The CNN compiled with the configured optimizer, schedule and loss; and that loss."""
    import keras
    from hydra.utils import instantiate

    keras.utils.set_random_seed(cfg.trainer.seed)
    model = instantiate(cfg.model)
    loss = instantiate(cfg.loss.fn)
    steps = -(-train_size // cfg.trainer.batch_size) * cfg.trainer.epochs
    rate = instantiate(cfg.schedule, learning_rate=cfg.optimizer.learning_rate, total_steps=steps)
    model.compile(
        optimizer=instantiate(cfg.optimizer, _partial_=True)(learning_rate=rate),
        loss=loss,
        metrics=["accuracy"],
        steps_per_execution=cfg.trainer.steps_per_execution,
    )
    return model, loss


def _prepare_store(cfg: DictConfig, sweep: SweepContext | None) -> tuple[str, str] | None:
    """The tracking URI and experiment id the run goes to, both created if new (None for a dry
    run). A sweep's job waits out a restart of its store, where a single run fails at once."""
    if not cfg.tracking.enabled:
        return None
    from src import tracking

    wait = sweep is not None
    return tracking.prepare_store(cfg.tracking.uri, cfg.tracking.experiment, wait_for_store=wait)


def _open_run(
    cfg: DictConfig,
    overrides: list[str],
    sweep: SweepContext | None,
    fingerprint: str,
    store: tuple[str, str] | None,
) -> contextlib.AbstractContextManager[records.Recorder]:
    """The job's run in MLflow's ``store``, or a dry run that records nothing (None)."""
    if store is None:
        return contextlib.nullcontext(records.DryRun())
    from src import tracking

    tags = {"overrides": " ".join(overrides) or "(none)", "config_hash": fingerprint}
    if sweep is not None:
        tags[tracking.PARENT_TAG] = tags["sweep_id"] = sweep.parent_run_id
        tags["sweep_job"] = str(sweep.job_number)
    if cfg.sweep.trial is not None:
        tags["optuna.trial"] = str(cfg.sweep.trial)
    if job := _slurm_job_id():
        tags["slurm_job_id"] = job
    if commit := records.git_commit():
        tags["git_commit"] = tags["mlflow.source.git.commit"] = commit
    name = cfg.tracking.run_name or records.run_name_from_overrides(overrides)
    return tracking.start_run(
        *store, name, tags, _output_dir(), system_metrics=cfg.tracking.system_metrics
    )


def _setup_records(
    cfg: DictConfig,
    overrides: list[str],
    model: keras.Model,
    raw: RawMnist,
    splits: Splits,
    device: str,
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """What a run records before training: the resolved config, Keras's backend and versions
    as params (passwords masked), the device and the dataset as tags, and the config, the
    overrides and the model's summary as files."""
    settings = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    params = {**records.flatten(settings), **backend.versions()}
    params["model.parameter_count"] = model.count_params()
    sizes = (len(splits.x_train), len(splits.x_val), len(splits.x_test))
    tags = {
        "device": device,
        "dataset.name": "mnist",
        "dataset.source": raw.source,
        "dataset.sha256": raw.sha256,
        "dataset.sizes": "train={} val={} test={}".format(*sizes),
    }
    summary: list[str] = []
    model.summary(print_fn=lambda line, **_: summary.append(line))
    texts = {
        "config/config.yaml": mask_text(OmegaConf.to_yaml(settings)),
        "config/overrides.yaml": OmegaConf.to_yaml(overrides),
        "model_summary.txt": "\n".join(summary) + "\n",
    }
    return params, tags, texts


def _fit(
    cfg: DictConfig, model: keras.Model, splits: Splits, run: records.Recorder
) -> tuple[dict[str, list[float]], float]:
    """``model.fit`` as in the tutorial, recording every epoch as it ends (with ``step`` the
    epoch number, from 1) and stopping after the first epoch whose loss is not a finite
    number. Returns Keras's per-epoch history and the seconds fit took.

    No callback looks at single batches (Keras's TerminateOnNaN does): one that does makes
    Keras wait for every batch to finish before it starts the next."""
    import keras

    epoch_started: dict[int, float] = {}

    def record_epoch(epoch: int, logs: dict[str, Any]) -> None:
        # Added to ``logs``, so that Keras's History keeps them too.
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        logs["epoch_seconds"] = time.perf_counter() - epoch_started[epoch]
        run.log_metrics(logs, step=epoch + 1)
        model.stop_training = model.stop_training or not math.isfinite(logs["loss"])

    epochs = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epoch_started.setdefault(epoch, time.perf_counter()),
        on_epoch_end=record_epoch,
    )
    callbacks = [epochs]
    pruning = None
    if cfg.sweep.trial is not None:  # An Optuna trial: the study's pruner may stop it.
        from src import search

        pruning = search.pruning_callback(cfg.sweep.trial, cfg.optimized_metric)
        callbacks.append(pruning)
    fit_started = time.perf_counter()
    history = model.fit(
        splits.x_train,
        splits.y_train,
        batch_size=cfg.trainer.batch_size,
        epochs=cfg.trainer.epochs,
        shuffle=cfg.trainer.shuffle,
        validation_data=(splits.x_val, splits.y_val) if len(splits.x_val) else None,
        callbacks=callbacks,
        verbose=cfg.trainer.verbose,
    ).history
    if not math.isfinite(history["loss"][-1]):
        raise DivergedError(epoch=len(history["loss"]))
    if pruning is not None:
        pruning.raise_if_pruned()
    return history, time.perf_counter() - fit_started


def _evaluate(model: keras.Model, loss: Any, splits: Splits) -> tuple[dict[str, float], Any]:
    """Test loss and accuracy from one forward pass over the test set (in large batches: it
    has no training-time behaviour to preserve); and the predicted digits."""
    import keras
    import numpy as np

    probabilities = model.predict(splits.x_test, batch_size=512, verbose=0)
    predicted = probabilities.argmax(axis=1)
    metrics = {
        "test_loss": float(keras.ops.convert_to_numpy(loss(splits.y_test, probabilities))),
        "test_accuracy": float(np.mean(predicted == splits.test_labels)),
    }
    return metrics, predicted


def _reuse_finished_job(
    cfg: DictConfig, sweep: SweepContext, fingerprint: str
) -> TrainResult | None:
    """The run this resumed sweep's job already finished with the same config, if any."""
    from src import tracking

    done = tracking.reusable_child_run(cfg.tracking.uri, sweep.parent_run_id, fingerprint)
    if done is None:
        return None
    run_id = done.info.run_id
    print(f"Job {sweep.job_number}: reusing finished run {run_id} (sweep.rerun=true trains again)")
    tags = done.data.tags
    model_uri, device = tags.get("model_uri"), tags.get("device")
    return TrainResult(run_id, model_uri, done.data.metrics, device, reused=True)


def _register(cfg: DictConfig, model_uri: str, value: float) -> None:
    """Register the run's model (tracking.register=true) as the experiment's next version."""
    from src import compare, tracking

    metric, uri = cfg.optimized_metric, tracking.resolve_uri(cfg.tracking.uri)
    lower = compare.lower_is_better(metric)
    print(tracking.register_model(uri, model_uri, cfg.tracking.experiment, metric, value, lower))


def _slurm_job_id() -> str | None:
    """The SLURM job this process runs in, as squeue shows it and scancel takes it: an array
    job's task as ``<array job id>_<task id>`` (its plain job id may be the whole array's)."""
    env = os.environ
    if "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _output_dir() -> Path:
    """The job's own folder: Hydra's output folder, or the working directory outside Hydra."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def _print_summary(cfg: DictConfig, result: TrainResult) -> None:
    metrics, epochs = result.metrics, cfg.trainer.epochs
    where = "Dry run (tracking.enabled=false): nothing was recorded."
    if result.run_id is not None:
        from src import tracking

        model = f", model {result.model_uri}" if result.model_uri else ""
        hint = tracking.ui_hint(tracking.resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
        where = (
            f"Recorded as run {result.run_id} in experiment '{cfg.tracking.experiment}'{model}."
            f"\nTo compare runs, {hint}."
        )
    validation = (
        f"; validation accuracy {metrics['val_accuracy']:.4f}" if "val_accuracy" in metrics else ""
    )
    print(
        f"\nTest accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) "
        f"after {epochs} epoch{'s' if epochs != 1 else ''}{validation}.\n"
        f"Trained with Keras on {cfg.backend.name}, on {result.device}.\n{where}"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point: train, leave the job's outcome in ``result.json`` in its folder
    (for the sweep's summary, benchmarks and scripts), and return the metric a sweeper
    optimises (NaN for a failed job: Optuna then records a failed trial and goes on)."""
    signals.install()
    started = time.perf_counter()
    overrides = mask_overrides(list(HydraConfig.get().overrides.task))
    sweep = current_sweep()
    outcome: dict[str, Any] = {"overrides": overrides}
    if sweep is not None:
        outcome.update(sweep_id=sweep.parent_run_id, job_number=sweep.job_number)
    try:
        if cfg.sweep.seeds > 1 and HydraConfig.get().mode != RunMode.MULTIRUN:
            raise ConfigError(f"sweep.seeds={cfg.sweep.seeds} repeats the jobs of a sweep: add -m")
        result = train(cfg, overrides, sweep)
    except KeyboardInterrupt as error:
        # The run is closed KILLED already; in a sweep the parent is closed at exit.
        print(f"\nInterrupted ({error}): the run is recorded as KILLED.", file=sys.stderr)
        if sweep is None or not sweep.in_own_process:
            sys.exit(signals.exit_code(error))
        # A job in a process of its own (a SLURM job that was cancelled or ran out of time):
        # the sweep goes on without it, and names it in its summary.
        outcome.update(status="killed", error=str(error))
        metric = math.nan
    except TrialPruned as error:  # Its run is KILLED and tagged; the sweeper tells Optuna.
        print(f"{error}.", file=sys.stderr)
        outcome.update(status="pruned")
        metric = math.nan
    except Exception as error:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            if isinstance(error, PipelineError):
                print(f"error: {error}", file=sys.stderr)
                sys.exit(2 if isinstance(error, ConfigError) else 1)
            raise
        # In a sweep (a dry one too) one failed job does not stop the others: its run is
        # already FAILED, the sweep's summary names it, and the command exits 1 at the end.
        message = f"{type(error).__name__}: {one_line(error)}"
        print(f"error: job {HydraConfig.get().job.num} failed: {message}", file=sys.stderr)
        outcome.update(status="failed", error=message)
        metric = math.nan
    else:
        outcome.update(asdict(result), status="reused" if result.reused else "finished")
        outcome["job_seconds"] = time.perf_counter() - started  # from the config to the end
        outcome["process_cpu_seconds"] = time.process_time()  # from the process's start
        metric = result.metrics.get(cfg.optimized_metric, math.nan)
    (_output_dir() / RESULT_FILE).write_text(json.dumps(outcome, indent=1))
    return metric


if __name__ == "__main__":
    from src import usage

    try:
        backend.check_environment()
    except backend.BackendError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if usage.wants_help(sys.argv[1:]):
        sys.exit(usage.print_help(sys.argv[1:]))
    main()
