"""Side-by-side benchmarks of the pipeline against the plain tf.keras program.

    make bench                                   # DATA_DIR and the reference from the Makefile
    python benchmarks/bench.py --data-dir ../shared/data/mnist \
        --reference ../shared/anchors/seed_keras.py [--repeats 3] [--only training,time99]

Every comparison runs its two sides alternately (A B A B ...) ``--repeats`` times, on the same
data and machine, after one warm-up run, and reports medians and their ratio. Results go to
``benchmarks/results/``: ``results.json``, ``results.md`` and ``results.png``. The reference
program is run from where it lies; it is never copied into the project.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class Sample:
    wall_seconds: float
    max_rss_mb: float
    cpu_seconds: float | None = None
    fit_seconds: float | None = None
    samples_per_second: float | None = None
    test_accuracy: float | None = None
    runs_per_second: float | None = None


@dataclass
class Side:
    name: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, attribute: str) -> float | None:
        values = [getattr(s, attribute) for s in self.samples if getattr(s, attribute) is not None]
        return statistics.median(values) if values else None


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB), from /proc."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        pending.extend(int(child) for child in children)
    return total / 1024


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_process(
    command: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float, float, str]:
    """Run a command (with ``env`` added to the environment); return its wall seconds, the peak
    resident memory (MB) of its process tree (sampled every 0.1 s), the CPU seconds of that
    tree, and its stdout."""
    env = {**os.environ, **(env or {})}
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, env=env)
        peaks = [0.0]

        def sample() -> None:
            while process.poll() is None:
                peaks.append(max(peaks[-1], tree_rss_mb(process.pid)))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        process.wait()
        wall = time.perf_counter() - started
        sampler.join()
        peak = peaks[-1]
        cpu = children_cpu_seconds() - cpu_before
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return wall, peak, cpu, stdout


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.store = f"sqlite:///{work / 'store' / 'mlflow.db'}"
        self.counter = 0
        self.result: dict[str, Any] = {}  # the last pipeline run's result.json
        self.printed = ""  # and its standard output

    def pipeline(self, *overrides: str, env: dict[str, str] | None = None) -> Sample:
        self.counter += 1
        job_dir = self.work / f"job{self.counter}"
        wall, rss, cpu, self.printed = run_process(
            [
                PYTHON,
                "-m",
                "src.train",
                f"data.dir={self.args.data_dir}",
                f"tracking.uri={self.store}",
                f"hydra.run.dir={job_dir}",
                "trainer.verbose=0",
                *overrides,
            ],
            cwd=ROOT,
            env=env,
        )
        self.result = json.loads((job_dir / "result.json").read_text())
        result = self.result["metrics"]
        return Sample(
            wall,
            rss,
            cpu,
            result["fit_seconds"],
            result["train_samples_per_second"],
            result["test_accuracy"],
        )

    def sweep_job(self, *overrides: str) -> Sample:
        """A one-job sweep whose job runs in a process of its own (local_jobs): that job's
        process as its ``result.json`` gives it (CPU seconds from its start, seconds from its
        config to its run closed), so that it compares with a single run's."""
        self.counter += 1
        sweep_dir = self.work / f"sweep{self.counter}"
        run_process(
            [
                PYTHON, "-m", "src.train", "-m", "hydra/launcher=local_jobs",
                f"data.dir={self.args.data_dir}", f"tracking.uri={self.store}",
                f"hydra.sweep.dir={sweep_dir}", "trainer.verbose=0", *overrides,
            ],
            cwd=ROOT,
        )  # fmt: skip
        return _job_process(json.loads((sweep_dir / "0" / "result.json").read_text()))

    def reference(self, *arguments: str) -> Sample:
        wall, rss, cpu, stdout = run_process(
            [PYTHON, str(self.args.reference), "--data-dir", str(self.args.data_dir), *arguments],
            cwd=self.work,
        )
        result = json.loads(stdout.strip().splitlines()[-1])
        return Sample(
            wall, rss, cpu, result["fit_s"], result["samples_per_s"], result["test_accuracy"]
        )


