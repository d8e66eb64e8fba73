"""The typed schema under the YAML in conf/, and the one place where values are checked.

Hydra merges each YAML option onto the dataclass registered here, so a value of the wrong type
(``trainer.epochs=abc``) is refused while the config is composed. Ranges and the agreements
between settings are checked by :func:`validate`, once, before any data is read or any run is
recorded; the rest of the code trusts the values it is given.

This module imports neither TensorFlow nor MLflow, so ``--help`` and ``--cfg job`` stay fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from src.backend import DEVICES, OFFERED
from src.errors import PipelineError
from src.uris import mask_text

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(PipelineError, ValueError):
    """A config value that is out of range or disagrees with another one."""


class LabelEncoding(str, Enum):
    """How the labels are given to the loss: class indices, or one-hot rows."""

    integer = "integer"
    one_hot = "one_hot"


# The type of every setting; the YAML in conf/ says what each one means.


@dataclass
class BackendConfig:
    name: str = MISSING


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    name: str = MISSING
    learning_rate: float = MISSING
    weight_decay: float | None = None
    clipnorm: float | None = None
    clipvalue: float | None = None
    global_clipnorm: float | None = None
    use_ema: bool = False
    ema_momentum: float = 0.99


@dataclass
class AdamConfig(OptimizerConfig):
    beta_1: float = MISSING
    beta_2: float = MISSING
    epsilon: float = MISSING
    amsgrad: bool = False


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = MISSING
    nesterov: bool = False


@dataclass
class LossConfig:
    name: str = MISSING
    label_encoding: LabelEncoding = MISSING
    fn: Any = MISSING


@dataclass
class ModelConfig:
    _target_: str = MISSING
    name: str = MISSING
    conv_dropout: float = MISSING
    dense_dropout: float = MISSING


@dataclass
class DataConfig:
    dir: str | None = None
    cache_dir: str = MISSING
    url: str = MISSING
    sha256: str = MISSING
    verify: bool = True
    val_fraction: float = MISSING
    limit: int | None = None


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    shuffle: bool = True
    seed: int = MISSING
    verbose: int = 1
    steps_per_execution: int = 1
    device: str = "auto"


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str = MISSING
    run_name: str | None = None
    log_model: bool = True
    register: bool | None = None
    system_metrics: bool = True


@dataclass
class SweepConfig:
    rerun: bool = False
    seeds: int = 1  # a grid sweep's every combination with trainer.seed and the next seeds-1
    trial: int | None = None  # set by the Optuna sweeper: the job's trial in the study


@dataclass
class TrainConfig:
    backend: BackendConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    loss: LossConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    sweep: SweepConfig = MISSING
    schedule: Any = MISSING
    optimized_metric: str = MISSING


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(group="schema/optimizer", name="adam", node=AdamConfig)
    store.store(group="schema/optimizer", name="sgd", node=SGDConfig)


# The Keras losses whose label encoding is known; another loss is trusted as configured.
_ENCODING_OF_LOSS = {
    "keras.losses.SparseCategoricalCrossentropy": LabelEncoding.integer,
    "keras.losses.CategoricalCrossentropy": LabelEncoding.one_hot,
}


def _positive(value: Any) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _unit_interval_open(value: Any) -> bool:
    return 0 <= value < 1


# Each key, what it must satisfy, and how to say so.
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("optimizer.learning_rate", _positive, "a number > 0"),
    ("optimizer.momentum", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("optimizer.beta_1", _unit_interval_open, "a number in [0, 1)"),
    ("optimizer.beta_2", _unit_interval_open, "a number in [0, 1)"),
    ("optimizer.epsilon", _positive, "a number > 0"),
    ("optimizer.weight_decay", lambda v: v is None or v >= 0, "null or a number >= 0"),
    ("optimizer.clipnorm", lambda v: v is None or _positive(v), "null or a number > 0"),
    ("optimizer.clipvalue", lambda v: v is None or _positive(v), "null or a number > 0"),
    ("optimizer.global_clipnorm", lambda v: v is None or _positive(v), "null or a number > 0"),
    ("optimizer.ema_momentum", _unit_interval_open, "a number in [0, 1)"),
    ("model.conv_dropout", _unit_interval_open, "a rate in [0, 1)"),
    ("model.dense_dropout", _unit_interval_open, "a rate in [0, 1)"),
    (
        "data.val_fraction",
        lambda v: 0 <= v < 1,
        "a fraction in [0, 1) (0: no validation hold-out, train on every image)",
    ),
    ("data.limit", lambda v: v is None or v >= 2, "null (all images) or an integer >= 2"),
    ("trainer.epochs", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("sweep.seeds", lambda v: 1 <= v <= 1000, "a number of seeds from 1 to 1000"),
    ("trainer.verbose", lambda v: v in (0, 1, 2), "0, 1 or 2"),
    ("trainer.steps_per_execution", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.device", lambda v: v in DEVICES, "auto, cpu or gpu"),
    ("backend.name", lambda v: v in OFFERED, "tensorflow or jax (PyTorch is not offered)"),
    ("schedule.warmup_fraction", lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    ("schedule.start_fraction", lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    ("tracking.experiment", lambda v: bool(v.strip()), "a non-empty name"),
    (
        "tracking.uri",
        lambda v: v is None or re.match(_TRACKING_SCHEMES, v) is not None,
        "unset (the project's store) or a tracking URI such as sqlite:////abs/path/mlflow.db "
        "or http://127.0.0.1:5000",
    ),
    ("data.cache_dir", lambda v: bool(v.strip()), "a folder"),
    ("data.url", lambda v: v.startswith(("https://", "http://", "file://")), "an http(s) URL"),
    ("data.sha256", lambda v: re.fullmatch("[0-9a-fA-F]{64}", v) is not None, "64 hex digits"),
    (
        "optimized_metric",
        lambda v: v in ("val_accuracy", "val_loss", "accuracy", "loss", "test_accuracy"),
        "one of val_accuracy, val_loss, accuracy, loss, test_accuracy",
    ),
)


# The schemes of MLflow's tracking stores (plain folders are refused by MLflow 3).
_TRACKING_SCHEMES = r"^(sqlite|https?|postgresql|mysql|mssql|databricks)(\+[a-z0-9]+)?://"


def validate(cfg: DictConfig) -> None:
    """Check every range and agreement in a composed config; raise ConfigError on the first
    value that is wrong, naming the key, the value and what is allowed."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} has no value: set it, e.g. {missing[0]}=...")
    for key, check, allowed in _RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not check(value):
            shown = value
            if isinstance(value, str):
                shown = mask_text(value) if value.strip() else repr(value)
            raise ConfigError(f"{key}={shown} is not allowed: it must be {allowed}")

    limit, val_fraction = cfg.data.limit, cfg.data.val_fraction
    if val_fraction == 0 and str(cfg.optimized_metric).startswith("val_"):
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric} needs validation images, and "
            "data.val_fraction=0 holds out none: set optimized_metric=test_accuracy or "
            "data.val_fraction above 0"
        )
    if limit is not None and val_fraction > 0 and int(limit * val_fraction) < 1:
        raise ConfigError(
            f"data.val_fraction={val_fraction} of data.limit={limit} images holds out no "
            "validation image: raise data.limit or data.val_fraction"
        )

    target = OmegaConf.select(cfg, "loss.fn._target_")
    needed = _ENCODING_OF_LOSS.get(target)
    encoding = LabelEncoding(cfg.loss.label_encoding)
    if needed is not None and needed != encoding:
        raise ConfigError(
            f"loss.label_encoding={encoding.value} does not fit {target}, which needs "
            f"{needed.value} labels: choose the loss with loss=sparse or loss=categorical"
        )


_ABSENT = object()
