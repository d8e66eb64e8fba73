"""Python's garbage collector, kept off the objects that a training job sets up.

A full collection walks every object the collector tracks. Once TensorFlow (or JAX), Keras and
MLflow are imported, that is millions of objects that stay until the process ends, and every
full collection walks them all again to free next to nothing: a tracked run of 600 images
spent 2.0 s of CPU in the collector (9 full collections while the libraries were imported, and
one more as the process exited). Paused while a job sets up and kept off what exists when it
is set up, the collector took 0.12 to 0.15 s of that run.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_jobs_set_up = 0  # in this process


@contextmanager
def setting_up() -> Iterator[Callable[[], None]]:
    """Pause the collector while a job sets up (imports Keras and its backend, reads the data,
    builds the model, opens its store); the function yielded, called once it is set up, moves
    every object that exists then out of the collector's sight and resumes it. When the job ends
    the collector gets them back; in a process that runs several jobs (a sweep's in-process or
    joblib launcher) the next job first frees what the last one left (its model), which would
    otherwise be frozen again with the next job's set-up."""
    global _jobs_set_up
    if _jobs_set_up:
        gc.collect()
    _jobs_set_up += 1
    enabled = gc.isenabled()
    gc.disable()

    def set_up() -> None:
        gc.freeze()
        if enabled:
            gc.enable()

    try:
        yield set_up
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


# An exiting process frees nothing worth a last walk over its millions of objects.
atexit.register(gc.freeze)