def _job_process(result: dict[str, Any]) -> Sample:
    """A job's process as its ``result.json`` gives it: wall seconds from its config to its run
    closed, CPU seconds from its start to then."""
    return Sample(result["job_seconds"], 0.0, result["process_cpu_seconds"])


def alternate(repeats: int, sides: dict[str, Callable[[], Sample]]) -> list[Side]:
    """Run the sides in turn, ``repeats`` rounds, each round starting one side later (A B C,
    B C A, C A B, ...), so that no side always runs in the same place of a round."""
    results = [Side(name) for name in sides]
    runs = list(zip(results, sides.values(), strict=True))
    for round_number in range(1, repeats + 1):
        shift = (round_number - 1) % len(runs)
        for side, run in runs[shift:] + runs[:shift]:
            sample = run()
            side.samples.append(sample)
            print(
                f"  round {round_number} {side.name}: {sample.wall_seconds:.1f} s wall"
                + (
                    f", {sample.samples_per_second:.0f} samples/s"
                    if sample.samples_per_second
                    else ""
                )
                + (f", test accuracy {sample.test_accuracy:.4f}" if sample.test_accuracy else ""),
                flush=True,
            )
    return results


def paired(a: Side, b: Side, attribute: str) -> float:
    """The median of the round-by-round differences a - b."""
    pairs = zip(a.samples, b.samples, strict=True)
    return statistics.median(getattr(x, attribute) - getattr(y, attribute) for x, y in pairs)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def comparison(
    name: str, sides: list[Side], measure: str, value: float | None, target: str, met: bool | None
) -> dict[str, Any]:
    return {
        "comparison": name,
        "measure": measure,
        "sides": {
            side.name: {
                "median_wall_seconds": side.median("wall_seconds"),
                "median_fit_seconds": side.median("fit_seconds"),
                "median_samples_per_second": side.median("samples_per_second"),
                "median_test_accuracy": side.median("test_accuracy"),
                "median_max_rss_mb": side.median("max_rss_mb"),
                "median_cpu_seconds": side.median("cpu_seconds"),
                "median_runs_per_second": side.median("runs_per_second"),
                "runs": [vars(sample) for sample in side.samples],
            }
            for side in sides
        },
        "value": value,
        "target": target,
        "met": met,
    }


def bench_training(bench: Bench, repeats: int) -> list[dict[str, Any]]:
    """Comparisons 1, 2, 7 and 8 share one alternating set of full one-epoch runs."""
    print("Training runs (tracking on, tracking off, no system metrics, reference):", flush=True)
    tracked, dry, unsampled, reference = alternate(
        repeats,
        {
            "pipeline (tracking on)": lambda: bench.pipeline(),
            "pipeline (tracking off)": lambda: bench.pipeline("tracking.enabled=false"),
            "pipeline (system metrics off)": lambda: bench.pipeline(
                "tracking.system_metrics=false"
            ),
            "reference": lambda: bench.reference(),
        },
    )
    overhead = ratio(tracked.median("wall_seconds"), dry.median("wall_seconds"))
    pairs = zip(tracked.samples, dry.samples, strict=True)
    cpu_cost = statistics.median(on.cpu_seconds - off.cpu_seconds for on, off in pairs)
    against = ratio(tracked.median("wall_seconds"), reference.median("wall_seconds"))
    sampling = ratio(tracked.median("wall_seconds"), unsampled.median("wall_seconds"))
    pairs = zip(tracked.samples, unsampled.samples, strict=True)
    sampling_cpu = statistics.median(on.cpu_seconds - off.cpu_seconds for on, off in pairs)
    return [
        comparison(
            "1. tracking overhead",
            [tracked, dry],
            f"wall time ratio on/off; CPU seconds on minus off, median of pairs: {cpu_cost:.2f}",
            overhead,
            "<= 1.03 wall, <= 3 CPU seconds",
            overhead is not None and overhead <= 1.03 and cpu_cost <= 3,
        ),
        comparison(
            "2. pipeline vs reference",
            [tracked, reference],
            "wall time ratio pipeline/reference",
            against,
            "<= 1.00",
            against is not None and against <= 1.00,
        ),
        comparison(
            "8. system metrics",
            [tracked, unsampled],
            f"wall time ratio on/off; CPU seconds on minus off, median of pairs: "
            f"{sampling_cpu:.2f}",
            sampling,
            "within the tracking overhead",
            None,
        ),
        comparison(
            "7. memory",
            [tracked],
            "peak resident memory of the default run (MB)",
            tracked.median("max_rss_mb"),
            "reported",
            None,
        ),
    ]


