"""What a run records, wherever it goes: the interface of the two recorders (MLflow's run and the
dry run), the dry run itself, and the run's name, params and git commit. Imports neither MLflow
nor Keras, so that a dry run never loads MLflow and a sweep's launcher never loads TensorFlow."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from src.schema import PROJECT_ROOT

if TYPE_CHECKING:
    import keras
    import numpy as np

# Overrides that say where things go rather than what is trained; left out of run names.
_NOT_IN_RUN_NAME = ("tracking", "data.dir", "data.cache_dir", "hydra", "trainer.verbose", "sweep.")


class Recorder(Protocol):
    """Where a training job's records go: :class:`src.tracking.MlflowRun` or :class:`DryRun`."""

    @property
    def run_id(self) -> str | None: ...

    @property
    def model_uri(self) -> str | None: ...

    def log_setup(
        self, params: Mapping[str, Any], tags: Mapping[str, str], texts: Mapping[str, str]
    ) -> None:
        """The run's settings as params, facts as tags, and text files (path: content)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_results(
        self,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        predicted: np.ndarray,
        history: Mapping[str, list[float]],
        model: keras.Model | None,
    ) -> None:
        """The test set's images, true and predicted digits, Keras's per-epoch history, and
        the model (None: not kept)."""


class DryRun:
    """The recorder of ``tracking.enabled=false``: records nothing."""

    run_id = None
    model_uri = None

    def log_setup(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_results(self, *args: Any, **kwargs: Any) -> None:
        pass


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
