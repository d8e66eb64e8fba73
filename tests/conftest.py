"""Shared helpers: compose the project's config on the small real-MNIST fixture, with every
output under the test's temporary folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.schema import register_configs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "mnist_small"

register_configs()


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The project's config as `python -m src.train OVERRIDES` composes it."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def tiny_run_overrides(tmp_path: Path) -> list[str]:
    """Overrides that shrink a run to the fixture and keep every output in ``tmp_path``."""
    return [
        f"data.dir={FIXTURE_DIR}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
        "trainer.verbose=0",
    ]


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a tiny run's config: ``tiny_config("optimizer=sgd", ...)``."""

    def make(*overrides: str) -> DictConfig:
        return compose_config([*tiny_run_overrides(tmp_path), *overrides])

    return make


@pytest.fixture(scope="session", autouse=True)
def jax_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """JAX's compilation cache in the test session's folder, not the user's home: the runs on
    JAX in processes of their own share it."""
    folder = tmp_path_factory.mktemp("jax-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAX_COMPILATION_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
