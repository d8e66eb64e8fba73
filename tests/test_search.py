"""The Optuna sweeper (src/search.py): the search space, trials as child runs, pruning, and a
study shared by two sweeps at once and resumed by a third."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter

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
def test_a_dry_sweep_prunes_too_and_records_nothing(tmp_path):
    # In a sweep folder used before: an earlier tracked sweep's hand-over to its jobs is ignored.
    (tmp_path / "sweep").mkdir()
    earlier = {"parent_run_id": "0" * 32, "resumed": True, "launcher": "elsewhere:1"}
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps(earlier))
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
    """The same command in two terminals: two sweeps (two parent runs), one study."""

    def start(name):
        command = [
            sys.executable, "-m", "src.train", "-m", "hparams_search=optuna",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
            "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=none", "trainer.epochs=3",
            f"data.dir={FIXTURE_DIR}", "data.limit=400", "trainer.verbose=0",
            "tracking.log_model=false", f"tracking.uri=sqlite:///{tmp_path / 'store/mlflow.db'}",
            f"hydra.sweep.dir={tmp_path / name}",
        ]  # fmt: skip
        log = tmp_path / f"{name}.log"
        with log.open("w") as stderr:
            return subprocess.Popen(command, cwd=tmp_path, stderr=stderr), log

    def opened(process, log):
        """The line saying which parent run the sweep opened, once it is printed."""
        deadline = time.monotonic() + 120
        while not (found := re.search(r"^(Starting|Resuming) sweep \w+", log.read_text(), re.M)):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        return found[0]

    def finish(process, log):
        assert process.wait(timeout=600) == 0, log.read_text()[-3000:]

    first = start("first")
    first_parent = opened(*first)
    second = start("second")
    second_parent = opened(*second)
    assert first[0].poll() is None, "the first sweep ended before the second opened its parent"
    assert first_parent.startswith("Starting") and second_parent.startswith("Starting")
    assert first_parent != second_parent  # Not joined: the first was still RUNNING.
    for sweep_process in (first, second):
        finish(*sweep_process)
    assert sorted(trial.number for trial in study(tmp_path).trials) == [0, 1, 2, 3]

    finish(*start("third"))
    trials = study(tmp_path).trials
    assert len(trials) == 6
    assert {trial.state for trial in trials} == {optuna.trial.TrialState.COMPLETE}
    _, parents, jobs = runs_of(tmp_path)
    assert len(parents) == 3 and {parent.info.status for parent in parents} == {"FINISHED"}
    assert sorted(int(run.data.tags["optuna.trial"]) for run in jobs) == list(range(6))
    assert Counter(run.data.tags["sweep_id"] for run in jobs) == {p.info.run_id: 2 for p in parents}
