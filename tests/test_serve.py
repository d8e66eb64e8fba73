"""`make serve`: MLflow's scoring server, started from the project's environment, answers real
test digits with the registered best model's predictions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from src import data
from tests.conftest import FIXTURE_DIR
from tests.mlflow_server import answers, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_serve_predicts_test_digits_with_the_best_model(tmp_path):
    store = tmp_path / "store"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            f"data.dir={FIXTURE_DIR}",
            f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "trainer.verbose=0",
            "tracking.register=true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "now models:/mnist-cnn@best" in trained.stdout

    port, log = free_port(), tmp_path / "serve.log"
    # Started as a user would: make, with no virtualenv activated (its bin/ not on PATH).
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    with log.open("w") as output:
        server = subprocess.Popen(
            ["make", "-s", "serve", f"STORE={store}", f"PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while not answers(f"http://127.0.0.1:{port}/ping"):
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        raw = data.load_mnist(FIXTURE_DIR, "unused", "unused", "0" * 64)
        digits = (raw.test_images[:20].astype(np.float32) / 255.0)[..., np.newaxis]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": digits.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = np.array(json.loads(response.read())["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    assert predictions.shape == (20, 10)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-4)
    # The model the run recorded, loaded here, predicts the same digits.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    local = mlflow.pyfunc.load_model("models:/mnist-cnn@best").predict(digits)
    np.testing.assert_array_equal(predictions.argmax(axis=1), np.asarray(local).argmax(axis=1))
    assert (predictions.argmax(axis=1) == raw.test_labels[:20]).mean() >= 0.7
