"""Sweeps (``python -m src.train -m ...``): one MLflow parent run per multirun, every job's run
nested under it, and the sweep's summary recorded on the parent when the jobs are done.

The parent is opened by a Hydra callback in the launching process before any job starts (which
also creates the store, so concurrent jobs never race to build it), and its id is handed to the
jobs in a file in the sweep folder, so any launcher works (in-process, joblib's worker
processes). Each job leaves a small result file in its own output folder; the callback reads
them at the end.

With ``tracking.background=true`` the parent is opened and summarised by the recording process
(:mod:`src.recorder`), so the launching process never loads MLflow; with the in-process launcher
Hydra composes the jobs' configs while the parent is opened, and the first job waits for it as it
starts.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.uris import mask_overrides, mask_uri

if TYPE_CHECKING:
    from src.recorder import Answer, Recorder

SWEEP_FILE = "sweep.json"
RESULT_FILE = "job_result.json"
# Settings that change where a job's records go or how it prints, not what it trains.
_NOT_IN_CONFIG_HASH = ("tracking", "sweep")
_IN_PROCESS_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# The sweep whose parent run is still being opened by the recording process (in-process jobs
# wait for it in current_sweep).
_pending_sweep: SweepTracker | None = None


@dataclass(frozen=True)
class SweepContext:
    """What a job of a sweep needs to know of it."""

    parent_run_id: str
    job_number: int
    resumed: bool
    rerun: bool


@dataclass(frozen=True)
class JobResult:
    job_number: int
    overrides: list[str]
    status: str  # "finished", "reused" or "failed"
    run_id: str | None
    metric: float | None
    error: str | None = None


def config_hash(cfg: DictConfig) -> str:
    """A fingerprint of everything that decides what a job trains."""
    settings = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(settings, dict)
    for key in _NOT_IN_CONFIG_HASH:
        settings.pop(key, None)
    settings.get("trainer", {}).pop("verbose", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def current_sweep() -> SweepContext | None:
    """The sweep this job belongs to, or None for a single run."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    pending = _pending_sweep
    if pending is not None:
        _exit_on_error(lambda _: pending.wait_opened(), None)
    sweep_file = Path(hydra_cfg.sweep.dir) / SWEEP_FILE
    if not sweep_file.exists():
        return None
    recorded = json.loads(sweep_file.read_text())
    return SweepContext(
        parent_run_id=recorded["parent_run_id"],
        job_number=int(hydra_cfg.job.num),
        resumed=bool(recorded["resumed"]),
        rerun=bool(recorded["rerun"]),
    )


