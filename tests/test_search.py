"""The Optuna sweeper (src/search.py): the search space, trials as child runs, pruning, and a
study shared by two sweeps at once and resumed by a third."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import HyperbandPruner, MedianPruner, NopPruner

from src.search import search_space
from tests.conftest import CONFIG_DIR, FIXTURE_DIR
from tests.test_sweep import runs_of, sweep


def test_hydra_sweeps_become_optuna_distributions_and_the_rest_stays_fixed():
    space, fixed = search_space(
        [
            "optimizer=choice(adam, sgd)",
            "optimizer.learning_rate=tag(log, interval(0.0001, 0.1))",
            "model.conv_dropout=interval(0.0, 0.5)",
            "trainer.batch_size=range(32, 257, 32)",
            "trainer.epochs=range(1, 4)",
            "trainer.seed=7",
        ]
    )
    assert space == {
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
        "optimizer.learning_rate": FloatDistribution(0.0001, 0.1, log=True),
        "model.conv_dropout": FloatDistribution(0.0, 0.5),
        "trainer.batch_size": IntDistribution(32, 256, step=32),
        "trainer.epochs": IntDistribution(1, 3),
    }
    assert fixed == ["trainer.seed=7"]


def test_a_value_given_on_the_command_line_wins_over_the_search_space():
    space, fixed = search_space(
        ["optimizer=choice(adam, sgd)", "model.conv_dropout=interval(0.0, 0.5)", "optimizer=sgd"]
    )
    assert set(space) == {"model.conv_dropout"} and fixed == ["optimizer=sgd"]
    space, _ = search_space(["model.conv_dropout=range(0.1, 1.0, 0.2)"])
    dropout = space["model.conv_dropout"]
    assert (dropout.low, dropout.high, dropout.step) == pytest.approx((0.1, 0.9, 0.2))


@pytest.mark.parametrize(
    ("pruner", "kind"),
    [("median", MedianPruner), ("hyperband", HyperbandPruner), ("none", NopPruner)],
)
def test_the_pruner_is_a_config_choice(pruner, kind):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        overrides = ["hparams_search=optuna", f"hydra/sweeper/pruner={pruner}"]
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert isinstance(instantiate(cfg.hydra.sweeper.pruner), kind)


def optuna_sweep(tmp_path, *overrides):
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"
    return sweep(tmp_path, "hparams_search=optuna", storage, *overrides)


def study(tmp_path) -> optuna.Study:
    return optuna.load_study(study_name="mnist-cnn", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


@pytest.mark.slow
def test_trials_are_child_runs_and_the_parent_names_the_best_with_optunas_plots(tmp_path):
    result = optuna_sweep(tmp_path, "hydra.sweeper.n_trials=3", "hydra/sweeper/pruner=none")
    assert result.returncode == 0, result.stderr[-3000:]
    client, [parent], jobs = runs_of(tmp_path)
    assert parent.data.tags["sweeper"] == "OptunaSweeper"
    assert sorted(run.data.tags["optuna.trial"] for run in jobs) == ["0", "1", "2"]
    assert len({run.data.params["optimizer.learning_rate"] for run in jobs}) == 3
    trials = study(tmp_path).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    best = min(trials, key=lambda trial: (-trial.value, trial.number))  # The first of a tie.
    assert parent.data.tags["optuna.best_trial"] == str(best.number)
    assert json.loads(parent.data.tags["optuna.best_params"]) == best.params
    best_run = next(run for run in jobs if run.data.tags["optuna.trial"] == str(best.number))
    assert parent.data.tags["best_run_id"] == best_run.info.run_id
    assert best.value == pytest.approx(best_run.data.metrics["val_accuracy"])
    plots = {item.path for item in client.list_artifacts(parent.info.run_id, "optuna")}
    assert plots == {"optuna/optimization_history.png", "optuna/param_importances.png"}


# A pruner that stops every trial whose validation accuracy is below 99.9% after an epoch.
PRUNE_ALL = (
    "hydra/sweeper/pruner=none",
    "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
    "+hydra.sweeper.pruner.lower=0.999",
)


@pytest.mark.slow
def test_an_unpromising_trial_is_pruned_and_its_run_says_so(tmp_path):
    result = optuna_sweep(tmp_path, "hydra.sweeper.n_trials=2", "trainer.epochs=3", *PRUNE_ALL)
    assert result.returncode == 0, result.stderr[-3000:]
    client, [parent], jobs = runs_of(tmp_path)
    assert parent.data.metrics["jobs_pruned"] == 2
    for run in jobs:
        assert run.info.status == "KILLED"
        assert run.data.tags["optuna.pruned"] == "after epoch 1"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == [1]
    states = {trial.state for trial in study(tmp_path).trials}
    assert states == {optuna.trial.TrialState.PRUNED}


@pytest.mark.slow
def test_a_dry_sweep_prunes_too(tmp_path):
    result = optuna_sweep(
        tmp_path,
        "hydra.sweeper.n_trials=2",
        "trainer.epochs=3",
        "tracking.enabled=false",
        *PRUNE_ALL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 1 pruned after epoch 1: unpromising" in result.stderr
    assert {trial.state for trial in study(tmp_path).trials} == {optuna.trial.TrialState.PRUNED}
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_two_sweeps_share_one_study_at_once_and_a_third_resumes_it(tmp_path):
    def start(seed):
        command = [
            sys.executable, "-m", "src.train", "-m", "hparams_search=optuna",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
            "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=none", f"trainer.seed={seed}",
            f"data.dir={FIXTURE_DIR}", "data.limit=400", "trainer.verbose=0",
            "tracking.log_model=false", f"tracking.uri=sqlite:///{tmp_path / 'store/mlflow.db'}",
            f"hydra.sweep.dir={tmp_path / f'sweep{seed}'}",
        ]  # fmt: skip
        return subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)

    first, second = start(1), start(2)
    for process in (first, second):
        assert process.wait(timeout=600) == 0, process.communicate()[1][-3000:]
    assert sorted(trial.number for trial in study(tmp_path).trials) == [0, 1, 2, 3]

    third = start(3)
    assert third.wait(timeout=600) == 0, third.communicate()[1][-3000:]
    trials = study(tmp_path).trials
    assert len(trials) == 6
    assert {trial.state for trial in trials} == {optuna.trial.TrialState.COMPLETE}
    _, parents, jobs = runs_of(tmp_path)
    assert len(parents) == 3 and len(jobs) == 6
    assert sorted(int(run.data.tags["optuna.trial"]) for run in jobs) == list(range(6))
