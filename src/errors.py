"""The project's errors for problems a user can fix: reported as one line, never a traceback."""

from src.uris import mask_text


def one_line(error: BaseException, limit: int = 300) -> str:
    """Any error's message as it may be shown in a one-line error: its first line (its type's
    name if it has no message), at most ``limit`` characters, passwords masked."""
    message = str(getattr(error, "message", error)) or type(error).__name__  # MLflow's .message
    return mask_text(message).partition("\n")[0][:limit]  # Masked whole, then cut.


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
