"""What a run records, independent of where it is recorded: the run's name, its flattened
params, the git commit, the per-epoch metrics callback, and a dry run that records nothing.
MLflow is not imported here, so a dry run (tracking.enabled=false) never loads it."""

from __future__ import annotations

import shutil
import subprocess
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from src.schema import PROJECT_ROOT

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

# Overrides that say where things go rather than what is trained; left out of run names.
_NOT_IN_RUN_NAME = ("tracking.", "data.dir", "data.cache_dir", "hydra.", "trainer.verbose")


class MetricsSink(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None: ...


def run_name_from_overrides(overrides: Sequence[str]) -> str:
    """A short, readable name such as ``sgd,categorical,epochs=2`` from the command line's
    overrides (``defaults`` when there are none)."""
    parts = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.startswith(_NOT_IN_RUN_NAME):
            continue
        value = _short_number(value)
        parts.append(value if "." not in key else f"{key.rsplit('.', 1)[-1]}={value}")
    return ",".join(parts)[:250] or "defaults"


def _short_number(value: str) -> str:
    """``0.03142880890840111`` -> ``0.03143``: sweepers' sampled values, readable."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if len(value) <= 8 else f"{number:.4g}"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: ``{"optimizer": {"name": "sgd"}}`` -> ``optimizer.name``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def git_commit() -> str | None:
    """The checkout's commit, if the project runs from a git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    source: str
    sha256: str
    train_size: int
    val_size: int
    test_size: int


@dataclass(frozen=True)
class SavedKerasModel:
    """A Keras model already saved to a ``.keras`` file, standing in for the model where it is
    logged: MLflow's Keras flavor needs only its shapes (for the signature) and ``save``, so
    the recording process copies the file instead of loading and saving the model again."""

    path: str
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]

    def save(self, destination: str | Path, **_: Any) -> None:
        shutil.copyfile(self.path, destination)


@dataclass(frozen=True)
class Outcome:
    """How a run ends: its MLflow status, and for a failure the error, extra tags and the
    traceback to keep. Plain data, so it can be handed to another process."""

    status: str  # FINISHED, FAILED or KILLED
    error: str | None = None
    tags: Mapping[str, str] | None = None
    traceback: str | None = None

    @classmethod
    def of(cls, error: BaseException | None) -> Outcome:
        """The outcome of a job that raised ``error`` (None: it finished)."""
        if error is None:
            return cls("FINISHED")
        if isinstance(error, KeyboardInterrupt):
            return cls("KILLED", error=f"interrupted ({error})")
        return cls(
            "FAILED",
            error=f"{type(error).__name__}: {error}"[:5000],
            tags=dict(getattr(error, "run_tags", {})),
            traceback="".join(traceback.format_exception(error)),
        )


class EpochMetricsLogger:
    """Logs loss, accuracy, val_loss, val_accuracy, the learning rate and the epoch's seconds
    after every epoch, with ``step`` the epoch number (1, 2, ...), and keeps them in
    ``history``. ``callback()`` gives the Keras callback that feeds it."""

    def __init__(self, run: MetricsSink) -> None:
        self.run = run
        self.history: dict[str, list[float]] = {}
        self._started = 0.0

    def epoch_started(self) -> None:
        self._started = time.perf_counter()

    def epoch_ended(self, epoch: int, logs: Mapping[str, Any], learning_rate: float) -> None:
        metrics = {name: float(value) for name, value in logs.items()}
        metrics["learning_rate"] = learning_rate
        metrics["epoch_seconds"] = time.perf_counter() - self._started
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(value)
        self.run.log_metrics(metrics, step=epoch + 1)

    def callback(self) -> keras.callbacks.Callback:
        import keras  # Imported here so that the rest of this module does not need Keras.

        logger = self

        class EpochMetrics(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
                logger.epoch_started()

            def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
                learning_rate = float(np.asarray(self.model.optimizer.learning_rate))
                logger.epoch_ended(epoch, logs or {}, learning_rate)

        return EpochMetrics()


class DryRun:
    """Stands in for an MLflow run when tracking is off: records nothing."""

    run_id = None
    model_uri = None
    journal = None
    records_artifacts = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_dataset(self, record: DatasetRecord) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        pass

    def log_evaluation(self, matrix: np.ndarray, history: Mapping[str, list[float]]) -> None:
        pass

    def log_model(self, model: keras.Model) -> None:
        pass
