"""Helpers shared by the data-domain tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

DAY = date(2024, 3, 1)


def good_rows(n: int, start: int = 0) -> dict[str, list[Any]]:
    """Column dict of ``n`` valid rows with ids ``i<start>..``."""
    return {
        "impression_id": [f"i{start + k}" for k in range(n)],
        "label": [k % 2 for k in range(n)],
        "event_time": [f"2024-03-01T{(k % 24):02d}:00:00Z" for k in range(n)],
        "user_id": [k % 7 for k in range(n)],
        "device": [("ios", "web", None)[k % 3] for k in range(n)],
        "price": [float(k) for k in range(n)],
        "tags": [[f"t{k % 5}", "x"] if k % 4 else None for k in range(n)],
    }


WriteDay = Callable[..., Path]