def bench_time_to_99(bench: Bench, repeats: int) -> list[dict[str, Any]]:
    print("Time to 99% test accuracy (reference 2 epochs, pipeline experiment=fast):", flush=True)
    reference, fast = alternate(
        repeats,
        {
            "reference, 2 epochs": lambda: bench.reference("--epochs", "2"),
            "pipeline experiment=fast (1 epoch)": lambda: bench.pipeline("experiment=fast"),
        },
    )
    value = ratio(fast.median("wall_seconds"), reference.median("wall_seconds"))
    reached = all((s.test_accuracy or 0) >= 0.99 for s in fast.samples)
    theirs = ", ".join(f"{s.test_accuracy:.4f}" for s in reference.samples if s.test_accuracy)
    return [
        comparison(
            "3. time to 99%",
            [reference, fast],
            "wall time ratio fast/reference (every fast run reached 99.0%: "
            + ("yes" if reached else "**no**")
            + f"; the reference's 2-epoch accuracies: {theirs})",
            value,
            "<= 0.4",
            value is not None and value <= 0.4 and reached,
        )
    ]


def bench_latency(bench: Bench, repeats: int) -> list[dict[str, Any]]:
    print("Command-line latency:", flush=True)
    rows = []
    for flag in (["--help"], ["--cfg", "job"]):
        side = Side(f"python -m src.train {' '.join(flag)}")
        for _ in range(max(repeats, 5)):
            wall, rss, cpu, _ = run_process([PYTHON, "-m", "src.train", *flag], cwd=ROOT)
            side.samples.append(Sample(wall, rss, cpu))
        value = side.median("wall_seconds")
        print(f"  {side.name}: median {value:.2f} s", flush=True)
        rows.append(
            comparison(
                f"5. latency {' '.join(flag)}",
                [side],
                "median wall seconds",
                value,
                "< 1 s",
                value is not None and value < 1.0,
            )
        )
    return rows


def bench_sweep(bench: Bench, repeats: int) -> list[dict[str, Any]]:
    print("Sweep overhead (8 jobs, 2,000 training images each):", flush=True)
    sweep_dir = bench.work / "sweep"
    beyond_fit, beyond_jobs = [], []
    for _ in range(repeats):
        wall, _, _, _ = run_process(
            [
                PYTHON,
                "-m",
                "src.train",
                "-m",
                f"data.dir={bench.args.data_dir}",
                "data.limit=2000",
                f"tracking.uri={bench.store}",
                f"hydra.sweep.dir={sweep_dir}",
                "trainer.verbose=0",
                "trainer.seed=range(8)",
            ],
            cwd=ROOT,
        )
        results = [json.loads(path.read_text()) for path in sweep_dir.glob("*/result.json")]
        fits = sum(result["metrics"]["fit_seconds"] for result in results)
        jobs = sum(result["job_seconds"] for result in results)
        beyond_fit.append((wall - fits) / len(results))
        beyond_jobs.append((wall - jobs) / len(results))
        print(
            f"  {wall:.1f} s wall, {fits:.1f} s in fit, {jobs:.1f} s in the jobs: "
            f"{beyond_fit[-1]:.2f} s per job beyond fit, {beyond_jobs[-1]:.2f} s beyond the jobs",
            flush=True,
        )
        for path in sweep_dir.glob("*/result.json"):
            path.unlink()
    rows = []
    for name, values, measure in (
        ("6. sweep overhead", beyond_jobs, "(wall - sum of job times) / jobs, seconds"),
        (
            "6. sweep overhead, strict",
            beyond_fit,
            "(wall - sum of fit times) / jobs, seconds (also counts each job's test evaluation "
            "and model logging)",
        ),
    ):
        value = statistics.median(values)
        side = Side(name, [Sample(v, 0.0) for v in values])
        rows.append(comparison(name, [side], measure, value, "< 1.5 s", value < 1.5))
    return rows


