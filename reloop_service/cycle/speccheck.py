"""Does ``RELOOP_SPEC_PATH`` say what the production model was trained with?

Once a model exists, every cycle trains with the production checkpoint's own feature spec (its
columns and frozen numeric statistics) and the configured file is not read. An operator who edits
the file would see nothing happen; ``spec_mismatch`` finds that case so the CLI can warn, or
refuse under ``--strict-spec``. Numeric statistics are not compared: the file has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reloop_service.config import Settings
from reloop_service.data.spec import FeatureSpec, load_spec


@dataclass(frozen=True)
class SpecMismatch:
    """How the configured spec differs from production's."""

    path: str
    version: int
    differences: tuple[str, ...]

    def message(self) -> str:
        return (
            f"RELOOP_SPEC_PATH={self.path} differs from the spec of production version {self.version} "
            f"({'; '.join(self.differences)}); cycles keep training with production's spec until a "
            "cold start"
        )


def _shape(spec: FeatureSpec) -> dict[str, Any]:
    return {
        "label": spec.label,
        "impression_id": spec.impression_id,
        "event_time": spec.event_time,
        "categorical": {f.name: f.buckets for f in spec.categorical},
        "numeric": {f.name: None for f in spec.numeric},
        "multi": {f.name: (f.buckets, f.max_len) for f in spec.multi},
    }


def spec_differences(configured: FeatureSpec, production: FeatureSpec) -> list[str]:
    """Human-readable differences of columns and encodings (numeric statistics ignored)."""
    a, b = _shape(configured), _shape(production)
    out: list[str] = []
    for key in ("label", "impression_id", "event_time"):
        if a[key] != b[key]:
            out.append(f"{key} {a[key]!r} vs {b[key]!r}")
    for kind in ("categorical", "numeric", "multi"):
        added = sorted(set(a[kind]) - set(b[kind]))
        removed = sorted(set(b[kind]) - set(a[kind]))
        changed = sorted(k for k in set(a[kind]) & set(b[kind]) if a[kind][k] != b[kind][k])
        if added:
            out.append(f"{kind} fields only in the file: {', '.join(added)}")
        if removed:
            out.append(f"{kind} fields only in production: {', '.join(removed)}")
        if changed:
            out.append(f"{kind} fields encoded differently: {', '.join(changed)}")
    return out


def spec_mismatch(settings: Settings) -> SpecMismatch | None:
    """``None`` when no spec file is configured, there is no production model, or they agree."""
    if settings.spec_path is None:
        return None
    configured = load_spec(settings.spec_path)
    from reloop_service.registry import store
    from reloop_service.registry.db import session_scope
    from reloop_service.registry.service import artifact_store, open_registry
    from reloop_service.training.checkpoint import checkpoint_from_bytes

    engine = open_registry(settings)
    try:
        with session_scope(engine, readonly=True) as session:
            production = store.get_production(session, model_name=settings.model_name)
    finally:
        engine.dispose()
    if production is None:
        return None
    checkpoint = checkpoint_from_bytes(artifact_store(settings).get(production.version.artifact))
    differences = spec_differences(configured, checkpoint.feature_spec())
    if not differences:
        return None
    return SpecMismatch(
        path=str(settings.spec_path), version=production.version.version, differences=tuple(differences)
    )
