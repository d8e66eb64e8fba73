"""Learning-rate schedules, chosen by the ``schedule`` config group. Keras only."""

from __future__ import annotations

import keras


def constant(learning_rate: float, total_steps: int) -> float:
    """The optimizer's own learning rate, unchanged (the original program)."""
    return learning_rate


def warmup_cosine(
    learning_rate: float, total_steps: int, warmup_fraction: float, start_fraction: float
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Rise linearly from ``start_fraction * learning_rate`` to ``learning_rate`` over the first
    ``warmup_fraction`` of the steps, then follow a cosine down to 0: large steps early, fine
    steps at the end, for a short run."""
    warmup_steps = max(1, int(total_steps * warmup_fraction))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * start_fraction,
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
        alpha=0.0,
    )
