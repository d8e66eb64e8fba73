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
import csv
import io
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from src.uris import mask_uri

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities import Run

# Final metrics shown for every run, in this order.
SHOWN_METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss")
# Params that differ between runs without saying anything about what was trained.
_IGNORED_PARAMS = ("tracking.", "data.dir", "data.cache_dir", "trainer.verbose", "sweep.")


@dataclass(frozen=True)
class Row:
    run_id: str
    name: str
    status: str
    value: float | None  # the sort metric
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    metric: str
    param_names: list[str]
    rows: list[Row]


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


def curve_of(metric: str) -> str:
    """The per-epoch validation curve that goes with a metric: ``test_loss`` -> ``val_loss``."""
    return f"val_{metric.removeprefix('val_').removeprefix('test_')}"


def build_table(runs: Sequence[Run], metric: str) -> Table:
    """Rows for the runs, best first by ``metric`` (runs without it last), with only the
    params whose values differ between the runs."""
    all_names = sorted({name for run in runs for name in run.data.params})
    differing = [
        name
        for name in all_names
        if not name.startswith(_IGNORED_PARAMS)
        and not name.endswith("._target_")
        and len({run.data.params.get(name) for run in runs}) > 1
    ]
    # A setting only some runs have (Adam's beta_1 beside SGD runs) is told apart by its
    # group's name already (optimizer.name), so it is left out when that name differs.
    differing = [
        name
        for name in differing
        if all(name in run.data.params for run in runs)
        or f"{name.split('.', 1)[0]}.name" not in differing
    ]
    rows = [
        Row(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            status=run.info.status,
            value=run.data.metrics.get(metric),
            params={name: run.data.params.get(name, "") for name in differing},
            metrics={
                name: run.data.metrics[name] for name in SHOWN_METRICS if name in run.data.metrics
            },
            tags=run.data.tags,
        )
        for run in runs
    ]
    sign = 1.0 if lower_is_better(metric) else -1.0
    rows.sort(key=lambda row: (row.value is None, sign * row.value if row.value is not None else 0))
    return Table(metric=metric, param_names=differing, rows=rows)


def _cells(table: Table) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "run", "status", *table.param_names, *SHOWN_METRICS, "run_id"]
    body = []
    for rank, row in enumerate(table.rows, start=1):
        metrics = [
            f"{row.metrics[name]:.4f}" if name in row.metrics else "" for name in SHOWN_METRICS
        ]
        params = [row.params.get(name, "") for name in table.param_names]
        body.append([str(rank), row.name, row.status, *params, *metrics, row.run_id])
    return header, body


def to_csv(table: Table) -> str:
    header, body = _cells(table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return out.getvalue()


def to_markdown(table: Table) -> str:
    header, body = _cells(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def to_text(table: Table) -> str:
    """An aligned table for the terminal."""
    header, body = _cells(table)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    direction = "lowest" if lower_is_better(table.metric) else "highest"
    return f"Runs by {table.metric} ({direction} first):\n" + "\n".join(lines)


def plot_curves(uri: str, table: Table) -> Figure:
    """The runs' per-epoch validation curves of the table's metric, one line per run."""
    from src import report, tracking

    curve = curve_of(table.metric)
    histories = {
        row.name or row.run_id: tracking.metric_history(uri, row.run_id, curve)
        for row in table.rows
    }
    return report.plot_validation_curves(histories, curve)


def log_to_sweep(
    uri: str,
    sweep_id: str,
    table: Table,
    figure: Figure,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Log the table (CSV and Markdown) and the curves to a sweep's parent run."""
    from src import tracking

    texts = {
        "comparison/comparison.csv": to_csv(table),
        "comparison/comparison.md": to_markdown(table),
    }
    figures = {"comparison/validation_curves.png": figure}
    tracking.log_to_run(uri, sweep_id, metrics, tags, texts, figures)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.compare",
        description="Compare recorded runs: what differs, how they scored, best first.",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="default: the project's store in mlruns/"
    )
    parser.add_argument("--experiment", default="mnist-cnn", help="default: %(default)s")
    parser.add_argument(
        "--sweep", default=None, metavar="RUN_ID|latest", help="only the jobs of this sweep"
    )
    parser.add_argument(
        "--metric", default="val_accuracy", help="sort by this metric (default: %(default)s)"
    )
    parser.add_argument(
        "--filter",
        default="",
        metavar="EXPR",
        help="an MLflow search filter, e.g. \"params.loss.name = 'sparse'\"",
    )
    parser.add_argument(
        "--plot",
        default="comparison.png",
        type=Path,
        help="where to write the curves (default: %(default)s)",
    )
    parser.add_argument(
        "--max-runs", type=int, default=100, help="at most this many runs (default: %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    from src import report, tracking

    uri = tracking.resolve_uri(args.tracking_uri)
    shown_uri = mask_uri(uri)
    sweep_id = args.sweep
    if sweep_id == "latest":
        sweep_id = tracking.latest_sweep_run_id(uri, args.experiment)
        if sweep_id is None:
            print(
                f"error: no sweep in experiment '{args.experiment}' at {shown_uri}", file=sys.stderr
            )
            return 1
    try:
        runs = tracking.find_runs(uri, args.experiment, sweep_id, args.filter, args.max_runs)
    except tracking.MlflowException as error:
        print(f"error: cannot search runs ({error.message}); check --filter", file=sys.stderr)
        return 2
    if sweep_id is None:
        runs = [run for run in runs if run.data.tags.get("sweep_role") != "parent"]
    if not runs:
        where = f"sweep {sweep_id}" if sweep_id else f"experiment '{args.experiment}'"
        condition = f" matching {args.filter!r}" if args.filter else ""
        print(f"error: no runs in {where}{condition} at {shown_uri}", file=sys.stderr)
        return 1

    table = build_table(runs, args.metric)
    print(to_text(table))
    figure = plot_curves(uri, table)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=100)
    print(f"\nCurves of {curve_of(args.metric)} per epoch: {args.plot}")
    if sweep_id is not None:
        log_to_sweep(uri, sweep_id, table, figure)
        print(f"Table and curves logged to sweep run {sweep_id}.")
    report.close(figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