def bench_cluster(bench: Bench, repeats: int) -> list[dict[str, Any]]:
    """9: 8 processes recording runs at once, team server vs SQLite store; 10: what a SLURM job
    adds over a job of the basic launcher. Starts the team server and the one-node SLURM
    (``make server``, ``make slurm-up``: root) and stops what it started."""
    server_dir = Path(tempfile.mkdtemp(prefix="bench-server-"))
    server_dir.chmod(0o755)  # PostgreSQL runs as the postgres user under root.
    port = _free_port()
    settings = [f"SERVER_DIR={server_dir}", f"PORT={port}"]
    slurm_was_up = (
        shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode == 0
    )
    try:
        for target in (["server", *settings], ["slurm-up"]):
            subprocess.run(["make", "-s", *target], cwd=ROOT, check=True, capture_output=True)
        return _bench_writers(bench, repeats, f"http://127.0.0.1:{port}") + _bench_slurm(
            bench, repeats
        )
    finally:
        subprocess.run(["make", "-s", "server-stop", *settings], cwd=ROOT, capture_output=True)
        if not slurm_was_up:
            subprocess.run(["make", "-s", "slurm-down"], cwd=ROOT, capture_output=True)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bench_writers(bench: Bench, repeats: int, server: str) -> list[dict[str, Any]]:
    print("8 writers at once, 4 runs of 25 epochs each (team server, SQLite):", flush=True)

    def writers(uri: str) -> Sample:
        _, rss, cpu, stdout = run_process(
            [PYTHON, str(ROOT / "benchmarks" / "writers.py"), uri, "--writers", "8"], cwd=ROOT
        )
        figures = json.loads(stdout.splitlines()[-1])
        if figures["lost"] or figures["failed_writers"]:
            raise RuntimeError(f"writers lost records: {figures}")
        return Sample(figures["seconds"], rss, cpu, runs_per_second=figures["runs_per_second"])

    stores = (f"sqlite:///{bench.work / f'writers{n}' / 'mlflow.db'}" for n in range(10**6))
    on_server, on_sqlite = alternate(
        repeats,
        {
            "8 writers, team server": lambda: writers(server),
            "8 writers, SQLite": lambda: writers(next(stores)),  # a new store each round
        },
    )
    value = ratio(on_server.median("runs_per_second"), on_sqlite.median("runs_per_second"))
    return [
        comparison(
            "9. 8 concurrent writers",
            [on_server, on_sqlite],
            "runs per second, team server / SQLite (25 epochs x 4 metrics per run)",
            value,
            "reported",
            None,
        )
    ]


