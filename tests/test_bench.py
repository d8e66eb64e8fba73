"""The benchmark's fixed-cost comparison, run for real on the fixture: one round of each side,
with the project's plain Keras program standing in for the reference (CI may have no
../shared). The figures are the benchmark's to judge; this checks that it measures them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import FIXTURE_DIR, PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_the_fixed_cost_comparison_measures_every_side_and_writes_its_table(tmp_path):
    command = [sys.executable, "benchmarks/bench.py", f"--data-dir={FIXTURE_DIR}"]
    command += ["--reference=benchmarks/plain_keras.py", "--only=fixed", "--fixed-rounds=1"]
    command += [f"--out={tmp_path}"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {
        row["comparison"]: row
        for row in json.loads((tmp_path / "results.json").read_text())["comparisons"]
    }
    assert sorted(rows) == [
        "11. tracking's fixed cost",
        "12. dry run vs plain program",
        "13. sweep job vs single run",
        "14. JAX compilation cache",
    ]
    for row in rows.values():
        for side in row["sides"].values():
            assert len(side["runs"]) == 1
            assert side["median_cpu_seconds"] > 0 and side["median_wall_seconds"] > 0
    # The second JAX run found every computation in the cache that the first filled.
    assert rows["14. JAX compilation cache"]["met"] is True
    assert "| 11. tracking's fixed cost |" in (tmp_path / "results.md").read_text()
