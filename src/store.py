"""The tracking store as seen before MLflow is imported: which URI, whether it can be used,
and how to look at it. ``python -m src.train`` checks the store here, in a few milliseconds,
before any data is read; MLflow itself is loaded by :mod:`src.tracking` (in the recording
process, see :mod:`src.recorder`)."""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has none: a new store's creation is then not serialised.
    fcntl = None  # type: ignore[assignment]

from src.errors import PipelineError
from src.schema import PROJECT_ROOT
from src.uris import mask_uri, without_credentials

DEFAULT_STORE_DIR = PROJECT_ROOT / "mlruns"

# A lost server should be reported in seconds, not after minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# MLflow prints the run's URL (credentials included) when a run ends; the summary says it.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
_PROBE_TIMEOUT_S = 5


class TrackingError(PipelineError, RuntimeError):
    """The tracking store cannot be used as configured."""


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: the project's SQLite store in ``mlruns/`` when none is set."""
    if uri is None:
        return f"sqlite:///{DEFAULT_STORE_DIR / 'mlflow.db'}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def ensure_sqlite_folder(uri: str) -> None:
    """Create the SQLite database's folder if needed; refuse one that cannot be written."""
    database = sqlite_path(uri)
    if database is None:
        return
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(database.parent, os.W_OK | os.X_OK):
            raise PermissionError("permission denied")
    except OSError as error:
        reason = error.strerror or str(error)
        raise TrackingError(
            f"tracking.uri={uri}: {database.parent} cannot be written ({reason}); "
            "choose a folder you can write"
        ) from error


@contextmanager
def creating(uri: str) -> Iterator[None]:
    """Serialise the creation of a new SQLite store between this project's processes.

    MLflow creates a new database's schema in many transactions; processes that do it at the
    same moment fail (4 processes opening one new store: 3 failed) and can leave it broken.
    Whoever finds the database missing creates it (the body of this ``with``) holding an
    exclusive lock on its folder; the others wait for that lock, see the database, and open it
    without holding the lock, so opening an existing store is never serialised."""
    database = sqlite_path(uri)
    folder = None
    if database is not None and fcntl is not None:
        # A folder that can be written but not read is used without the lock.
        with contextlib.suppress(OSError):
            folder = os.open(database.parent, os.O_RDONLY)
    if database is None or folder is None:
        yield
        return
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if not database.exists() or database.stat().st_size == 0:
            yield
            return
    finally:
        os.close(folder)  # Releases the lock.
    yield


def check_store(uri: str | None) -> None:
    """Fail fast, with one line, if the store cannot be used: a SQLite folder that cannot be
    written, or a server that does not answer (checked within a few seconds)."""
    tracking_uri = resolve_uri(uri)
    if sqlite_path(tracking_uri) is not None:
        ensure_sqlite_folder(tracking_uri)
        return
    if tracking_uri.startswith(("http://", "https://")):
        probe = (
            without_credentials(tracking_uri).rstrip("/")
            + "/api/2.0/mlflow/experiments/search?max_results=1"
        )
        try:
            with urllib.request.urlopen(probe, timeout=_PROBE_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # It answered: authentication and the like are MLflow's to report.
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise TrackingError(
                f"tracking.uri={mask_uri(tracking_uri)}: no tracking server answers there "
                f"({reason}); start it (mlflow server --host 127.0.0.1 --port PORT) or fix the URI"
            ) from error


def ui_hint(uri: str) -> str:
    """How to look at the runs of this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {without_credentials(uri)} in a browser"
    if uri == resolve_uri(None):
        return "run `make ui` and open http://127.0.0.1:5000"
    return (
        f"run `mlflow ui --backend-store-uri {uri} --host 127.0.0.1` and open http://127.0.0.1:5000"
    )
