"""Sweeps (``python -m src.train -m ...``): one MLflow parent run per multirun, every job's run
nested under it, and the sweep's summary recorded on the parent when the jobs are done.

A Hydra callback opens the parent in the launching process before any job starts (which also
creates the store, so concurrent jobs never race to build it) and hands its id to the jobs in a
file in the sweep folder, so any launcher works (in-process, joblib's worker processes). Each
job leaves a small result file in its own output folder; the callback reads them at the end.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from src import records, signals
from src.errors import PipelineError, one_line
from src.schema import ConfigError, validate
from src.uris import mask_overrides, mask_text

SWEEP_FILE = "sweep.json"
RESULT_FILE = "result.json"  # Each job's outcome, written by src.train.main in its folder.
# Settings that change where a job's records go or how it prints, not what it trains.
_NOT_IN_CONFIG_HASH = ("tracking", "sweep")


@dataclass(frozen=True)
class SweepContext:
    """What a job of a sweep needs to know of it."""

    parent_run_id: str
    job_number: int
    resumed: bool  # True: reuse the runs this sweep finished before it was interrupted
    launcher: str  # host:pid of the launching process

    @property
    def in_own_process(self) -> bool:
        """True for a job run apart from the launcher (SLURM, submitit's or joblib's workers)."""
        return self.launcher != _this_process()


def _this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def config_hash(cfg: DictConfig) -> str:
    """A fingerprint of everything that decides what a job trains."""
    settings = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(settings, dict)
    for key in _NOT_IN_CONFIG_HASH:
        settings.pop(key, None)
    settings.get("trainer", {}).pop("verbose", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def current_sweep() -> SweepContext | None:
    """The sweep this job belongs to, or None for a single run (or a dry sweep)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    recorded = handed_to_jobs(Path(hydra_cfg.sweep.dir))
    return None if recorded is None else SweepContext(job_number=int(hydra_cfg.job.num), **recorded)


def handed_to_jobs(sweep_dir: Path) -> dict[str, Any] | None:
    """What the sweep's launcher handed its jobs (its parent run's id, whether it resumed, the
    launching process), or None for a dry sweep, which has no parent run."""
    sweep_file = sweep_dir / SWEEP_FILE
    return json.loads(sweep_file.read_text()) if sweep_file.exists() else None


