"""``python -m src.train --help`` in a fraction of a second.

Hydra's own help lists the config groups by asking its config loader about every group of the
search path, Hydra's included, which takes most of a second here. This prints the same help
template (``hydra.help.template`` in conf/train.yaml) with the project's groups read from the
``conf/`` folder and the config composed with the command line's overrides. Other flags
(``--hydra-help``, ``--cfg``, ``-m``) are left to Hydra.
"""

from __future__ import annotations

import string
import sys
from collections.abc import Sequence
from pathlib import Path

from src.schema import PROJECT_ROOT, register_configs

CONFIG_DIR = PROJECT_ROOT / "conf"
HELP_FLAGS = ("--help", "-h")


def wants_help(argv: Sequence[str]) -> bool:
    """True for a plain ``--help`` (with overrides, but no other flag Hydra would handle)."""
    return any(arg in HELP_FLAGS for arg in argv) and not any(
        arg.startswith("-") and arg not in HELP_FLAGS for arg in argv
    )


def config_groups(config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """The project's config groups and their options, from the folders under ``config_dir``."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(path for path in config_dir.rglob("*") if path.is_dir()):
        group = folder.relative_to(config_dir).as_posix()
        if group == "hydra" or group.startswith("hydra/"):
            continue
        options = sorted(path.stem for path in folder.glob("*.yaml"))
        if options:
            groups[group] = options
    return groups


def help_text(overrides: Sequence[str]) -> str:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="train"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    template = string.Template(cfg.hydra.help.template)
    with open_dict(cfg):
        del cfg["hydra"]
    groups = "".join(
        f"{group}: {', '.join(options)}\n" for group, options in config_groups().items()
    )
    return template.safe_substitute(
        APP_CONFIG_GROUPS=groups,
        CONFIG=OmegaConf.to_yaml(cfg),
        FLAGS_HELP="",
        HYDRA_CONFIG_GROUPS="",
    )


def print_help(argv: Sequence[str]) -> int:
    """Print the help for ``argv`` and return the exit code: 1 (with Hydra's message) if an
    override does not compose."""
    try:
        text = help_text([arg for arg in argv if arg not in HELP_FLAGS])
    except Exception as error:
        message = str(error).split("Config search path")[0].strip()
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(text)
    return 0
