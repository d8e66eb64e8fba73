"""Recording in the background: a second process that holds MLflow, so that training never
waits for it.

Importing MLflow, opening the store and logging the model cost several seconds of CPU. Done in
the training process they add up to seconds of wall time per run; done here they overlap with
what the training process does on one core anyway (importing TensorFlow, reading the data) and
with the test evaluation. The training process sends each record through a socket as it is made
and waits only twice: until the run is open (before training starts, so that a store that
refuses the run stops the job at once) and until it is closed (so that a finished command has
recorded everything).

If the recording process itself dies (killed, out of memory), the training process stops with
an error at its next record and closes the run FAILED itself, loading MLflow for that, so that
no run stays RUNNING; a sweep likewise closes its parent run itself.

The recording process is started on first use and serves every run of the training process (a
sweep's jobs in one process share it, and it also opens and summarises the sweep's parent run,
see :mod:`src.sweep`); it ends with the training process. If the training
process dies without closing its run, the recording process closes it KILLED. Records are
handled by :class:`src.tracking.Run`, as when recording in-process (``tracking.background=
false``): same store, same offline journal when a server goes away.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import multiprocessing.connection
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from src.records import Outcome, SavedKerasModel
from src.schema import PROJECT_ROOT
from src.store import TrackingError, resolve_uri

if TYPE_CHECKING:
    import keras

    from src.records import DatasetRecord


class RecorderStopped(TrackingError):
    """The recording process is gone (killed, out of memory, crashed)."""


class Answer:
    """An answer the recording process owes to a request already sent. Received once; a wait
    cut short by Ctrl-C leaves it owed, so that the next wait takes it up and a later request's
    answer is never mistaken for it."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._received = False
        self._value: Any = None
        self._error: BaseException | None = None

    def get(self) -> Any:
        """The answer, waiting for it if needed; an error answer is raised (each time)."""
        if not self._received:
            try:
                self._value = self._recorder.receive()
            except KeyboardInterrupt:
                raise
            except BaseException as error:
                self._error = error
            self._received = True
        if self._error is not None:
            raise self._error
        return self._value


class RemoteRun:
    """The training process's handle on a run that the recording process holds. Has the
    methods of :class:`src.tracking.Run` that training uses; each sends one message."""

    records_artifacts = True

    def __init__(
        self, recorder: Recorder, opened: Answer, uri: str | None, offline_dir: Path
    ) -> None:
        self._recorder = recorder
        self._opened = opened
        self._uri = uri
        self._offline_dir = offline_dir
        self.run_id: str | None = None
        self.model_uri: str | None = None
        self.journal: str | None = None
        self._model_folder: Path | None = None  # Where the model is saved for the recorder.

    def wait_open(self) -> None:
        """Wait until the run is open (raises TrackingError if the store refused it). Every
        record waits for this, so no training starts on a run that does not exist."""
        self.run_id = self._opened.get()

    def _call(self, method: str, *args: Any) -> None:
        self.wait_open()
        self._recorder.send(("call", method, args))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params", dict(params))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._call("set_tags", dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self._call("log_metrics", {name: float(value) for name, value in metrics.items()}, step)

    def log_dataset(self, record: DatasetRecord) -> None:
        self._call("log_dataset", record)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", text, artifact_file)

    def log_evaluation(self, matrix: np.ndarray, history: Mapping[str, list[float]]) -> None:
        self._call("log_evaluation", matrix, dict(history))

    def log_model(self, model: keras.Model) -> None:
        """Save the model to a file (a fraction of a second) and have it logged from there while
        the test set is evaluated; its URI is known once the run is closed."""
        self.wait_open()
        self._model_folder = Path(tempfile.mkdtemp(prefix="mnist-model-"))
        path = self._model_folder / "model.keras"
        model.save(path)
        saved = SavedKerasModel(str(path), tuple(model.input_shape), tuple(model.output_shape))
        self._recorder.send(("model", saved))

    def close(self, outcome: Outcome) -> None:
        try:
            try:
                self.wait_open()
            except TrackingError:
                return  # The run was never opened: nothing to close.
            try:
                reply = self._recorder.request(("close", outcome))
            except RecorderStopped as stopped:
                self._close_here(outcome, stopped)
                raise
        finally:
            if self._model_folder is not None:
                shutil.rmtree(self._model_folder, ignore_errors=True)
        self.model_uri, self.journal, problem = reply
        if problem is not None and outcome.status == "FINISHED":
            raise TrackingError(f"recording run {self.run_id} failed: {problem}")

    def _close_here(self, outcome: Outcome, stopped: RecorderStopped) -> None:
        """Close the run from this process, the recording process being gone: FAILED (or
        KILLED if the job was interrupted), with why as its ``error`` tag."""
        from src import tracking

        assert self.run_id is not None
        if outcome.status == "FINISHED":
            outcome = Outcome("FAILED", error=f"recording failed: {stopped}")
        try:
            tracking.Run(self.run_id, resolve_uri(self._uri), self._offline_dir).close(outcome)
        except Exception as error:  # The recording process's error is the one to report.
            print(f"warning: could not close run {self.run_id}: {error}", file=sys.stderr)
        else:
            print(
                f"warning: the recording process is gone; run {self.run_id} was closed "
                f"{outcome.status} from the training process",
                file=sys.stderr,
            )


