"""Runs compared by config over their seeds: the groups, their means and spreads, Welch's test
of each config against the best, the verdict in words, and the band plot; on constructed runs
(``mlflow.search_runs``'s frame) whose figures are known. The command itself: test_sweep.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from src import compare, report


def runs_of(configs: dict[str, list[float]], metric: str = "val_accuracy") -> pd.DataFrame:
    """One finished run per value: its config's optimizer, a seed from 42 on, the value as its
    final ``metric`` (the other shown metrics derived from it), newest first."""
    rows = []
    for optimizer, values in configs.items():
        for seed, value in enumerate(values, start=42):
            rows.append(
                {
                    "run_id": f"{optimizer}-{seed}",
                    "status": "FINISHED",
                    "tags.mlflow.runName": f"{optimizer},seed={seed}",
                    "params.optimizer.name": optimizer,
                    "params.trainer.seed": str(seed),
                    "params.tracking.uri": f"sqlite:///store{seed}.db",  # Says nothing.
                    f"metrics.{metric}": value,
                    "metrics.test_accuracy": value - 0.01,
                }
            )
    return pd.DataFrame(rows[::-1])


def test_runs_that_differ_only_in_their_seed_form_one_group_per_config():
    adam, sgd = [0.981, 0.984, 0.979], [0.951, 0.949, 0.956]
    runs = runs_of({"sgd": sgd, "adam": adam})
    failed = runs.iloc[[0]].assign(
        run_id="adam-killed", status="KILLED", **{"metrics.val_accuracy": 0.99}
    )
    grouped = compare.groups(pd.concat([runs, failed]), "val_accuracy")
    assert grouped is not None
    assert grouped["group"].tolist() == ["optimizer.name=adam", "optimizer.name=sgd"]
    assert grouped["n"].tolist() == [3, 3]  # Not the KILLED run.
    assert grouped["val_accuracy_mean"].tolist() == pytest.approx([np.mean(adam), np.mean(sgd)])
    assert grouped["val_accuracy_std"].tolist() == pytest.approx(
        [np.std(adam, ddof=1), np.std(sgd, ddof=1)]
    )
    assert grouped["test_accuracy_mean"].tolist() == pytest.approx(
        [np.mean(adam) - 0.01, np.mean(sgd) - 0.01]
    )
    assert (grouped["best_seed"].tolist(), grouped["worst_seed"].tolist()) == (
        ["43", "44"],
        ["44", "43"],
    )
    assert grouped["best_run_id"].tolist() == ["adam-43", "sgd-44"]
    assert sorted(grouped["run_ids"][1].split()) == ["sgd-42", "sgd-43", "sgd-44"]
    assert grouped["val_accuracy_difference"].tolist() == pytest.approx(
        [0, np.mean(sgd) - np.mean(adam)]
    )
    assert grouped["not_finished"].tolist() == [1, 0]
    assert compare.verdict(grouped, "val_accuracy").splitlines()[-1] == (
        "Runs that did not finish, left out of the figures: optimizer.name=adam (1)."
    )


def test_a_seed_run_twice_counts_once_and_a_setting_only_some_configs_have_still_parts_them():
    adam = runs_of({"adam": [0.981, 0.984]})
    runs = pd.concat(
        [
            adam.assign(run_id=adam["run_id"] + "-again"),  # The same seeds again, newer.
            adam.assign(**{"params.optimizer.beta_1": "0.9"}),
            adam.assign(run_id=adam["run_id"] + "-b", **{"params.optimizer.beta_1": "0.99"}),
            runs_of({"sgd": [0.951, 0.949]}),
        ],
        ignore_index=True,
    )
    runs.loc[runs["run_id"].str.endswith("-again"), "params.optimizer.beta_1"] = "0.9"
    grouped = compare.groups(runs, "val_accuracy")
    assert grouped is not None
    assert sorted(grouped["group"]) == [
        "optimizer.beta_1=0.9 optimizer.name=adam",
        "optimizer.beta_1=0.99 optimizer.name=adam",
        "optimizer.name=sgd",  # It has no beta_1: not named.
    ]
    assert grouped["n"].tolist() == [2, 2, 2]  # Each seed of adam with 0.9 once: the newest.
    first = grouped.set_index("group").loc["optimizer.beta_1=0.9 optimizer.name=adam"]
    assert sorted(first["run_ids"].split()) == ["adam-42-again", "adam-43-again"]


def test_any_metric_ranks_the_configs_and_one_seed_each_is_no_comparison_over_seeds():
    runs = runs_of({"adam": [0.3, 0.2], "sgd": [0.1, 0.15]}, "loss")
    grouped = compare.groups(runs, "loss")  # Not among the metrics every table shows.
    assert grouped is not None
    assert grouped["group"].tolist() == ["optimizer.name=sgd", "optimizer.name=adam"]
    assert grouped["loss_mean"].tolist() == pytest.approx([0.125, 0.25])
    assert "loss" in compare.groups_to_text(grouped, "loss").splitlines()[1].split()
    twice = pd.concat([runs, runs.assign(run_id=runs["run_id"] + "-again")])
    assert compare.groups(twice[twice["params.trainer.seed"] == "42"], "loss") is None


def test_a_loss_ranks_its_lowest_mean_first():
    grouped = compare.groups(
        runs_of({"adam": [0.3, 0.2], "sgd": [0.1, 0.15]}, "val_loss"), "val_loss"
    )
    assert grouped is not None
    assert grouped["group"].tolist() == ["optimizer.name=sgd", "optimizer.name=adam"]
    assert grouped["best_seed"].tolist() == ["42", "43"]


def test_the_test_is_welchs_and_tells_a_real_difference_from_none():
    best = np.array([0.978, 0.980, 0.981, 0.982, 0.979])
    alike = best[::-1] - 0.0002  # The same spread, a mean 0.0002 lower.
    worse = np.array(
        [0.968, 0.975, 0.962, 0.971, 0.966, 0.973, 0.969, 0.970]
    )  # n and spread differ
    runs = runs_of({"sgd": list(worse), "nadam": list(alike), "adam": list(best)})
    grouped = compare.groups(runs, "val_accuracy")
    assert grouped is not None
    assert grouped["group"].tolist() == [
        "optimizer.name=adam",
        "optimizer.name=nadam",
        "optimizer.name=sgd",
    ]
    p = grouped["p_value"].tolist()
    assert np.isnan(p[0])  # The best is not tested against itself.
    assert p[1:] == pytest.approx(
        [stats.ttest_ind(best, x, equal_var=False).pvalue for x in (alike, worse)]
    )
    assert p[2] != pytest.approx(stats.ttest_ind(best, worse).pvalue)  # Not Student's test.
    assert p[1] > 0.5 and p[2] < 0.001
    spread = np.std(best, ddof=1)
    assert compare.verdict(grouped, "val_accuracy").splitlines() == [
        f"Best: optimizer.name=adam, val_accuracy 0.9800 ± {spread:.4f} over 5 seeds.",
        "Not distinguishable from it (Welch's t-test, p >= 0.05): "
        f"optimizer.name=nadam (p={p[1]:.2g}).",
        f"Worse beyond the seeds' spread (p < 0.05): optimizer.name=sgd (p={p[2]:.2g}).",
    ]


def test_a_config_of_one_seed_is_a_group_that_cannot_be_tested():
    grouped = compare.groups(runs_of({"adam": [0.98, 0.982, 0.979], "sgd": [0.95]}), "val_accuracy")
    assert grouped is not None
    one = grouped.set_index("group").loc["optimizer.name=sgd"]
    assert one["n"] == 1 and np.isnan(one["val_accuracy_std"]) and np.isnan(one["p_value"])
    assert one["best_seed"] == one["worst_seed"] == "42"
    assert compare.verdict(grouped, "val_accuracy").splitlines()[-1] == (
        "Not tested (one seed, or no spread at all): optimizer.name=sgd."
    )
    sgd = compare.groups_to_text(grouped, "val_accuracy").splitlines()[3]
    assert sgd.split()[:4] == ["2", "optimizer.name=sgd", "1", "0.9500"] and "±" not in sgd


def test_without_repeated_seeds_there_are_no_groups():
    assert compare.groups(runs_of({"adam": [0.98], "sgd": [0.95]}), "val_accuracy") is None


def test_the_band_plot_draws_each_configs_mean_and_the_range_of_its_seeds():
    seeds = {
        "adam (n=3)": [[(1, 0.90), (2, 0.95)], [(1, 0.92), (2, 0.96)], [(1, 0.94), (2, 0.97)]],
        "sgd (n=2)": [[(1, 0.70), (2, 0.80)], [(1, 0.74), (2, 0.86)]],
    }
    figure = report.plot_group_curves(seeds, "val_accuracy")
    [axes] = figure.axes
    assert [bars.get_label() for bars in axes.containers] == list(seeds)
    means = [bars.lines[0] for bars in axes.containers]
    # Set a little apart along the epochs, each config's mean over its seeds.
    assert means[0].get_xdata().tolist() == pytest.approx([0.97, 1.97])
    assert means[1].get_xdata().tolist() == pytest.approx([1.03, 2.03])
    assert means[0].get_ydata().tolist() == pytest.approx([0.92, 0.96])
    assert means[1].get_ydata().tolist() == pytest.approx([0.72, 0.83])
    dots = [line for line in axes.lines if line.get_marker() == "x"]
    assert sorted(dots[0].get_ydata()) == pytest.approx([0.90, 0.92, 0.94])  # adam, epoch 1
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["1", "2"]
    bands = [c for c in axes.collections if type(c).__name__ == "FillBetweenPolyCollection"]
    assert len(bands) == 2
    low, high = (
        bands[1].get_paths()[0].vertices[:, 1].min(),
        bands[1].get_paths()[0].vertices[:, 1].max(),
    )
    assert (low, high) == pytest.approx((0.70, 0.86))
