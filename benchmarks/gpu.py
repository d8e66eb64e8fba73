"""The GPU check: for each installed backend, the default run and ``experiment=fast``, tracked
and dry, and the plain program in Keras 3 form, on the full MNIST; printed as a table and
written to ``benchmarks/results/gpu/`` (``results.json``, ``results.md``).

    make bench-gpu [PYTHON=/path/to/python] [DATA_DIR=...]
    python benchmarks/gpu.py --data-dir ../shared/data/mnist [--device gpu] [--limit N]

It runs with the interpreter that runs it, which needs the project's dependencies but not an
environment made by ``make install``. ``--device gpu`` (the default) stops at the first run if
the backend finds no GPU; ``--device cpu --limit 600`` checks the script itself on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax")
RUNS = {"default": [], "experiment=fast": ["experiment=fast"]}
COLUMNS = ("backend", "run", "tracked", "fit s", "images/s", "test accuracy", "process s")


def run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run a command from the project's folder; its wall seconds and its standard output.
    A failed command ends the benchmark with its last line of error."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        sys.exit(f"error: {' '.join(command[:4])} ... failed: {lines[-1]}")
    return seconds, done.stdout


def pipeline(
    args: argparse.Namespace, work: Path, backend: str, tracked: bool, extra: list[str]
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(dir=work))
    command = [
        sys.executable,
        "-m",
        "src.train",
        f"backend={backend}",
        f"trainer.device={args.device}",
        f"data.dir={args.data_dir}",
        f"tracking.uri=sqlite:///{work / 'store' / 'mlflow.db'}",
        f"tracking.enabled={str(tracked).lower()}",
        f"hydra.run.dir={folder}",
        *extra,
        *([f"data.limit={args.limit}"] if args.limit else []),
    ]
    seconds, _ = run(command, dict(os.environ))
    result = json.loads((folder / "result.json").read_text())
    metrics = result["metrics"]
    return {
        "fit s": metrics["fit_seconds"],
        "images/s": metrics["train_samples_per_second"],
        "test accuracy": metrics["test_accuracy"],
        "process s": seconds,
        "device": result["device"],
    }


def plain(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    command = [sys.executable, str(ROOT / "benchmarks" / "plain_keras.py")]
    command += ["--data-dir", str(args.data_dir), "--limit", str(args.limit)]
    seconds, output = run(command, {**os.environ, "KERAS_BACKEND": backend})
    result = json.loads(output.strip().splitlines()[-1])
    return {
        "fit s": result["fit_s"],
        "images/s": result["samples_per_s"],
        "test accuracy": result["test_accuracy"],
        "process s": seconds,
        "device": result["device"],
    }


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if value >= 1000 else f"{value:.4g}"
        return str(value)

    lines = [
        "# GPU check",
        "",
        ", ".join(f"{key}: {value}" for key, value in meta.items()) + ".",
        "",
        "| " + " | ".join((*COLUMNS, "device")) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    lines += [
        "| " + " | ".join(cell(row[key]) for key in (*COLUMNS, "device")) + " |" for row in rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the MNIST files")
    parser.add_argument("--device", choices=("gpu", "cpu", "auto"), default="gpu")
    parser.add_argument("--limit", type=int, default=0, help="the first N training images only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()

    installed = [name for name in BACKENDS if importlib.util.find_spec(name) is not None]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in installed:
            for name, extra in RUNS.items():
                for tracked in (True, False):
                    row = pipeline(args, Path(folder), backend, tracked, extra)
                    rows.append({"backend": backend, "run": name, "tracked": tracked, **row})
                    print(json.dumps(rows[-1]), flush=True)
            rows.append({"backend": backend, "run": "plain program", "tracked": False})
            rows[-1].update(plain(args, backend))
            print(json.dumps(rows[-1]), flush=True)

    meta = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "training images": args.limit or "all",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = to_markdown(rows, meta)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
