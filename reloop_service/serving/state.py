"""What the routes of one app share: settings, model holder, archive, metrics, registry access."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from fastapi import Request

from reloop_service.config import Settings
from reloop_service.data.archive import PredictionArchive
from reloop_service.serving.deadline import AdminWorkers
from reloop_service.serving.holder import ModelHolder
from reloop_service.serving.prometheus import ServingMetrics

CycleTrigger = Callable[[date, bool, str], Any]
"""``(period, force, actor) -> run_id``: starts a cycle in the background (the cycle wires it)."""


@dataclass
class ServingState:
    settings: Settings
    holder: ModelHolder
    metrics: ServingMetrics
    archive: PredictionArchive | None = None
    engine: Any = None  # sqlalchemy Engine of the registry
    # Admin database work runs here, never in the threadpool predictions use (set by the lifespan).
    admin_workers: AdminWorkers | None = None


def state_of(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state