class Recorder:
    """The training process's side of the connection to the recording process."""

    _instance: Recorder | None = None

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        # The project's root on the path, whatever the working directory (which stays the
        # same, so that relative paths mean the same in both processes).
        path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "src.recorder", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env={**os.environ, "PYTHONPATH": path},
        )
        theirs.close()
        self._connection = multiprocessing.connection.Connection(ours.detach())
        self._lock = threading.Lock()

    @classmethod
    def get(cls) -> Recorder:
        """The process's recorder, started now if it is not running."""
        if cls._instance is None or cls._instance._process.poll() is not None:
            cls._instance = cls()
            atexit.register(cls._instance.stop)
        return cls._instance

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            try:
                self._connection.send(message)
            except (OSError, EOFError) as error:
                raise self._died() from error

    def request(self, message: tuple[Any, ...]) -> Any:
        """Send ``message`` and wait for the answer."""
        return self.ask(message).get()

    def ask(self, message: tuple[Any, ...]) -> Answer:
        """Send ``message``; its answer is waited for when it is needed."""
        self.send(message)
        return Answer(self)

    def receive(self) -> Any:
        """The answer to the last request; an error in the recording process is raised here
        as a TrackingError."""
        try:
            kind, value = self._connection.recv()
        except (OSError, EOFError) as error:
            raise self._died() from error
        if kind == "error":
            raise TrackingError(value)
        return value

    def _died(self) -> RecorderStopped:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)
        code = self._process.returncode
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"stopped (exit code {code}); its error is printed above"
        return RecorderStopped(
            f"the recording process {how}. To record in the training process instead: "
            "tracking.background=false"
        )

    def stop(self) -> None:
        """Let the recording process finish what it was sent, then end it."""
        if self._process.poll() is None:
            with self._lock, contextlib.suppress(OSError):
                self._connection.send(("stop",))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=60)
        self._connection.close()

    def start_run(
        self,
        uri: str | None,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        offline_dir: Path,
        logs_model: bool = True,
    ) -> RunContext:
        """As :func:`src.tracking.start_run`, in the recording process. The run is asked for
        now; the first record waits until it is open. ``logs_model``: the run will log a
        model (Keras is loaded for it in advance)."""
        opened = self.ask(
            ("open", uri, experiment, run_name, dict(tags), str(offline_dir), logs_model)
        )
        return RunContext(RemoteRun(self, opened, uri, offline_dir))


class RunContext:
    """Closes the run with the status the job earned, as :func:`src.tracking.start_run`."""

    def __init__(self, run: RemoteRun) -> None:
        self._run = run

    def __enter__(self) -> RemoteRun:
        # Not waiting for the run here: the training process goes on loading TensorFlow.
        return self._run

    def __exit__(self, kind: Any, error: BaseException | None, trace: Any) -> None:
        self._run.close(Outcome.of(error))


