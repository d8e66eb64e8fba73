"""Quiet by default on a CPU machine: TensorFlow's start-up lines (CUDA stubs, oneDNN notes,
absl's preamble) are not shown. ``TF_CPP_MIN_LOG_LEVEL=0``, TensorFlow's own setting, brings
them back; MLflow's INFO lines come back with ``MLFLOW_LOGGING_LEVEL=INFO`` (src/tracking.py)."""

from __future__ import annotations

import os
import sys
from types import ModuleType


def import_keras() -> ModuleType:
    """Import Keras and TensorFlow. Unless ``TF_CPP_MIN_LOG_LEVEL`` is set, TensorFlow logs only
    fatal errors; unless it is set below 2 (TensorFlow's INFO and WARNING lines wanted), what
    TensorFlow prints while loading, before its log is set up and out of reach of any setting,
    is discarded. Python's warnings after the import still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] < "2" or "keras" in sys.modules:
        import keras

        return keras
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        import keras
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return keras
