"""CLI commands of the cycle domain (registered on the shared Typer apps in ``reloop_service.clitools``)."""

from __future__ import annotations