def _warm_up(model: bool) -> None:
    """Load what drawing figures and, if ``model``, logging a model need, before they are
    needed (while the training process trains)."""
    from src import report

    if model:
        import keras  # noqa: F401
        import mlflow.keras  # noqa: F401

        # MLflow maps installed packages to modules the first time it checks a model's
        # requirements (a second or more); done now, not when the model is logged.
        with contextlib.suppress(Exception):
            from mlflow.utils import requirements_utils

            requirements_utils._init_packages_to_modules_map()
    # The first figure drawn loads fonts: draw one now.
    figure = report.plot_confusion_matrix(np.zeros((10, 10), dtype=np.int64))
    figure.savefig(io.BytesIO(), format="png")
    report.close(figure)


# What a sweep's launching process asks of the recording process (see src.sweep).
_SWEEP_STEPS = ("open_parent", "summarize", "close_parent")


def _sweep_step(step: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    """Run one of a sweep's MLflow steps; the answer, or the error as one line."""
    from src import sweep
    from src.errors import PipelineError

    if step not in _SWEEP_STEPS:
        return ("error", f"unknown sweep step {step!r}")
    try:
        return ("ok", getattr(sweep, step)(*args))
    except Exception as error:
        text = (
            str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"
        )
        return ("error", text.splitlines()[0] if text else type(error).__name__)


def serve(connection: multiprocessing.connection.Connection) -> None:
    """The recording process: open, fill and close runs as the training process says."""
    # Ctrl-C reaches the whole process group; the training process decides how its run ends,
    # and this process ends when the training process is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from src import tracking

    warm_up: threading.Thread | None = None
    model_warmed = False  # Whether a warm-up for logging models has been started.
    run: tracking.Run | None = None
    problem: str | None = None
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            # The training process is gone without closing its run.
            if run is not None:
                run.close(Outcome("KILLED", error="the training process ended unexpectedly"))
            return
        kind = message[0]
        try:
            if kind == "open":
                uri, experiment, run_name, tags, offline_dir, logs_model = message[1:]
                try:
                    run = tracking.open_run(uri, experiment, run_name, tags, Path(offline_dir))
                except Exception as error:
                    connection.send(("error", str(error).splitlines()[0] if str(error) else ""))
                    continue
                problem = None
                connection.send(("ok", run.run_id))
                if warm_up is None or (logs_model and not model_warmed):
                    if warm_up is not None:
                        warm_up.join()
                    warm_up = threading.Thread(target=_warm_up, args=(logs_model,))
                    warm_up.start()
                    model_warmed = logs_model
            elif kind == "call" and run is not None:
                _, method, args = message
                getattr(run, method)(*args)
            elif kind == "model" and run is not None:
                if warm_up is not None:
                    warm_up.join()
                run.log_model(message[1])
            elif kind == "sweep":
                _, step, args = message
                connection.send(_sweep_step(step, args))
            elif kind == "close" and run is None:
                connection.send(("ok", (None, None, "no run was open")))
            elif kind == "close" and run is not None:
                outcome: Outcome = message[1]
                if problem is not None and outcome.status == "FINISHED":
                    outcome = Outcome("FAILED", error=f"recording failed: {problem}")
                run.close(outcome)
                connection.send(("ok", (run.model_uri, run.journal and str(run.journal), problem)))
                run = None
            elif kind == "stop":
                # Everything is in the store: skip the interpreter's slow teardown.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
        except Exception as error:  # One record that failed does not lose the others.
            if problem is None:
                problem = f"{type(error).__name__}: {error}".splitlines()[0]
            print(f"error: recording ({kind}) failed: {problem}", file=sys.stderr)
            if kind == "close":
                connection.send(("ok", (None, None, problem)))
                run = None


if __name__ == "__main__":
    serve(multiprocessing.connection.Connection(int(sys.argv[1])))
