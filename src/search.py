"""Hyperparameter search on Optuna (``hparams_search=optuna``): the project's Hydra sweeper,
on Optuna's ask-and-tell interface and Hydra's public Sweeper API, and the pruning of a trial
from inside its job.

The sweeper asks the study for trials, launches them as one batch of jobs through whatever
launcher is configured (in-process, joblib, SLURM), and tells the study each job's result.
Every job is told its trial number (``sweep.trial``) and reaches the study through its storage,
reporting the optimised metric after each epoch; when the pruner says the trial is
unpromising, the job stops, its run ends KILLED with the tag ``optuna.pruned``, and the
sweeper tells the study so. The study lives in an Optuna database (``hydra.sweeper.storage``)
under a name (``hydra.sweeper.study_name``): several sweeps, on several machines, may add
trials to one study at once, and running a sweep again resumes its study.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.errors import PipelineError, TrialPruned, one_line
from src.schema import PROJECT_ROOT, ConfigError
from src.sweep import exit_on_error, handed_to_jobs
from src.uris import mask_text

if TYPE_CHECKING:
    import keras
    import optuna

PRUNED_AT = "pruned_at_epoch"  # The trial's user attribute, set by the job that stopped.


class OptunaSweeper(Sweeper):
    """``hydra/sweeper=optuna`` (conf/hydra/sweeper/optuna.yaml)."""

    def __init__(
        self,
        direction: Literal["minimize", "maximize"] | None,
        study_name: str,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
        params: Mapping[str, str] | None = None,
    ) -> None:
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler, self.pruner = sampler, pruner
        self.params = dict(params or {})

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweep_config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        exit_on_error(lambda: self._sweep(arguments))

    def _sweep(self, arguments: list[str]) -> None:
        import optuna

        from src.compare import lower_is_better

        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + arguments)
        metric = self.sweep_config.optimized_metric
        wanted: Literal["minimize", "maximize"] = self.direction or (
            "minimize" if lower_is_better(metric) else "maximize"
        )
        study = _open_study(self.storage, self.study_name, wanted, self.sampler, self.pruner)
        if study.direction.name.lower() != wanted:  # An existing study keeps its direction.
            raise ConfigError(
                f"study '{self.study_name}' ({mask_text(storage_url(self.storage))}) is set to "
                f"{study.direction.name.lower()}, and {metric} wants {wanted}: "
                "name another (hydra.sweeper.study_name=...)"
            )
        for start in range(0, self.n_trials, self.n_jobs):
            trials: list[optuna.Trial] = []
            try:
                for _ in range(min(self.n_jobs, self.n_trials - start)):
                    trials.append(study.ask(space))
                self._run(study, trials, fixed, start)
            except BaseException:  # Ctrl-C, a launcher's error: no trial stays RUNNING.
                for trial in trials:
                    with contextlib.suppress(Exception):  # Told already.
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
        try:
            self._record(study)
        except Exception as error:  # The sweep's own summary follows; this is an extra.
            print(
                f"warning: Optuna's summary was not recorded ({one_line(error)})", file=sys.stderr
            )

    def _run(
        self, study: optuna.Study, trials: list[optuna.Trial], fixed: list[str], first_job: int
    ) -> None:
        """Launch a batch of trials as jobs and tell the study how each ended."""
        overrides = [
            [*fixed, *(f"{k}={v}" for k, v in t.params.items()), f"sweep.trial={t.number}"]
            for t in trials
        ]
        assert self.launcher is not None  # Set by setup.
        returns = self.launcher.launch(overrides, initial_job_idx=first_job)
        # The jobs wrote into the storage: the study's copy of each trial, read afresh.
        stored = {t.number: t for t in study.get_trials(deepcopy=False)}
        for trial, job in zip(trials, returns, strict=True):
            _tell(study, trial, job, pruned=PRUNED_AT in stored[trial.number].user_attrs)

    def _record(self, study: optuna.Study) -> None:
        """Name the best trial on the sweep's parent run, with Optuna's two plots."""
        from optuna.study import StudyDirection
        from optuna.trial import TrialState

        handed = handed_to_jobs(Path(self.sweep_config.hydra.sweep.dir))
        if handed is None:
            return  # A dry sweep (tracking.enabled=false): no parent run.
        from src import tracking

        parent = handed["parent_run_id"]
        tags = {"optuna.study": study.study_name, "optuna.study_trials": str(len(study.trials))}
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if done:
            # Of trials that tie, the first, as the sweep's table ranks them (Optuna's database
            # storage leaves the order of a tie to the database).
            sign = 1 if study.direction == StudyDirection.MINIMIZE else -1
            scored = [(sign * t.value, t.number, t) for t in done if t.value is not None]
            best = min(scored)[2]
            tags.update(
                {"optuna.best_trial": str(best.number), "optuna.best_value": str(best.value)}
            )
            tags["optuna.best_params"] = json.dumps(best.params)
        uri = tracking.resolve_uri(self.sweep_config.tracking.uri)
        tracking.log_to_run(uri, parent, tags=tags, figures=_plots(study, len(done)))


def storage_url(configured: str | None) -> str:
    """The study's Optuna database: as configured, else ``optuna.db`` beside the project's
    MLflow store (so that every sweep of a study adds to it, and a rerun resumes it)."""
    return configured or f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'optuna.db'}"


def _open_study(
    storage: str | None,
    name: str,
    direction: Literal["minimize", "maximize"],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """The named study in the storage, created if new (here or by a sweep at the same time)."""
    import optuna

    url = storage_url(storage)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.create_study(
            storage=url,
            study_name=name,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    except Exception as error:
        raise PipelineError(
            f"hydra.sweeper.storage={mask_text(url)}: Optuna cannot use it ({one_line(error)})"
        ) from error


def search_space(
    arguments: Sequence[str],
) -> tuple[dict[str, optuna.distributions.BaseDistribution], list[str]]:
    """Hydra's sweep overrides as Optuna distributions (``choice``, ``range`` of ints or
    floats, ``interval`` and ``tag(log, interval(...))`` of floats); the other overrides,
    fixed for every trial. A key given twice takes its last value (the command line's)."""
    chosen: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        chosen[override.get_key_element()] = override
    space = {k: _distribution(o) for k, o in chosen.items() if o.is_sweep_override()}
    fixed = [o.input_line or "" for o in chosen.values() if not o.is_sweep_override()]
    return space, fixed


def _distribution(override: Override) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution as Choice
    from optuna.distributions import FloatDistribution, IntDistribution

    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        return Choice(list(override.sweep_string_iterator()))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())  # Hydra's own reading: stop excluded
        step = value.step
        if all(isinstance(x, int) for x in values) and isinstance(step, int):
            return IntDistribution(values[0], values[-1], step=step)  # type: ignore[arg-type]
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))  # type: ignore[arg-type]
    assert isinstance(value, IntervalSweep)  # Hydra's intervals are of floats.
    if set(value.tags) - {"log"}:
        raise ConfigError(
            f"{override.input_line}: the only tag the Optuna sweeper knows is log; "
            "for whole numbers use range(start, stop, step)"
        )
    low, high = float(value.start), float(value.end)  # type: ignore[arg-type]
    return FloatDistribution(low, high, log="log" in value.tags)


