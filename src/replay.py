"""Upload the records a run could not send while its tracking server was down.

    python -m src.replay outputs/2026-11-28/12-00-00/offline-<run id>.jsonl
    python -m src.replay JOURNAL --tracking-uri http://127.0.0.1:5000

The journal is renamed to ``.uploaded`` once everything in it has been sent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.replay", description=__doc__.splitlines()[0]
    )
    parser.add_argument("journal", type=Path, help="an offline-<run id>.jsonl file")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: the store the run was started in"
    )
    args = parser.parse_args(argv)
    if not args.journal.is_file():
        print(f"error: {args.journal} is not a file", file=sys.stderr)
        return 2

    from src import tracking

    try:
        run_id, status = tracking.replay_journal(args.journal, args.tracking_uri)
    except tracking.TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except tracking.MlflowException as error:
        print(
            f"error: the store did not accept the records ({error.message}); try again later",
            file=sys.stderr,
        )
        return 1
    print(f"Uploaded {args.journal} into run {run_id}, now {status}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
