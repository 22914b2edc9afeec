"""What every ``weir`` command shares: the ``--config`` option, settings, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from weir.core.config import WeirSettings, load_settings

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "ConfigOption", "settings_from"]

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (else WEIR_CONFIG).")
]

EXIT_FAILURE = 1
"""The command ran and could not do what it was asked (broker down, nothing found, ...)."""
EXIT_USAGE = 2
"""The command was given something wrong: arguments, settings, a pipeline or rules file."""


def settings_from(config: Path | None, **overrides: Any) -> WeirSettings:
    """The settings of one command: ``config`` (else ``WEIR_CONFIG``), the environment, and
    the options given (``None``: not given)."""
    return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
