"""The project's errors for problems a user can fix: reported as one line, never a traceback."""


class PipelineError(Exception):
    """Bad input (a config value, a data file, a tracking URI): the message names what is
    wrong and how to fix it."""


class TrackingError(PipelineError, RuntimeError):
    """The tracking store cannot be used as configured."""


class DivergedError(PipelineError):
    """The training loss became NaN or infinite; the run ends FAILED with ``run_tags``."""

    def __init__(self, epoch: int) -> None:
        super().__init__(
            f"training diverged: the loss stopped being a finite number in epoch {epoch}; "
            "lower optimizer.learning_rate or add optimizer.clipnorm"
        )
        self.run_tags = {"diverged": "true", "diverged_epoch": str(epoch)}


class TrialPruned(PipelineError):
    """Optuna's pruner stopped this trial (see src.search): its run ends KILLED, tagged."""

    run_status = "KILLED"

    def __init__(self, trial: int, epoch: int) -> None:
        super().__init__(f"trial {trial} pruned after epoch {epoch}: unpromising")
        self.run_tags = {"optuna.pruned": f"after epoch {epoch}"}
