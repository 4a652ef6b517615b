"""CLI commands of the training domain (registered on the shared Typer apps in ``clitools``)."""

from __future__ import annotations
