"""Shared test helpers: ``from tests.support.net import free_port`` (every test folder is a package)."""
