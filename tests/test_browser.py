"""MLflow's UI as a user meets it, in Debian's Chromium (headless, driven through its own
ChromeDriver by Selenium) against `make ui` on a store holding a sweep: the address the project
prints opens the runs table in the model-training view, the sweep's parent row expands to its
jobs, and a run's page draws its metric charts. Screenshots are kept in test-output/browser/."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import FIXTURE_DIR
from tests.mlflow_server import answers, free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "browser"
LINK = re.compile(r"http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?workflowType=machine_learning")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store holding one sweep of two jobs, and the address the sweep printed."""
    folder = tmp_path_factory.mktemp("ui")
    swept = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            "-m",
            "optimizer=adam,sgd",
            f"data.dir={FIXTURE_DIR}",
            "data.limit=400",
            "trainer.epochs=2",
            "trainer.verbose=0",
            f"tracking.uri=sqlite:///{folder / 'store' / 'mlflow.db'}",
            f"hydra.sweep.dir={folder / 'sweep'}",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert swept.returncode == 0, swept.stderr[-3000:]
    return folder / "store", LINK.findall(swept.stdout)[-1]


@pytest.fixture(scope="module")
def ui(store: tuple[Path, str]) -> Iterator[str]:
    """`make ui` serving the store; yields the address it printed."""
    port, log = free_port(), store[0].parent / "ui.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            ["make", "-s", "ui", f"STORE={store[0]}", f"PORT={port}", "HOST=127.0.0.1"],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Its own process group: the UI's workers stop with it.
        )
    try:
        deadline = time.monotonic() + 120
        while not answers(f"http://127.0.0.1:{port}/health"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield LINK.findall(log.read_text())[0]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root.
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",  # The machines reach no outside host.
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1600,1000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait_for_text(driver, *texts: str, timeout: float = 60) -> str:
    """Wait until each text is a whole line of the page."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = driver.find_element(By.TAG_NAME, "body").text
        if set(texts) <= set(page.splitlines()):
            return page
        time.sleep(0.5)
    raise AssertionError(f"{texts} not on the page; it shows:\n{page[:2000]}")


def test_the_printed_address_opens_the_runs_table_with_the_sweep_and_its_jobs(store, ui, browser):
    from selenium.webdriver.common.by import By

    assert ui.split("/#/")[1] == store[1].split("/#/")[1]  # The sweep printed the same page.
    client = MlflowClient(f"sqlite:///{store[0] / 'mlflow.db'}")
    runs = client.search_runs(["1"])
    [parent] = [run for run in runs if run.data.tags.get("sweep_role") == "parent"]
    jobs = [run.info.run_name for run in runs if run is not parent]
    browser.get(ui)
    page = wait_for_text(browser, parent.info.run_name, "Run Name", "3 matching runs")
    assert not set(jobs) & set(page.splitlines())  # Collapsed under their parent.
    browser.save_screenshot(str(SHOTS / "runs-table.png"))

    row = f"//*[text()={parent.info.run_name!r}]/ancestor::*[@col-id][1]//button"
    browser.find_element(By.XPATH, row).click()
    wait_for_text(browser, parent.info.run_name, *jobs)
    browser.save_screenshot(str(SHOTS / "runs-table-expanded.png"))


def test_a_run_page_draws_its_metric_charts(store, ui, browser):
    from selenium.webdriver.common.by import By

    client = MlflowClient(f"sqlite:///{store[0] / 'mlflow.db'}")
    job = next(run for run in client.search_runs(["1"]) if "sweep_role" not in run.data.tags)
    browser.get(ui.split("#")[0] + f"#/experiments/1/runs/{job.info.run_id}/model-metrics")
    wait_for_text(browser, "Model metrics", "accuracy", "loss", "learning_rate")
    deadline = time.monotonic() + 30
    while not browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer path"):
        assert time.monotonic() < deadline, "no chart was drawn"
        time.sleep(0.5)
    browser.save_screenshot(str(SHOTS / "run-metric-charts.png"))
