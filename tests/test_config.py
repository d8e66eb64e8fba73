"""Every config option composes, validates and instantiates; the schema refuses bad values."""

from __future__ import annotations

import subprocess
import sys

import keras
import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ValidationError

from src.schema import ConfigError, validate
from tests.conftest import CONFIG_DIR, PROJECT_ROOT, compose_config

GROUP_OPTIONS = {
    group: sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
    for group in (
        "optimizer",
        "loss",
        "model",
        "data",
        "trainer",
        "tracking",
        "schedule",
        "experiment",
    )
}


def test_the_groups_offer_the_documented_options():
    assert GROUP_OPTIONS["optimizer"] == ["adam", "sgd"]
    assert GROUP_OPTIONS["loss"] == ["categorical", "sparse"]
    assert GROUP_OPTIONS["model"] == ["cnn", "no_dropout"]


@pytest.mark.parametrize(
    "override",
    [f"{group}={option}" for group, options in GROUP_OPTIONS.items() for option in options],
)
def test_every_option_composes_and_validates(override):
    validate(compose_config([override]))


def test_the_fast_preset_is_one_epoch_of_the_same_cnn():
    cfg = compose_config(["experiment=fast"])
    validate(cfg)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.steps_per_execution) == (
        1,
        96,
        8,
    )
    assert cfg.schedule._target_ == "src.schedules.warmup_cosine"
    default = compose_config().model
    assert (cfg.model._target_, cfg.model.name) == (default._target_, default.name)  # Same layers.
    assert (cfg.model.conv_dropout, cfg.model.dense_dropout) != (
        default.conv_dropout,
        default.dense_dropout,
    )


def test_warmup_cosine_rises_to_the_peak_then_decays_to_zero():
    schedule = instantiate(
        compose_config(["schedule=warmup_cosine"]).schedule, learning_rate=0.01, total_steps=100
    )
    rates = [float(schedule(step)) for step in (0, 15, 57, 100)]
    assert rates[0] == pytest.approx(0.0004)
    assert rates[1] == pytest.approx(0.01)
    assert 0.0 < rates[2] < 0.01
    assert rates[3] == pytest.approx(0.0, abs=1e-9)
    assert instantiate(compose_config().schedule, learning_rate=0.01, total_steps=100) == 0.01


def test_defaults_are_the_original_program():
    cfg = compose_config()
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, keras.optimizers.Adam)
    reference = keras.optimizers.Adam()
    for name in ("learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad"):
        assert float(getattr(optimizer, name)) == pytest.approx(float(getattr(reference, name)))
    assert isinstance(instantiate(cfg.loss.fn), keras.losses.SparseCategoricalCrossentropy)
    assert cfg.loss.label_encoding.value == "integer"
    assert (cfg.model.conv_dropout, cfg.model.dense_dropout) == (0.25, 0.5)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.shuffle) == (1, 32, True)
    assert cfg.data.limit is None and cfg.data.dir is None
    assert cfg.tracking.uri is None


def test_sgd_settings_are_overridable():
    cfg = compose_config(
        [
            "optimizer=sgd",
            "optimizer.learning_rate=0.05",
            "optimizer.momentum=0.9",
            "optimizer.nesterov=true",
        ]
    )
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert float(optimizer.learning_rate) == pytest.approx(0.05)
    assert optimizer.momentum == pytest.approx(0.9)
    assert optimizer.nesterov is True


def test_categorical_loss_asks_for_one_hot_labels():
    cfg = compose_config(["loss=categorical"])
    assert isinstance(instantiate(cfg.loss.fn), keras.losses.CategoricalCrossentropy)
    assert cfg.loss.label_encoding.value == "one_hot"


