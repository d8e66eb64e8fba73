"""Where Keras trains: its backend (TensorFlow or JAX), chosen before Keras is imported, and the
device it trains on (a GPU or the CPU), checked and described for the run's records. JAX keeps
its compiled computations in a cache on disk (jax_cache_dir).

Keras reads its backend once, when it is first imported (``KERAS_BACKEND``): a process trains
with one backend only. The import is quiet: TensorFlow's start-up lines (CUDA stubs, oneDNN
notes) are not shown unless ``TF_CPP_MIN_LOG_LEVEL`` is set below 2, TensorFlow's own setting;
what they would have said that matters, that a machine's NVIDIA GPU goes unused, is said here
in one line.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

from src.errors import PipelineError

OFFERED = ("tensorflow", "jax")
DEVICES = ("auto", "cpu", "gpu")
# The Python packages of each backend, as a logged model's requirements.
PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib")}
INSTALL_GPU = (
    "install GPU support with `make install GPU=1 BACKEND={backend}` (it needs the NVIDIA "
    "driver on the machine)"
)
# What keeps each backend off the GPUs, set before it is imported (trainer.device=cpu).
_CPU_ONLY = {"tensorflow": ("CUDA_VISIBLE_DEVICES", "-1"), "jax": ("JAX_PLATFORMS", "cpu")}
# JAX keeps what it compiles on disk (in $XDG_CACHE_HOME/jax, else ~/.cache/jax), so that a run
# compiles nothing an earlier run compiled: every computation, however short its compilation
# (JAX's default keeps those of a second or more: the training step, not the many small ones
# that took 1.3 s more of a run). The user's own JAX_COMPILATION_CACHE_DIR and
# JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS win.
JAX_MIN_COMPILE_SECONDS = "0"


class BackendError(PipelineError):
    """A backend or device that cannot be had as configured."""


def check_environment() -> None:
    """Refuse a ``KERAS_BACKEND`` the project does not offer, before Hydra composes a config
    (an unset ``backend`` takes its default from that variable)."""
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen is not None and chosen not in OFFERED:
        raise BackendError(
            f"KERAS_BACKEND={chosen} is not offered: the project trains with "
            f"{' or '.join(OFFERED)}; unset KERAS_BACKEND or set it to one of them"
        )


def import_keras(backend: str, device: str) -> None:
    """Import Keras on ``backend``, kept off the GPUs if ``device`` is ``cpu``. Raises
    BackendError if this process already imported Keras on another backend."""
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise BackendError(
                f"backend={backend}: this process already trains with "
                f"{keras.backend.backend()}, and Keras's backend cannot change inside one "
                "process; sweep over backends with hydra/launcher=local_jobs (or slurm)"
            )
        return
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax":
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", jax_cache_dir())
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", JAX_MIN_COMPILE_SECONDS)
    if device == "cpu":
        variable, value = _CPU_ONLY[backend]
        os.environ[variable] = value
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_start_up():
        import keras


def jax_cache_dir() -> str:
    """Where JAX keeps its compiled computations unless JAX_COMPILATION_CACHE_DIR says."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "jax")


@contextlib.contextmanager
def _quiet_start_up() -> Iterator[None]:
    """Discard what is printed to the standard error while the backend loads (before its log
    is set up, out of reach of any setting), unless TensorFlow's INFO or WARNING lines are
    wanted. Python's warnings after the import still show."""
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] < "2":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def versions() -> dict[str, str]:
    """Keras's backend and the versions of Keras and of that backend, as the run's params."""
    import keras

    backend = keras.backend.backend()
    return {
        "keras.backend": backend,
        "keras.version": keras.__version__,
        "keras.backend_version": importlib.metadata.version(backend),
    }


def training_device(device: str) -> str:
    """The device Keras trains on, as the run's ``device`` tag: ``GPU:0 NVIDIA H200, 143771
    MiB`` or ``CPU: AMD EPYC 7B13, 2 cores``. ``device=gpu`` with no GPU the backend can use
    raises BackendError; ``auto`` on a machine whose NVIDIA GPU the backend cannot use warns."""
    import keras

    backend = keras.backend.backend()
    gpus = _gpu_names(backend)
    if gpus:
        return f"GPU:0 {gpus[0]}{_gpu_memory()}"
    if device == "gpu":
        raise BackendError(
            f"trainer.device=gpu, but {backend} finds no GPU it can use: "
            f"{INSTALL_GPU.format(backend=backend)}, or set trainer.device=auto"
        )
    if device == "auto" and machine_has_nvidia_gpu():
        print(
            f"warning: this machine has an NVIDIA GPU, but {backend} cannot use it and trains "
            f"on the CPU: {INSTALL_GPU.format(backend=backend)}",
            file=sys.stderr,
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU: {_cpu_model()}, {cores} cores"


def _gpu_names(backend: str) -> list[str]:
    """The names of the GPUs the backend trains on, in its order (none: it trains on the CPU)."""
    if backend == "jax":
        import jax

        return [device.device_kind for device in jax.devices() if device.platform == "gpu"]
    import tensorflow as tf

    return [
        tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def _gpu_memory() -> str:
    """``, 143771 MiB``: the first visible GPU's memory, from NVIDIA's library (installed with
    GPU support); empty where that library is missing."""
    try:
        import pynvml
    except ImportError:
        return ""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)
        return f", {pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20} MiB"
    except pynvml.NVMLError:
        return ""


def machine_has_nvidia_gpu() -> bool:
    """Whether the NVIDIA driver shows a GPU on this machine, whatever the backend can use."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()