def _bench_slurm(bench: Bench, repeats: int) -> list[dict[str, Any]]:
    print("A 4-job sweep, one job at a time, SLURM vs the basic launcher:", flush=True)

    def sweep(*launcher: str) -> Sample:
        bench.counter += 1
        wall, rss, cpu, _ = run_process(
            [
                PYTHON, "-m", "src.train", "-m", *launcher,
                f"data.dir={bench.args.data_dir}", "data.limit=2000", "trainer.verbose=0",
                f"tracking.uri={bench.store}", "tracking.log_model=false",
                f"hydra.sweep.dir={bench.work / f'sweep{bench.counter}'}", "trainer.seed=range(4)",
            ],
            cwd=ROOT,
        )  # fmt: skip
        return Sample(wall, rss, cpu)

    on_slurm, basic = alternate(
        repeats,
        {
            "4-job sweep, SLURM": lambda: sweep(
                "hydra/launcher=slurm", "hydra.launcher.array_parallelism=1"
            ),
            "4-job sweep, basic launcher": lambda: sweep(),
        },
    )
    slurm_wall, basic_wall = on_slurm.median("wall_seconds"), basic.median("wall_seconds")
    added = None if slurm_wall is None or basic_wall is None else (slurm_wall - basic_wall) / 4
    return [
        comparison(
            "10. SLURM per job",
            [on_slurm, basic],
            "seconds a SLURM job adds over a basic-launcher job: (wall SLURM - wall basic) / 4",
            added,
            "reported",
            None,
        )
    ]


FIXED_IMAGES = 600  # so few that training is a small part of the run


