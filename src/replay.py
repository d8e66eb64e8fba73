"""Send a run that was kept in the job's folder because its tracking store stopped answering.

    python -m src.replay outputs/2026-11-28/12-00-00/offline-<run id>
    python -m src.replay FOLDER --tracking-uri http://127.0.0.1:5000   # the store moved

The folder is renamed to ``offline-<run id>.sent`` once everything in it has been sent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from src.errors import one_line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.replay", description=__doc__.splitlines()[0]
    )
    parser.add_argument("folder", type=Path, help="an offline-<run id> folder")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: the store the run was started in"
    )
    args = parser.parse_args(argv)
    if not (args.folder / "run.json").is_file():
        print(
            f"error: {args.folder} is not a folder of a run kept offline (no run.json)",
            file=sys.stderr,
        )
        return 2

    from src import tracking

    try:
        tracking.replay(args.folder, args.tracking_uri)
    except tracking.UNREACHABLE as error:
        reason = one_line(error)
        print(f"error: the store did not take the run ({reason}); try again later", file=sys.stderr)
        return 1
    print(f"Sent {args.folder} into its run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
