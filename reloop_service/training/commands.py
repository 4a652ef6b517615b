"""CLI commands of the training domain (registered on the shared Typer apps in ``reloop_service.clitools``)."""

from __future__ import annotations