def bench_fixed_cost(bench: Bench, repeats: int) -> list[dict[str, Any]]:
    """11-14: what a run pays besides training, where training is almost nothing: tracking (a
    tracked run against a dry one), the pipeline without tracking against the plain program, a
    sweep's job in its own process against a single run, and JAX's second run of a config
    against its first (seconds to the first finished batch: a training set of one batch)."""
    rounds = bench.args.fixed_rounds  # Its own count (--fixed-rounds), not --repeats.
    limit = f"data.limit={FIXED_IMAGES}"
    print(f"Fixed cost, {FIXED_IMAGES} training images (tracked, dry, plain):", flush=True)
    tracked, dry, plain = alternate(
        rounds,
        {
            "tracked run (600 images)": lambda: bench.pipeline(limit),
            "dry run (600 images)": lambda: bench.pipeline(limit, "tracking.enabled=false"),
            "plain program (600 images)": lambda: bench.reference("--limit", str(FIXED_IMAGES)),
        },
    )
    print("A sweep's job in its own process (local_jobs) against a single run:", flush=True)
    job, single = alternate(
        rounds,
        {
            "sweep job, own process": lambda: bench.sweep_job(limit),
            "single run": lambda: (bench.pipeline(limit), _job_process(bench.result))[1],
        },
    )
    print("JAX, one batch, the first run of a config against the second:", flush=True)
    first, second = Side("JAX first run (new cache)"), Side("JAX second run")
    misses = []
    for round_number in range(1, rounds + 1):
        cache = bench.work / f"jax-cache{round_number}"  # New and empty: the first run's.
        env = {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_EXPLAIN_CACHE_MISSES": "1"}
        one_batch = (
            "backend=jax",
            "data.limit=32",
            "data.val_fraction=0",
            "tracking.enabled=false",
        )
        for side in (first, second):
            side.samples.append(
                bench.pipeline(*one_batch, "optimized_metric=test_accuracy", env=env)
            )
        misses.append(bench.printed.count("PERSISTENT COMPILATION CACHE MISS"))
        print(
            f"  round {round_number}: first batch after {first.samples[-1].fit_seconds:.2f} s, "
            f"then {second.samples[-1].fit_seconds:.2f} s; the second run compiled "
            f"{misses[-1]} computations",
            flush=True,
        )
    cpu, wall = paired(tracked, dry, "cpu_seconds"), paired(tracked, dry, "wall_seconds")
    apart = paired(dry, plain, "wall_seconds")
    job_cpu, job_wall = paired(job, single, "cpu_seconds"), paired(job, single, "wall_seconds")
    compiled = ratio(second.median("fit_seconds"), first.median("fit_seconds"))
    return [
        comparison(
            "11. tracking's fixed cost",
            [tracked, dry],
            f"tracked minus dry, medians of pairs: CPU seconds (the value), wall {wall:.2f} s",
            cpu,
            "<= 2.0 CPU s and <= 2.0 s wall",
            cpu <= 2.0 and wall <= 2.0,
        ),
        comparison(
            "12. dry run vs plain program",
            [dry, plain],
            "wall seconds, dry minus plain, median of pairs",
            apart,
            "<= 0.5 s",
            apart <= 0.5,
        ),
        comparison(
            "13. sweep job vs single run",
            [job, single],
            "job process minus single run, medians of pairs: CPU seconds (the value, from the "
            f"process's start), wall {job_wall:.2f} s (from the config to the run closed)",
            job_cpu,
            "<= 0.25 CPU s",
            job_cpu <= 0.25,
        ),
        comparison(
            "14. JAX compilation cache",
            [first, second],
            "seconds to the first finished batch, second run / first run (the second compiled "
            f"{max(misses)} computations at most)",
            compiled,
            "nothing compiled twice",
            max(misses) == 0,
        ),
    ]


BENCHES = {
    "training": bench_training,
    "latency": bench_latency,
    "sweep": bench_sweep,
    "time99": bench_time_to_99,
    "cluster": bench_cluster,
    "fixed": bench_fixed_cost,
}


def write_results(rows: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "comparisons": rows}, indent=1))
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {meta['machine']}; {meta['cpus']} CPUs; Python {meta['python']}; "
        f"{meta['date']}; {meta['repeats']} alternating rounds"
        + (f" ({meta['fixed_rounds']} for 11-14)" if "fixed_rounds" in meta else "")
        + "; medians.",
        "",
        "| comparison | measure | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(
            f"| {row['comparison']} | {row['measure']} | {value} | {row['target']} | {met} |"
        )
    lines += [
        "",
        "| side | median wall s | median fit s | median samples/s | median test acc "
        "| median peak RSS MB | median CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for row in rows:
        for name, side in row["sides"].items():
            if name in seen:
                continue
            seen.add(name)
            cells = [
                side["median_wall_seconds"],
                side["median_fit_seconds"],
                side["median_samples_per_second"],
                side["median_test_accuracy"],
                side["median_max_rss_mb"],
                side["median_cpu_seconds"],
            ]
            lines.append(
                f"| {name} | " + " | ".join("" if c is None else f"{c:.4g}" for c in cells) + " |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [row for row in rows if row["value"] is not None and row["met"] is not None]
    figure, axes = plt.subplots(figsize=(9, 4))
    names = [row["comparison"] for row in plotted]
    colors = ["tab:green" if row["met"] else "tab:red" for row in plotted]
    axes.barh(names, [row["value"] for row in plotted], color=colors)
    for index, row in enumerate(plotted):
        axes.text(
            row["value"],
            index,
            f" {row['value']:.3f} (target {row['target']})",
            va="center",
            fontsize=8,
        )
    axes.invert_yaxis()
    axes.set_title("Pipeline vs plain tf.keras: measured value per comparison (green: target met)")
    figure.tight_layout()
    figure.savefig(out / "results.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="folder with the full MNIST files"
    )
    parser.add_argument("--reference", type=Path, required=True, help="the plain tf.keras program")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument(
        "--fixed-rounds", type=int, default=5, help="alternating rounds of 'fixed' (default: 5)"
    )
    parser.add_argument("--only", default=",".join(BENCHES), help=f"subset of {','.join(BENCHES)}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.data_dir, args.reference = args.data_dir.resolve(), args.reference.resolve()
    for path in (args.data_dir, args.reference):
        if not path.exists():
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        print(
            f"error: unknown benchmark {unknown}; choose from {','.join(BENCHES)}", file=sys.stderr
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        bench = Bench(args, Path(folder))
        print("Warm-up run (creates the store, touches the memory; not counted)...", flush=True)
        bench.pipeline("data.limit=2000")
        rows = [row for name in chosen for row in BENCHES[name](bench, args.repeats)]
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "repeats": args.repeats,
        **({"fixed_rounds": args.fixed_rounds} if "fixed" in chosen else {}),
    }
    write_results(rows, args.out, meta)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
