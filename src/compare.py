"""Compare recorded runs from the terminal: a table of what differs and how they scored, best
first, and a plot of their per-epoch validation curves.

    python -m src.compare                         # every run of the experiment mnist-cnn
    python -m src.compare --sweep latest          # the jobs of the latest sweep
    python -m src.compare --sweep RUN_ID --metric val_loss
    python -m src.compare --filter "params.optimizer.name = 'sgd'" --plot sgd.png

Runs of one config with several seeds (``-m ... sweep.seeds=5``) are compared as groups: each
config's mean and spread over its seeds, and Welch's t-test of whether the best config's lead
over each other one is larger than the seeds' spread; the plot draws each config's mean curve
with a band from its worst seed to its best. For a sweep, the tables and the plot are also
logged to the sweep's parent run.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.uris import mask_text

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# Final metrics shown for every run, in this order.
SHOWN_METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss")
# Params that differ between runs without saying anything about what was trained.
_IGNORED_PARAMS = ("tracking.", "data.dir", "data.cache_dir", "trainer.verbose", "sweep.")
SEED = "trainer.seed"
# A difference between two configs is told apart from the seeds' spread below this p-value.
SIGNIFICANCE = 0.05


def _params(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.filter(regex=r"^params\.").rename(columns=lambda name: name[len("params.") :])


def _varying(params: pd.DataFrame) -> list[str]:
    """The params whose values differ between the runs and say something about what was
    trained (a ``_target_`` is said by its group's name)."""
    return [
        name
        for name in sorted(params.columns)
        if not name.startswith(_IGNORED_PARAMS)
        and not name.endswith("._target_")
        and params[name].nunique(dropna=False) > 1
    ]


def _differing(params: pd.DataFrame) -> list[str]:
    """The varying params a table shows."""
    differing = _varying(params)
    # A setting only some runs have (Adam's beta_1 beside SGD runs) is told apart by its
    # group's name already (optimizer.name), so it is left out when that name differs.
    return [
        name
        for name in differing
        if params[name].notna().all() or f"{name.split('.', 1)[0]}.name" not in differing
    ]


def table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per run (``mlflow.search_runs``'s frame), best first by ``metric`` (runs without
    it last), with the params whose values differ between the runs and the final metrics."""
    params = _params(runs)
    differing = _differing(params)
    shown = runs.reindex(columns=[f"metrics.{name}" for name in SHOWN_METRICS])
    rows = params[differing].join(shown.rename(columns=lambda name: name[len("metrics.") :]))
    rows.insert(0, "run", runs["tags.mlflow.runName"])
    rows.insert(1, "status", runs["status"])
    rows["run_id"] = runs["run_id"]
    rows["sweep_job"] = runs.get("tags.sweep_job")
    rows["sort_value"] = runs.get(f"metrics.{metric}")
    # Of runs that tie, the first ranks first: the lower Optuna trial, else the earlier start.
    trial = runs.get("tags.optuna.trial")
    rows["_trial"] = float("nan") if trial is None else trial.astype(float)
    rows["_started"] = runs.get("start_time", float("nan"))
    rows = rows.sort_values(
        ["sort_value", "_trial", "_started"],
        ascending=[lower_is_better(metric), True, True],
        na_position="last",
    ).drop(columns=["_trial", "_started"])
    rows.insert(0, "rank", range(1, len(rows) + 1))
    return rows.reset_index(drop=True)


def groups(runs: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """One row per config, the finished runs grouped by every param but the seed, when some
    config ran with more than one seed (None otherwise): n seeds (of a seed run twice, the
    newest run), the mean and the standard deviation of each final metric, the best and worst
    seed by ``metric``, the difference of the mean of ``metric`` to the best config's, the
    p-value of Welch's t-test of that difference (two-sided), and how many of the config's runs
    did not finish (left out of the figures). Best mean first."""
    if f"params.{SEED}" not in runs or f"metrics.{metric}" not in runs:
        return None
    params = _params(runs)
    identity = [name for name in params.columns if not name.startswith(_IGNORED_PARAMS)]
    configs = params[[name for name in identity if name != SEED]].fillna("").astype(str)
    runs = runs.assign(config=configs.agg("\x1f".join, axis=1))
    scored = runs[(runs["status"] == "FINISHED") & runs[f"metrics.{metric}"].notna()]
    scored = scored.drop_duplicates(["config", f"params.{SEED}"])  # Newest first, as searched.
    if scored.empty:
        return None
    # In the table's order, so that of tied seeds the one it ranks first is a config's best.
    scored = scored.set_index("run_id").loc[table(scored, metric)["run_id"]].reset_index()
    shown = _metrics_of(metric)
    frame = scored.reindex(columns=[f"metrics.{name}" for name in shown]).set_axis(shown, axis=1)
    frame = frame.assign(
        config=scored["config"], seed=scored[f"params.{SEED}"], run_id=scored["run_id"]
    )
    by = frame.groupby("config", sort=False)
    grouped = by[shown].agg(["mean", "std"])  # std: NaN for one seed
    grouped.columns = [f"{name}_{statistic}" for name, statistic in grouped.columns]
    grouped.insert(0, "n", by.size())
    if grouped["n"].max() < 2:
        return None
    grouped.insert(0, "group", _labels(_params(scored)).groupby(scored["config"].values).first())
    grouped["best_seed"], grouped["worst_seed"] = by["seed"].first(), by["seed"].last()
    grouped["best_run_id"], grouped["run_ids"] = by["run_id"].first(), by["run_id"].agg(" ".join)
    unfinished = runs[runs["status"] != "FINISHED"].groupby("config").size()
    grouped["not_finished"] = unfinished.reindex(grouped.index, fill_value=0)
    lower = lower_is_better(metric)
    grouped = grouped.sort_values(f"{metric}_mean", ascending=lower, kind="stable")
    means = grouped[f"{metric}_mean"]
    grouped[f"{metric}_difference"] = means - means.iloc[0]
    seeds = {config: members[metric].to_numpy() for config, members in by}
    best = seeds[grouped.index[0]]
    grouped["p_value"] = [float("nan")] + [_welch(best, seeds[c]) for c in grouped.index[1:]]
    grouped.insert(0, "rank", range(1, len(grouped) + 1))
    return grouped.reset_index(drop=True)


def _metrics_of(metric: str) -> list[str]:
    """The final metrics a grouped table shows: every table's, and the one it ranks by."""
    return list(dict.fromkeys([*SHOWN_METRICS, metric]))


def _labels(params: pd.DataFrame) -> pd.Series:
    """Each run's config in words: the params that differ between the runs but the seed
    (``optimizer.name=sgd optimizer.momentum=0.9``), each run naming only those it has."""
    shown = [name for name in _varying(params) if name != SEED]
    if not shown:
        import pandas as pd

        return pd.Series("every run", index=params.index)
    return params[shown].apply(
        lambda row: " ".join(f"{key}={value}" for key, value in row.items() if value == value),
        axis=1,
    )


def _welch(a: Any, b: Any) -> float:
    """The two-sided p-value of Welch's t-test of two samples' means (NaN for a sample of one,
    or two without any spread)."""
    from scipy import stats

    if min(len(a), len(b)) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # No spread at all: NaN, said as such.
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def verdict(grouped: pd.DataFrame, metric: str) -> str:
    """Which configs the seeds tell apart from the best one, in plain words."""
    best, others = grouped.iloc[0], grouped.iloc[1:]
    seeds = f"{best.n} seed{'s' if best.n != 1 else ''}"
    lines = [f"Best: {best.group}, {metric} {_spread(best, metric)} over {seeds}."]
    for words, chosen in (
        (
            f"Not distinguishable from it (Welch's t-test, p >= {SIGNIFICANCE})",
            others["p_value"] >= SIGNIFICANCE,
        ),
        (f"Worse beyond the seeds' spread (p < {SIGNIFICANCE})", others["p_value"] < SIGNIFICANCE),
    ):
        if chosen.any():
            named = ", ".join(
                f"{row.group} (p={row.p_value:.2g})" for row in others[chosen].itertuples()
            )
            lines.append(f"{words}: {named}.")
    if others["p_value"].isna().any():
        untested = ", ".join(others[others["p_value"].isna()]["group"])
        lines.append(f"Not tested (one seed, or no spread at all): {untested}.")
    lost = grouped[grouped["not_finished"] > 0]
    if len(lost):
        named = ", ".join(f"{row.group} ({row.not_finished})" for row in lost.itertuples())
        lines.append(f"Runs that did not finish, left out of the figures: {named}.")
    return "\n".join(lines)


def _spread(row: Any, metric: str) -> str:
    """``0.9812 ± 0.0011``: a config's mean and standard deviation over its seeds."""
    std = row[f"{metric}_std"]
    return _cell(row[f"{metric}_mean"]) + ("" if std != std else f" ± {std:.4f}")


def groups_to_text(grouped: pd.DataFrame, metric: str) -> str:
    """The grouped table for the terminal (mean ± standard deviation over the seeds), and the
    verdict."""
    shown = grouped[["rank", "group", "n"]].assign(
        **{name: grouped.apply(_spread, axis=1, metric=name) for name in _metrics_of(metric)},
        best_seed=grouped["best_seed"],
        worst_seed=grouped["worst_seed"],
        difference=grouped[f"{metric}_difference"].map(lambda d: f"{d:+.4f}"),
        p=grouped["p_value"].map(lambda p: "" if p != p else f"{p:.2g}"),
    )
    direction = "lowest" if lower_is_better(metric) else "highest"
    return (
        f"Configs by mean {metric} over their seeds ({direction} first; p: Welch's t-test "
        f"against the first):\n" + "\n".join(_aligned(shown)) + "\n\n" + verdict(grouped, metric)
    )


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


def curve_of(metric: str) -> str:
    """The per-epoch validation curve that goes with a metric: ``test_loss`` -> ``val_loss``."""
    return f"val_{metric.removeprefix('val_').removeprefix('test_')}"


def to_text(rows: pd.DataFrame, metric: str) -> str:
    """An aligned table for the terminal."""
    direction = "lowest" if lower_is_better(metric) else "highest"
    shown = rows.drop(columns=["sweep_job", "sort_value"])
    return f"Runs by {metric} ({direction} first):\n" + "\n".join(_aligned(shown))


def _aligned(frame: pd.DataFrame) -> list[str]:
    cells = [list(frame.columns)] + [
        [_cell(value) for value in row] for row in frame.itertuples(index=False)
    ]
    widths = [max(map(len, column)) for column in zip(*cells, strict=True)]
    return ["  ".join(map(str.ljust, row, widths)).rstrip() for row in cells]


def _cell(value: object) -> str:
    if value is None or value != value:  # None, or NaN: a run without this value.
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def plot_curves(
    uri: str, rows: pd.DataFrame, metric: str, grouped: pd.DataFrame | None = None
) -> Figure:
    """The per-epoch validation curves that go with ``metric``: one line per run, or with
    ``grouped`` one line per config, its mean over the seeds, in a band from the lowest to the
    highest seed."""
    from src import report, tracking

    curve = curve_of(metric)
    if grouped is not None:
        seeds = {
            f"{group.group} (n={group.n})": [
                tracking.metric_history(uri, run_id, curve) for run_id in group.run_ids.split()
            ]
            for group in grouped.itertuples()
        }
        return report.plot_group_curves(seeds, curve)
    histories = {
        str(run.run or run.run_id): tracking.metric_history(uri, run.run_id, curve)
        for run in rows.itertuples()
    }
    return report.plot_validation_curves(histories, curve)


def log_to_sweep(
    uri: str,
    sweep_id: str,
    rows: pd.DataFrame,
    metric: str,
    figure: Figure,
    grouped: pd.DataFrame | None = None,
) -> None:
    """Log the table (CSV and text), the grouped table if any, and the curves of a sweep's
    jobs to its parent run."""
    from src import tracking

    csv = rows.drop(columns=["sort_value"]).to_csv(index=False)
    texts = {"comparison/comparison.csv": csv, "comparison/comparison.txt": to_text(rows, metric)}
    if grouped is not None:
        texts["comparison/groups.csv"] = grouped.to_csv(index=False)
        texts["comparison/groups.txt"] = groups_to_text(grouped, metric)
    figures = {"comparison/validation_curves.png": figure}
    tracking.log_to_run(uri, sweep_id, texts=texts, figures=figures)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.compare", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--tracking-uri", help="default: the project's store in mlruns/")
    add("--experiment", default="mnist-cnn", help="default: %(default)s")
    add("--sweep", metavar="RUN_ID|latest", help="only the jobs of this sweep")
    add("--metric", default="val_accuracy", help="sort by this metric (default: %(default)s)")
    add("--filter", default="", metavar="EXPR", help="an MLflow search filter")
    add("--plot", default="comparison.png", type=Path, help="the curves (default: %(default)s)")
    add("--max-runs", type=int, default=100, help="at most this many runs (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    from src import tracking

    uri = tracking.resolve_uri(args.tracking_uri)
    where = f"experiment '{args.experiment}'"
    sweep_id, clauses = args.sweep, [args.filter.strip()] if args.filter.strip() else []
    try:
        with tracking.few_retries():  # A wrong address fails at once.
            if sweep_id == "latest":
                latest = tracking.find_runs(uri, args.experiment, "tags.sweep_role = 'parent'", 1)
                if latest.empty:
                    print(f"error: no sweep in {where} at {mask_text(uri)}", file=sys.stderr)
                    return 1
                sweep_id = latest["run_id"].iloc[0]
            if sweep_id is not None:
                where = f"sweep {sweep_id}"
                clauses.append(f"tags.`{tracking.PARENT_TAG}` = '{sweep_id}'")
            runs = tracking.find_runs(uri, args.experiment, " and ".join(clauses), args.max_runs)
    except tracking.TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except tracking.MlflowException as error:
        print(f"error: cannot search runs ({error.message}); check --filter", file=sys.stderr)
        return 2
    if "tags.sweep_role" in runs:
        runs = runs[runs["tags.sweep_role"] != "parent"]
    if runs.empty:
        condition = f" matching {args.filter!r}" if args.filter else ""
        print(f"error: no runs in {where}{condition} at {mask_text(uri)}", file=sys.stderr)
        return 1

    rows = table(runs, args.metric)
    grouped = groups(runs, args.metric)
    print(to_text(rows, args.metric) if grouped is None else groups_to_text(grouped, args.metric))
    figure = plot_curves(uri, rows, args.metric, grouped)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=100)
    print(f"\nCurves of {curve_of(args.metric)} per epoch: {args.plot}")
    if sweep_id is not None:
        log_to_sweep(uri, sweep_id, rows, args.metric, figure, grouped)
        print(f"Tables and curves logged to sweep run {sweep_id}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
