"""Hydra instantiates a sweeper only from a class defined in the ``hydra_plugins`` package:
this registers the project's Optuna sweeper, which lives in src/search.py."""

from src import search


class OptunaSweeper(search.OptunaSweeper):
    """``hydra/sweeper=optuna`` (conf/hydra/sweeper/optuna.yaml)."""
