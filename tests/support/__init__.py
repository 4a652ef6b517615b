"""Shared test helpers (importable as ``support`` from every test folder: pytest puts tests/ on sys.path)."""