def test_the_public_command_line_names_exist():
    cfg = compose_config(
        [
            "optimizer=sgd",
            "optimizer.learning_rate=0.1",
            "loss=categorical",
            "model.conv_dropout=0.1",
            "model.dense_dropout=0.2",
            "trainer.epochs=3",
            "trainer.batch_size=64",
            "trainer.seed=7",
            "data.dir=/some/folder",
            "data.limit=1000",
            "tracking.uri=http://127.0.0.1:5000",
            "tracking.experiment=mine",
        ]
    )
    validate(cfg)
    assert cfg.optimizer.learning_rate == 0.1 and cfg.trainer.seed == 7
    assert cfg.data.limit == 1000 and cfg.tracking.experiment == "mine"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "optimizer.learning_rate=0",
            r"optimizer.learning_rate=0.0 is not allowed: it must be a number > 0",
        ),
        ("optimizer.learning_rate=-0.1", r"optimizer.learning_rate=-0.1 is not allowed"),
        (
            "model.dense_dropout=1.0",
            r"model.dense_dropout=1.0 is not allowed: it must be a rate in \[0, 1\)",
        ),
        ("model.conv_dropout=-0.2", r"model.conv_dropout=-0.2 is not allowed"),
        ("trainer.epochs=0", r"trainer.epochs=0 is not allowed: it must be an integer >= 1"),
        ("trainer.batch_size=0", r"trainer.batch_size=0 is not allowed"),
        ("data.limit=0", r"data.limit=0 is not allowed"),
        ("data.val_fraction=1.5", r"data.val_fraction=1.5 is not allowed"),
        ("loss.label_encoding=one_hot", r"loss.label_encoding=one_hot does not fit"),
        ("optimizer.beta_1=1.0", r"optimizer.beta_1=1.0 is not allowed: it must be a number in"),
        ("optimizer.clipnorm=0", r"optimizer.clipnorm=0.0 is not allowed: it must be null or a"),
        ("trainer.verbose=5", r"trainer.verbose=5 is not allowed: it must be 0, 1 or 2"),
        ("data.limit=5", r"holds out no validation image"),
        ("tracking.experiment= ", r"tracking.experiment='' is not allowed: it must be a non-empty"),
        (
            "tracking.uri=ftp://127.0.0.1/store",
            r"tracking.uri=ftp://127.0.0.1/store is not allowed",
        ),
    ],
)
def test_bad_values_are_refused_naming_key_value_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config([override]))


def test_momentum_is_checked_for_sgd():
    with pytest.raises(
        ConfigError, match=r"optimizer.momentum=1.5 is not allowed: it must be a number in \[0, 1\]"
    ):
        validate(compose_config(["optimizer=sgd", "optimizer.momentum=1.5"]))


def test_wrong_types_are_refused_while_composing():
    with pytest.raises(ConfigCompositionException) as caught:
        compose_config(["trainer.epochs=many"])
    assert isinstance(caught.value.__cause__, ValidationError)


def test_unknown_options_are_refused():
    with pytest.raises(ConfigCompositionException, match="adamw"):
        compose_config(["optimizer=adamw"])


def _cli(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "src.train", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_the_groups_without_importing_tensorflow():
    # -X importtime lists every module the interpreter imports on stderr.
    result = _cli("--help", python_flags=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    for line in ("optimizer: adam, sgd", "loss: categorical, sparse", "model: cnn, no_dropout"):
        assert line in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "hydra" in imported
    assert not {"tensorflow", "keras", "mlflow"} & imported


def test_cfg_job_prints_the_composed_config():
    result = _cli("--cfg", "job", "optimizer=sgd", "optimizer.learning_rate=0.05")
    assert result.returncode == 0, result.stderr
    assert "_target_: keras.optimizers.SGD" in result.stdout
    assert "learning_rate: 0.05" in result.stdout


def test_a_dry_run_never_imports_mlflow(tmp_path):
    from tests.conftest import FIXTURE_DIR

    result = _cli(
        f"data.dir={FIXTURE_DIR}",
        "data.limit=200",
        "tracking.enabled=false",
        "trainer.verbose=0",
        f"hydra.run.dir={tmp_path}",
        python_flags=("-X", "importtime"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Dry run (tracking.enabled=false): nothing was recorded." in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "src.data" in imported and "mlflow" not in imported  # Keras loads with stderr hidden.
