"""Stop a run whose loss is no longer a finite number, at once, instead of training on NaN."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from src.errors import PipelineError

if TYPE_CHECKING:
    import keras


class DivergedError(PipelineError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, batch: int, loss: float) -> None:
        super().__init__(
            f"training diverged: the loss became {loss} at epoch {epoch}, batch {batch}; "
            "lower optimizer.learning_rate or add optimizer.clipnorm"
        )
        # Tags for the run, which ends FAILED.
        self.run_tags = {"diverged": "true", "diverged_epoch": str(epoch)}


def divergence_guard() -> keras.callbacks.Callback:
    """A Keras callback that raises :class:`DivergedError` after the first batch whose loss is
    not finite (epochs counted from 1)."""
    import keras

    class DivergenceGuard(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._epoch = 1

        def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            self._epoch = epoch + 1

        def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
            loss = float((logs or {}).get("loss", 0.0))
            if not math.isfinite(loss):
                raise DivergedError(self._epoch, batch + 1, loss)

    return DivergenceGuard()
