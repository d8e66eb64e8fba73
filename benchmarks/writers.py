"""Many processes recording runs into one tracking store at once, through the project's own
recorder (``src.tracking.start_run``), then every record read back.

    python benchmarks/writers.py URI [--writers 8] [--runs 4] [--epochs 25]

Prints one JSON line: runs and metric values written, the seconds from the first write to
the last process's end, runs and metric values per second, and how many records were lost
(a run not FINISHED or a metric history short of a value counts). Used by the cluster tests
(the team server takes 8 writers losing nothing) and by the benchmark (team server vs SQLite).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def write(uri: str, experiment: str, writer: int, runs: int, epochs: int, start: object) -> None:
    from src import tracking

    start.wait(timeout=300)  # type: ignore[attr-defined]  # Every writer has imported MLflow.
    with tempfile.TemporaryDirectory() as folder:
        for number in range(runs):
            name = f"writer {writer} run {number}"
            tags = {"writer": str(writer)}
            store = tracking.prepare_store(uri, experiment)
            with tracking.start_run(*store, name, tags, Path(folder), False) as run:
                run.log_setup({"writer": writer, "run": number}, tags, {})
                for epoch in range(1, epochs + 1):
                    run.log_metrics({key: 1.0 / epoch for key in METRICS}, epoch)


def lost_records(uri: str, experiment: str, writers: int, runs: int, epochs: int) -> list[str]:
    """What is missing from the store: runs, a run's closing, metric values."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    found = client.search_runs([experiment_id], max_results=10_000)
    lost = [f"{writers * runs - len(found)} runs"] if len(found) != writers * runs else []
    for run in found:
        name = run.info.run_name
        if run.info.status != "FINISHED":
            lost.append(f"{name}: {run.info.status}")
        for key in METRICS:
            steps = {m.step for m in client.get_metric_history(run.info.run_id, key)}
            if missing := set(range(1, epochs + 1)) - steps:
                lost.append(f"{name}: {key} at steps {sorted(missing)}")
    return lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri")
    parser.add_argument("--experiment", default=f"writers-{int(time.time() * 1000)}")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args()
    from src import tracking

    tracking.prepare_store(args.uri, args.experiment)  # As a job finds it: created already.
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(args.writers + 1)
    shape = (args.runs, args.epochs, start)
    processes = [
        context.Process(target=write, args=(args.uri, args.experiment, writer, *shape))
        for writer in range(args.writers)
    ]
    for process in processes:
        process.start()
    start.wait(timeout=300)
    began = time.perf_counter()
    for process in processes:
        process.join()
    seconds = time.perf_counter() - began
    runs, values = args.writers * args.runs, args.writers * args.runs * args.epochs * len(METRICS)
    lost = lost_records(args.uri, args.experiment, args.writers, args.runs, args.epochs)
    failed = sum(process.exitcode != 0 for process in processes)
    print(
        json.dumps(
            {
                "experiment": args.experiment,
                "writers": args.writers,
                "runs": runs,
                "metric_values": values,
                "seconds": round(seconds, 3),
                "runs_per_second": round(runs / seconds, 2),
                "metric_values_per_second": round(values / seconds, 1),
                "lost": len(lost),
                "lost_records": lost[:20],
                "failed_writers": failed,
            }
        )
    )


if __name__ == "__main__":
    main()