class SweepTracker(Callback):
    """Opens the sweep's parent run before the jobs and closes it with their summary after.

    If the sweep ends early (Ctrl-C, a crash of the launcher), the parent is closed KILLED or
    FAILED at exit, so it never stays RUNNING. Hydra turns a callback's exceptions into
    warnings and carries on; a sweep whose parent could not be opened or closed must stop
    instead, so errors leave as SystemExit.
    """

    def __init__(self) -> None:
        self._uri: str | None = None
        self._parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_on_error(lambda: self._start(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        exit_on_error(lambda: self._finish(config))

    def _start(self, config: DictConfig) -> None:
        signals.install()
        # The settings shared by every job are checked before anything is recorded.
        validate(OmegaConf.masked_copy(config, [str(key) for key in config if key != "hydra"]))
        swept = _swept_keys(config)
        _refuse_backends_in_one_process(config, swept)
        _refuse_seeds_the_sweep_cannot_repeat(config, swept)
        _repeat_over_seeds(config)
        sweep_file = Path(config.hydra.sweep.dir) / SWEEP_FILE
        sweep_file.unlink(missing_ok=True)  # An earlier sweep's, in a sweep folder used again.
        if not config.tracking.enabled:
            return  # A dry sweep: no parent run; each job runs as a dry run.
        from src import tracking

        overrides = mask_overrides(list(config.hydra.overrides.task))
        tags = {
            "sweep_role": "parent",
            "sweep_overrides": " ".join(overrides) or "(none)",
            "sweep_fingerprint": _sweep_fingerprint(config, overrides),
            "sweeper": str(config.hydra.sweeper._target_).rsplit(".", 1)[-1],
            "launcher": str(config.hydra.launcher._target_).rsplit(".", 1)[-1],
        }
        name = ("sweep: " + records.run_name_from_overrides(overrides))[:250]
        self._uri, self._parent_run_id, resumed = tracking.open_sweep_run(
            config.tracking.uri, config.tracking.experiment, name, tags, not config.sweep.rerun
        )
        atexit.register(self._close_if_still_open)
        sweep_file.parent.mkdir(parents=True, exist_ok=True)
        handed = {"parent_run_id": self._parent_run_id, "resumed": resumed}
        handed["launcher"] = _this_process()
        sweep_file.write_text(json.dumps(handed))
        verb = "Resuming" if resumed else "Starting"
        print(f"{verb} sweep {self._parent_run_id} ({mask_text(self._uri)})", file=sys.stderr)

    def _finish(self, config: DictConfig) -> None:
        if self._uri is None or self._parent_run_id is None:
            return  # A dry sweep.
        from src import tracking

        parent = self._parent_run_id
        results = _read_job_results(Path(config.hydra.sweep.dir), parent)
        experiment, register = config.tracking.experiment, config.tracking.register is not False
        text = summarize(self._uri, experiment, parent, config.optimized_metric, results, register)
        self._parent_run_id = None  # Closed by summarize; until then _close_if_still_open may.
        counts = ", ".join(f"{n} {s}" for s, n in _counts(results).items())
        hint = tracking.ui_hint(self._uri, experiment)
        print(f"{text}\n\nSweep {parent}: {counts}.\nTo compare its runs, {hint}.")
        failed = _unsuccessful(results)
        if failed:
            names = ", ".join(_describe(r, results) for r in failed)
            how = " or ".join(sorted({result["status"] for result in failed}))  # failed, killed
            print(f"error: {len(failed)} of {len(results)} jobs {how}: {names}", file=sys.stderr)
            sys.exit(1)

    def _close_if_still_open(self) -> None:
        if self._uri is None or self._parent_run_id is None:
            return
        from src import tracking

        status = "KILLED" if signals.received is not None else "FAILED"
        try:
            tracking.end_run(self._uri, self._parent_run_id, status)
        except Exception as error:  # At exit, report rather than raise.
            print(
                f"warning: could not close sweep run {self._parent_run_id}: {one_line(error)}",
                file=sys.stderr,
            )


# The launchers that start every job in a process of its own: only they can sweep over Keras's
# backend, which cannot change inside one process (joblib's workers each run several jobs).
_PROCESS_PER_JOB = ("LocalLauncher", "SlurmLauncher")


def _swept_keys(config: DictConfig) -> set[str]:
    """The keys the command line sweeps over, and those of the sweeper's search space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    searched = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return {o.key_or_group for o in overrides if o.is_sweep_override()} | set(searched)


def _refuse_backends_in_one_process(config: DictConfig, swept: set[str]) -> None:
    """A sweep over ``backend`` needs a launcher that starts a process per job."""
    launcher = str(config.hydra.launcher._target_).rsplit(".", 1)[-1]
    if "backend" in swept and launcher not in _PROCESS_PER_JOB:
        raise ConfigError(
            f"a sweep over backend needs a process per job, and the {launcher} runs several "
            "jobs in one process: add hydra/launcher=local_jobs (or hydra/launcher=slurm)"
        )


def _refuse_seeds_the_sweep_cannot_repeat(config: DictConfig, swept: set[str]) -> None:
    """``sweep.seeds`` repeats the basic sweeper's combinations, and chooses the seeds itself."""
    seeds = config.sweep.seeds
    sweeper = str(config.hydra.sweeper._target_).rsplit(".", 1)[-1]
    if seeds > 1 and sweeper != "BasicSweeper":
        raise ConfigError(
            f"sweep.seeds={seeds} repeats the combinations of a grid sweep, and the {sweeper} "
            "chooses its own trials: leave sweep.seeds out, or sweep trainer.seed in a grid"
        )
    if seeds > 1 and "trainer.seed" in swept:
        raise ConfigError(
            f"sweep.seeds={seeds} and a sweep over trainer.seed both choose the seeds: give one"
        )


def _repeat_over_seeds(config: DictConfig) -> None:
    """``sweep.seeds=N``: every combination with N seeds, ``trainer.seed`` and the next ones, as
    if the command line swept ``trainer.seed=range(...)`` (Hydra's multirun reads the sweep's
    overrides once this callback has run)."""
    seeds, first = config.sweep.seeds, config.trainer.seed
    if seeds > 1:
        with read_write(config.hydra):
            config.hydra.overrides.task.append(f"trainer.seed=range({first},{first + seeds})")


def _counts(results: list[dict[str, Any]]) -> dict[str, int]:
    """How many jobs finished, were reused from an interrupted sweep, were pruned by Optuna,
    failed, were killed."""
    return {status: sum(r["status"] == status for r in results) for status in _STATUSES}


_STATUSES = ("finished", "reused", "pruned", "failed", "killed")


def _unsuccessful(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [result for result in results if result["status"] in ("failed", "killed")]


def summarize(
    uri: str,
    experiment: str,
    parent: str,
    metric: str,
    results: list[dict[str, Any]],
    register: bool = True,
) -> str:
    """Record the jobs' comparison and counts on the parent run, register the best job's model
    (``register``; of a sweep over seeds, the best config's best seed), and close the parent;
    returns the comparison as text."""
    from src import compare, tracking

    failed = _unsuccessful(results)
    runs = tracking.find_runs(uri, experiment, f"tags.`{tracking.PARENT_TAG}` = '{parent}'")
    listing = "; ".join(f"{_describe(r, results)}: {r['error']}" for r in failed)[:5000]
    tags = {"jobs_failed_list": listing or "(none)"}
    metrics = {f"jobs_{status}": float(count) for status, count in _counts(results).items()}
    metrics["jobs_total"] = float(len(results))
    text = "No job recorded a run."
    if not runs.empty:
        rows = compare.table(runs, metric)
        grouped = compare.groups(runs, metric)  # None: no config ran with several seeds
        finished = rows[rows["status"] == "FINISHED"]  # Not a run an interruption cut short.
        if grouped is None:
            text = compare.to_text(rows, metric)
        else:  # The best config's best seed.
            text = compare.groups_to_text(grouped, metric)
            finished = finished[finished["run_id"] == grouped["best_run_id"].iloc[0]]
            tags["best_group"] = grouped["group"].iloc[0]
            metrics[f"best_group_{metric}_mean"] = float(grouped[f"{metric}_mean"].iloc[0])
        best = finished.iloc[0] if len(finished) else None
        if best is not None and best.notna()["sort_value"]:
            tags.update(best_run_id=best.run_id, best_run_name=best.run, best_job=best.sweep_job)
            metrics[f"best_{metric}"] = value = float(best.sort_value)
            which = f"job {best.sweep_job}"
            if grouped is not None:
                which = f"config's best seed, {grouped['best_seed'].iloc[0]} (job {best.sweep_job})"
            model_uri = runs.set_index("run_id").get("tags.model_uri", {}).get(best.run_id)
            if register and isinstance(model_uri, str):
                lower = compare.lower_is_better(metric)
                registered = tracking.register_model(
                    uri, model_uri, experiment, metric, value, lower
                )
                text += f"\n\nBest {which}: {registered}"
            elif register:
                text += f"\n\nBest {which} logged no model: nothing was registered."
        figure = compare.plot_curves(uri, rows, metric, grouped)
        compare.log_to_sweep(uri, parent, rows, metric, figure, grouped)
    tracking.log_to_run(uri, parent, metrics, tags)
    tracking.end_run(uri, parent, "FAILED" if failed else "FINISHED")
    return text


def _describe(result: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """A job by its number and the overrides that set it apart from the other jobs."""
    shared = set.intersection(*(set(r["overrides"]) for r in results))
    own = [override for override in result["overrides"] if override not in shared]
    return f"job {result['job_number']} ({' '.join(own)})"


def exit_on_error(step: Callable[[], None]) -> None:
    try:
        step()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


def _sweep_fingerprint(config: DictConfig, overrides: Sequence[str]) -> str:
    """Two sweeps are the same sweep when they have the same overrides, experiment and sweeper
    (and search space)."""
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
    identity = {"overrides": sorted(overrides), "experiment": config.tracking.experiment}
    text = json.dumps({**identity, "sweeper": sweeper}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_job_results(sweep_dir: Path, parent: str) -> list[dict[str, Any]]:
    """This sweep's job results (the folder may hold an earlier sweep's too)."""
    found = [json.loads(path.read_text()) for path in sweep_dir.glob(f"**/{RESULT_FILE}")]
    ours = [result for result in found if result.get("sweep_id") == parent]
    return sorted(ours, key=lambda result: result["job_number"])
