"""Garbage collection: artifacts no version references, and work folders of attempts that are not running.

``sweep(settings=..., engine=...)`` is what ``reloop gc`` runs, and ``sweep_quietly`` the cycle's pre-run
sweep (never fails a cycle): the artifact part lives with the artifacts
(``registry.artifacts.sweep_artifacts``), the work-folder part here. A work folder
``<data_dir>/work/cycle-<date>-run<id>-a<attempt>-*`` belongs to one attempt of one run; it is removed
when that run is not running, when a later attempt took it over, or when its heartbeat is older than
``stale_after_s`` (its process died: a kill -9 skips the ``finally`` that removes it). Folders of a live
attempt, of another process included, stay.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from reloop_service.config import Settings
from reloop_service.registry import cycle_runs
from reloop_service.registry.artifacts import ArtifactSweep, sweep_artifacts
from reloop_service.registry.db import session_scope
from reloop_service.registry.errors import NotFoundError
from reloop_service.registry.events import CycleStatus
from reloop_service.registry.service import artifact_store, open_registry

log = logging.getLogger(__name__)
_WORKDIR = re.compile(r"^cycle-(\d{4}-\d{2}-\d{2}(?:T\d{2}(?:\d{2})?)?)-run(\d+)-a(\d+)-")


@dataclass(frozen=True)
class SweepReport:
    """What one sweep removed (or would remove, on a dry run)."""

    artifacts: ArtifactSweep
    workdirs: tuple[str, ...]
    kept_workdirs: int

    @property
    def removed_anything(self) -> bool:
        return bool(self.artifacts.removed or self.workdirs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifacts": self.artifacts.to_dict(),
            "workdirs": {"removed": list(self.workdirs), "kept": self.kept_workdirs},
        }


def stale_workdirs(
    settings: Settings, engine: Engine, *, now: datetime | None = None
) -> tuple[list[Path], int]:
    """Work folders whose attempt is not running (see the module docstring), and how many stay."""
    base = settings.data_dir / "work"
    if not base.is_dir():
        return [], 0
    now = now or datetime.now(UTC)
    stale: list[Path] = []
    kept = 0
    with session_scope(engine, readonly=True) as session:
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            match = _WORKDIR.match(folder.name)
            if match is None:
                kept += 1  # not ours: never touched
                continue
            run_id, attempt = int(match.group(2)), int(match.group(3))
            try:
                run = cycle_runs.run_by_id(session, run_id=run_id)  # of any model: folders carry no name
            except NotFoundError:
                stale.append(folder)
                continue
            live = (
                run.status == CycleStatus.RUNNING
                and run.attempt == attempt
                and now - run.heartbeat_at < timedelta(seconds=settings.stale_after_s)
            )
            if live:
                kept += 1
            else:
                stale.append(folder)
    return stale, kept


def sweep(*, settings: Settings, engine: Engine | None = None, dry_run: bool = False) -> SweepReport:
    """Remove unreferenced artifacts older than ``gc_grace_s`` and stale work folders; report them."""
    own = engine is None
    eng = engine if engine is not None else open_registry(settings)
    try:
        artifacts = sweep_artifacts(
            eng, artifact_store(settings), grace_s=settings.gc_grace_s, dry_run=dry_run
        )
        folders, kept = stale_workdirs(settings, eng)
    finally:
        if own:
            eng.dispose()
    if not dry_run:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    report = SweepReport(artifacts=artifacts, workdirs=tuple(str(f) for f in folders), kept_workdirs=kept)
    if report.removed_anything:
        log.info(
            "gc%s: %d unreferenced artifact(s) (%d bytes) and %d stale work folder(s): %s",
            " (dry run)" if dry_run else "",
            len(artifacts.removed),
            artifacts.removed_bytes,
            len(folders),
            ", ".join([*artifacts.removed, *report.workdirs]),
        )
    return report


def sweep_quietly(*, settings: Settings, engine: Engine) -> SweepReport | None:
    """``sweep`` for the start of a cycle: a failure is logged, never fails the cycle."""
    try:
        return sweep(settings=settings, engine=engine)
    except Exception as exc:
        log.warning("gc sweep failed (the cycle goes on): %s", exc)
        return None
