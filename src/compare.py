"""Compare recorded runs from the terminal: a table of what differs and how they scored, best
first, and a plot of their per-epoch validation curves.

    python -m src.compare                         # every run of the experiment mnist-cnn
    python -m src.compare --sweep latest          # the jobs of the latest sweep
    python -m src.compare --sweep RUN_ID --metric val_loss
    python -m src.compare --filter "params.optimizer.name = 'sgd'" --plot sgd.png

For a sweep, the table and the plot are also logged to the sweep's parent run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from src.uris import mask_text

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# Final metrics shown for every run, in this order.
SHOWN_METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss")
# Params that differ between runs without saying anything about what was trained.
_IGNORED_PARAMS = ("tracking.", "data.dir", "data.cache_dir", "trainer.verbose", "sweep.")


def table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per run (``mlflow.search_runs``'s frame), best first by ``metric`` (runs without
    it last), with the params whose values differ between the runs and the final metrics."""
    params = runs.filter(regex=r"^params\.").rename(columns=lambda name: name[len("params.") :])
    differing = [
        name
        for name in sorted(params.columns)
        if not name.startswith(_IGNORED_PARAMS)
        and not name.endswith("._target_")
        and params[name].nunique(dropna=False) > 1
    ]
    # A setting only some runs have (Adam's beta_1 beside SGD runs) is told apart by its
    # group's name already (optimizer.name), so it is left out when that name differs.
    differing = [
        name
        for name in differing
        if params[name].notna().all() or f"{name.split('.', 1)[0]}.name" not in differing
    ]
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


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


def curve_of(metric: str) -> str:
    """The per-epoch validation curve that goes with a metric: ``test_loss`` -> ``val_loss``."""
    return f"val_{metric.removeprefix('val_').removeprefix('test_')}"


def to_text(rows: pd.DataFrame, metric: str) -> str:
    """An aligned table for the terminal."""
    shown = rows.drop(columns=["sweep_job", "sort_value"])
    cells = [list(shown.columns)] + [
        [_cell(value) for value in row] for row in shown.itertuples(index=False)
    ]
    widths = [max(map(len, column)) for column in zip(*cells, strict=True)]
    lines = ["  ".join(map(str.ljust, row, widths)) for row in cells]
    direction = "lowest" if lower_is_better(metric) else "highest"
    return f"Runs by {metric} ({direction} first):\n" + "\n".join(line.rstrip() for line in lines)


def _cell(value: object) -> str:
    if value is None or value != value:  # None, or NaN: a run without this value.
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def plot_curves(uri: str, rows: pd.DataFrame, metric: str) -> Figure:
    """The runs' per-epoch validation curves that go with ``metric``, one line per run."""
    from src import report, tracking

    curve = curve_of(metric)
    histories = {
        str(run.run or run.run_id): tracking.metric_history(uri, run.run_id, curve)
        for run in rows.itertuples()
    }
    return report.plot_validation_curves(histories, curve)


def log_to_sweep(uri: str, sweep_id: str, rows: pd.DataFrame, metric: str, figure: Figure) -> None:
    """Log the table (CSV and text) and the curves of a sweep's jobs to its parent run."""
    from src import tracking

    csv = rows.drop(columns=["sort_value"]).to_csv(index=False)
    texts = {"comparison/comparison.csv": csv, "comparison/comparison.txt": to_text(rows, metric)}
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
    print(to_text(rows, args.metric))
    figure = plot_curves(uri, rows, args.metric)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=100)
    print(f"\nCurves of {curve_of(args.metric)} per epoch: {args.plot}")
    if sweep_id is not None:
        log_to_sweep(uri, sweep_id, rows, args.metric, figure)
        print(f"Table and curves logged to sweep run {sweep_id}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