def _tell(study: optuna.Study, trial: optuna.Trial, job: Any, pruned: bool) -> None:
    """The job's result: pruned, a value, or failed (an error, or NaN for a failed job)."""
    from optuna.trial import TrialState

    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        return
    try:
        value = float(job.return_value)
    except Exception:  # The job raised: Hydra re-raises it here.
        value = math.nan
    if math.isnan(value):
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)


def _plots(study: optuna.Study, completed: int) -> dict[str, Any]:
    """Optuna's optimisation history and parameter importances (which need two trials)."""
    from optuna.visualization import matplotlib as plots

    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its Matplotlib plots experimental.
        if completed:
            figures["optuna/optimization_history.png"] = plots.plot_optimization_history(
                study
            ).figure
        if completed >= 2 and study.best_trial.params:
            figures["optuna/param_importances.png"] = plots.plot_param_importances(study).figure
    return figures


def pruning_callback(trial_number: int, metric: str) -> keras.callbacks.Callback:
    """The Keras callback of a trial's job: reports ``metric`` after each epoch, and stops the
    training (raising :class:`TrialPruned` after fit) when the study's pruner says so."""
    import keras
    import optuna

    sweeper = HydraConfig.get().sweeper
    if "study_name" not in sweeper:
        raise ConfigError("sweep.trial is set by the Optuna sweeper (hparams_search=optuna) only")
    storage = optuna.storages.get_storage(storage_url(sweeper.storage))
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    study = optuna.load_study(
        study_name=sweeper.study_name, storage=storage, pruner=instantiate(sweeper.pruner)
    )
    trial = optuna.Trial(
        study, storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
    )

    class Pruning(keras.callbacks.Callback):
        pruned_after: int | None = None

        reporting = True  # Until the study's storage fails: then the trial just trains on.

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            value = (logs or {}).get(metric)
            if value is None or not self.reporting:
                return
            try:
                trial.report(float(value), step=epoch + 1)
                if trial.should_prune():
                    trial.set_user_attr(PRUNED_AT, epoch + 1)
                    self.pruned_after = epoch + 1
                    self.model.stop_training = True
            except Exception as error:  # The storage, locked or away: no pruning.
                self.reporting = False
                print(
                    f"warning: trial {trial_number} cannot report to its study "
                    f"({one_line(error)}); it trains to the end",
                    file=sys.stderr,
                )

        def raise_if_pruned(self) -> None:
            if self.pruned_after is not None:
                raise TrialPruned(trial_number, self.pruned_after)

    return Pruning()
