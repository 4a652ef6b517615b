"""The ``reloop`` command: every domain's commands on one Typer app."""

from __future__ import annotations

# Importing each domain's commands module registers its commands on the shared apps.
from reloop_service.clitools import app
from reloop_service.cycle import commands as _cycle_commands  # noqa: F401
from reloop_service.data import commands as _data_commands  # noqa: F401
from reloop_service.registry import commands as _registry_commands  # noqa: F401
from reloop_service.replay import commands as _replay_commands  # noqa: F401
from reloop_service.serving import commands as _serving_commands  # noqa: F401
from reloop_service.training import commands as _training_commands  # noqa: F401

__all__ = ["app"]

if __name__ == "__main__":
    app()