def write_job_result(result: JobResult) -> None:
    """Leave the job's outcome in its output folder for the sweep's summary."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESULT_FILE).write_text(json.dumps(asdict(result)))


class SweepTracker(Callback):
    """Opens the sweep's parent run before the jobs and closes it with their summary after.

    If the sweep ends early (Ctrl-C, a crash of the launcher), the parent is closed KILLED or
    FAILED at exit, so it never stays RUNNING.
    """

    def __init__(self) -> None:
        self._recorder: Recorder | None = None  # Set when the recording process holds MLflow.
        self._opening: Answer | None = None  # The recording process is opening the parent.
        self._sweep_dir: Path | None = None
        self._rerun = False
        self._uri: str | None = None
        self._parent_run_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Hydra hands its callbacks to joblib's workers, which need no handle on this
        # process's recorder (a socket cannot be pickled).
        return {**self.__dict__, "_recorder": None, "_opening": None}

    # Hydra turns a callback's exceptions into warnings and carries on; a sweep whose parent run
    # could not be opened or closed must stop instead, so errors leave as SystemExit.

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_error(self._start, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_error(self._finish, config)

    def _start(self, config: DictConfig) -> None:
        global _pending_sweep
        from src import records, signals, store
        from src.schema import validate

        signals.install()
        # The settings shared by every job are checked before anything is recorded.
        validate(OmegaConf.masked_copy(config, [str(key) for key in config if key != "hydra"]))
        if not config.tracking.enabled:
            return  # A dry sweep: no parent run; each job runs as a dry run.
        store.check_store(config.tracking.uri)
        self._sweep_dir = Path(config.hydra.sweep.dir)
        self._rerun = bool(config.sweep.rerun)
        sweep_overrides = mask_overrides(list(config.hydra.overrides.task))
        name = "sweep: " + (records.run_name_from_overrides(sweep_overrides) or "defaults")
        request = (
            config.tracking.uri,
            config.tracking.experiment,
            _sweep_fingerprint(config, sweep_overrides),
            name[:250],
            {
                "sweep_role": "parent",
                "sweep_overrides": " ".join(sweep_overrides) or "(none)",
                "sweeper": str(config.hydra.sweeper._target_).rsplit(".", 1)[-1],
                "launcher": str(config.hydra.launcher._target_).rsplit(".", 1)[-1],
            },
            self._rerun,
        )
        if config.tracking.background:
            from src.recorder import Recorder

            self._recorder = Recorder.get()
            self._opening = self._recorder.ask(("sweep", "open_parent", request))
        else:
            self._opened(*open_parent(*request))
        # Registered after the recorder's own exit handler, so it runs first.
        atexit.register(self._close_if_still_open)
        if config.hydra.launcher._target_ == _IN_PROCESS_LAUNCHER:
            _pending_sweep = self  # The first job waits for the parent; Hydra goes on meanwhile.
        else:
            self.wait_opened()  # Jobs in other processes read the parent's id from a file.

    def wait_opened(self) -> None:
        """Wait until the recording process has opened the parent run (if it was asked to)."""
        global _pending_sweep
        _pending_sweep = None
        if self._opening is not None:
            opened = self._opening.get()
            self._opening = None
            self._opened(*opened)

    def _opened(self, uri: str, parent_run_id: str, resumed: bool) -> None:
        """Hand the parent's id to the jobs, through a file in the sweep folder."""
        assert self._sweep_dir is not None
        self._uri, self._parent_run_id = uri, parent_run_id
        self._sweep_dir.mkdir(parents=True, exist_ok=True)
        (self._sweep_dir / SWEEP_FILE).write_text(
            json.dumps({"parent_run_id": parent_run_id, "resumed": resumed, "rerun": self._rerun})
        )
        verb = "Resuming" if resumed else "Starting"
        print(f"{verb} sweep {parent_run_id} ({mask_uri(uri)})", file=sys.stderr)

    def _call(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run one of this module's MLflow steps where MLflow is loaded: in the recording
        process, or here if there is none (any more: it may have been killed)."""
        if self._recorder is not None:
            from src.recorder import RecorderStopped

            try:
                return self._recorder.request(("sweep", step.__name__, args))
            except RecorderStopped:
                self._recorder = None
        return step(*args)

    def _finish(self, config: DictConfig) -> None:
        if not config.tracking.enabled:
            return
        self.wait_opened()
        if self._uri is None or self._parent_run_id is None:
            raise RuntimeError("the sweep's parent run was never opened")
        parent = self._parent_run_id
        results = _read_job_results(Path(config.hydra.sweep.dir))
        failed = [result for result in results if result.status == "failed"]
        table = self._call(
            summarize,
            self._uri,
            config.tracking.experiment,
            parent,
            config.optimized_metric,
            results,
        )
        self._parent_run_id = None  # Closed.
        print(table)
        finished = sum(result.status == "finished" for result in results)
        reused = sum(result.status == "reused" for result in results)
        print(f"\nSweep {parent}: {finished} finished, {reused} reused, {len(failed)} failed.")
        if failed:
            names = ", ".join(_describe(r, results) for r in failed)
            print(f"error: {len(failed)} of {len(results)} jobs failed: {names}", file=sys.stderr)
            sys.exit(1)

    def _close_if_still_open(self) -> None:
        from src import signals
        from src.store import TrackingError

        try:
            with contextlib.suppress(TrackingError):  # Reported already: no parent to close.
                self.wait_opened()
            if self._uri is None or self._parent_run_id is None:
                return
            interrupted = signals.received is not None
            status = "KILLED" if interrupted else "FAILED"
            self._call(close_parent, self._uri, self._parent_run_id, status)
        except Exception as error:  # At exit, report rather than raise.
            print(
                f"warning: could not close sweep run {self._parent_run_id}: {error}",
                file=sys.stderr,
            )


def open_parent(
    uri: str | None,
    experiment: str,
    fingerprint: str,
    name: str,
    tags: dict[str, str],
    rerun: bool,
) -> tuple[str, str, bool]:
    """Create the store and the experiment if needed and open the sweep's parent run, or reopen
    the unfinished one with the same fingerprint (unless ``rerun``). Returns the tracking URI,
    the parent's id and whether it was reopened."""
    from src import tracking

    uri, experiment_id = tracking.prepare_store(uri, experiment)
    resume_id = None if rerun else tracking.find_sweep_to_resume(uri, experiment_id, fingerprint)
    parent = tracking.start_sweep_run(
        uri,
        experiment_id,
        name=name,
        tags={**tags, "sweep_fingerprint": fingerprint},
        resume_run_id=resume_id,
    )
    return uri, parent, resume_id is not None


def summarize(uri: str, experiment: str, parent: str, metric: str, results: list[JobResult]) -> str:
    """Record the jobs' comparison and counts on the parent run and close it; returns the
    comparison as text."""
    from src import compare, report, tracking

    failed = [result for result in results if result.status == "failed"]
    runs = tracking.find_runs(uri, experiment, parent_run_id=parent)
    table = compare.build_table(runs, metric)
    tags = {
        "jobs_failed_list": "; ".join(f"{_describe(r, results)}: {r.error}" for r in failed)[:5000]
        or "(none)",
    }
    metrics = {
        "jobs_total": float(len(results)),
        "jobs_finished": float(sum(r.status == "finished" for r in results)),
        "jobs_reused": float(sum(r.status == "reused" for r in results)),
        "jobs_failed": float(len(failed)),
    }
    best = table.rows[0] if table.rows else None
    if best is not None and best.value is not None:
        tags.update({"best_run_id": best.run_id, "best_run_name": best.name})
        tags["best_job"] = best.tags.get("sweep_job", "")
        metrics[f"best_{metric}"] = best.value
    histories = {
        row.name or row.run_id: tracking.metric_history(uri, row.run_id, f"val_{_base(metric)}")
        for row in table.rows
    }
    figure = report.plot_validation_curves(histories, f"val_{_base(metric)}")
    tracking.log_to_run(
        uri,
        parent,
        metrics=metrics,
        tags=tags,
        texts={
            "comparison/comparison.csv": compare.to_csv(table),
            "comparison/comparison.md": compare.to_markdown(table),
        },
        figures={"comparison/validation_curves.png": figure},
    )
    report.close(figure)
    tracking.end_run(uri, parent, "FAILED" if failed else "FINISHED")
    return compare.to_text(table)


def close_parent(uri: str, parent: str, status: str) -> None:
    """Close a parent run that is still open (the sweep ended early)."""
    from src import tracking

    tracking.end_run(uri, parent, status)


def _describe(result: JobResult, results: list[JobResult]) -> str:
    """A job by its number and the overrides that set it apart from the other jobs."""
    shared = set.intersection(*(set(r.overrides) for r in results))
    own = [override for override in result.overrides if override not in shared]
    return f"job {result.job_number} ({' '.join(own)})"


def _exit_on_error(step: Any, config: DictConfig | None) -> None:
    from src.errors import PipelineError
    from src.schema import ConfigError

    try:
        step(config)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


def _base(metric: str) -> str:
    return metric.removeprefix("val_").removeprefix("test_")


def _sweep_fingerprint(config: DictConfig, overrides: Sequence[str]) -> str:
    """Two sweeps are the same sweep when they have the same overrides, experiment and sweeper
    (and search space)."""
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
    identity = json.dumps(
        {
            "overrides": sorted(overrides),
            "experiment": config.tracking.experiment,
            "sweeper": sweeper,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _read_job_results(sweep_dir: Path) -> list[JobResult]:
    results = []
    for path in sorted(sweep_dir.glob(f"**/{RESULT_FILE}")):
        recorded = json.loads(path.read_text())
        results.append(JobResult(**recorded))
    return sorted(results, key=lambda result: result.job_number)


def job_metric(value: float | None) -> float:
    """What a job returns to the sweeper: its metric, or NaN for a failed job (Optuna then
    records the trial as failed instead of stopping the study)."""
    return math.nan if value is None else value
