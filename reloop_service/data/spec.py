"""Declarative feature spec: which columns feed the model and how, saved inside every checkpoint.

The spec is the single description shared by ingestion (required columns), transforms (hash buckets,
numeric statistics), training (table sizes) and serving (accepted feature keys). Numeric statistics are
fitted once on the first training and then frozen, so a feature keeps its meaning across versions.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "CategoricalField",
    "FeatureSpec",
    "MultiCategoricalField",
    "NumericField",
    "SpecError",
    "default_spec",
    "load_spec",
]

SPEC_FORMAT_VERSION = 1


class SpecError(ValueError):
    """A feature spec is invalid; the message names the file (when there is one) and the field."""


@dataclass(frozen=True)
class CategoricalField:
    """One id-like column hashed into ``buckets`` rows; bucket 0 is reserved for missing or null."""

    name: str
    buckets: int


@dataclass(frozen=True)
class NumericField:
    """One numeric column: ``log1p(max(x, 0))`` then ``(x - mean) / std``; stats are frozen once fitted."""

    name: str
    mean: float | None = None
    std: float | None = None

    @property
    def is_fitted(self) -> bool:
        return self.mean is not None and self.std is not None


@dataclass(frozen=True)
class MultiCategoricalField:
    """A list-of-strings column: each value hashed like a categorical, padded/truncated to ``max_len``."""

    name: str
    buckets: int
    max_len: int


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns are label, impression id and event time, and how each feature is encoded."""

    label: str
    impression_id: str
    event_time: str
    categorical: tuple[CategoricalField, ...] = ()
    numeric: tuple[NumericField, ...] = ()
    multi: tuple[MultiCategoricalField, ...] = field(default=())

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise SpecError(f"feature spec: {problem}")

    # --- derived -----------------------------------------------------------------------------------
    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature columns in model order: categorical, then numeric, then multi-valued."""
        return (
            tuple(f.name for f in self.categorical)
            + tuple(f.name for f in self.numeric)
            + tuple(f.name for f in self.multi)
        )

    @property
    def is_fitted(self) -> bool:
        """True once every numeric field has frozen statistics (trivially true with none)."""
        return all(f.is_fitted for f in self.numeric)

    # --- serialization -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; the form stored in checkpoints and hashed by ``fingerprint``."""
        return {
            "version": SPEC_FORMAT_VERSION,
            "label": self.label,
            "impression_id": self.impression_id,
            "event_time": self.event_time,
            "categorical": [{"name": f.name, "buckets": f.buckets} for f in self.categorical],
            "numeric": [{"name": f.name, "mean": f.mean, "std": f.std} for f in self.numeric],
            "multi": [{"name": f.name, "buckets": f.buckets, "max_len": f.max_len} for f in self.multi],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> FeatureSpec:
        """Inverse of ``to_dict``; raises ``SpecError`` naming ``source`` and the bad field."""
        return _from_mapping(data, source=source)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of ``to_dict()`` (the registry's feature-spec hash)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def with_numeric_stats(self, stats: dict[str, tuple[float, float]]) -> FeatureSpec:
        """A copy with ``(mean, std)`` set for the named numeric fields (used by ``fit_numeric``)."""
        unknown = set(stats) - {f.name for f in self.numeric}
        if unknown:
            raise SpecError(f"feature spec: no numeric field named {sorted(unknown)}")
        numeric = tuple(
            replace(f, mean=float(stats[f.name][0]), std=float(stats[f.name][1])) if f.name in stats else f
            for f in self.numeric
        )
        return replace(self, numeric=numeric)


# --- loading -----------------------------------------------------------------------------------------
_TOP_KEYS = {"version", "label", "impression_id", "event_time", "categorical", "numeric", "multi"}
_FIELD_KEYS = {
    "categorical": ({"name", "buckets"}, {"name", "buckets"}),
    "numeric": ({"name"}, {"name", "mean", "std"}),
    "multi": ({"name", "buckets", "max_len"}, {"name", "buckets", "max_len"}),
}


def load_spec(path: str | Path) -> FeatureSpec:
    """Read a TOML feature spec; any problem raises ``SpecError`` naming the file and field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SpecError(f"{p}: cannot read feature spec: {exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{p}: not valid TOML: {exc}") from exc
    return _from_mapping(data, source=str(p))


def default_spec() -> FeatureSpec:
    """The spec of the simulator's click logs (``reloop_service/data/specs/demo.toml``)."""
    ref = resources.files("reloop_service.data").joinpath("specs/demo.toml")
    text = ref.read_text(encoding="utf-8")
    return _from_mapping(tomllib.loads(text), source="reloop_service/data/specs/demo.toml")


def _where(source: str | None) -> str:
    return f"{source}: " if source else "feature spec: "


def _from_mapping(data: Any, *, source: str | None) -> FeatureSpec:
    where = _where(source)
    if not isinstance(data, dict):
        raise SpecError(f"{where}expected a table at the top level")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SpecError(f"{where}unknown field(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    version = data.get("version", SPEC_FORMAT_VERSION)
    if version != SPEC_FORMAT_VERSION:
        raise SpecError(f"{where}field 'version': unsupported spec version {version!r}")
    names: dict[str, str] = {}
    for key in ("label", "impression_id", "event_time"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise SpecError(f"{where}field '{key}': required, a non-empty column name")
        names[key] = value

    def fields(kind: str) -> list[dict[str, Any]]:
        items = data.get(kind, [])
        if not isinstance(items, list):
            raise SpecError(f"{where}field '{kind}': expected an array of tables ([[{kind}]])")
        required, allowed = _FIELD_KEYS[kind]
        out = []
        for i, item in enumerate(items):
            label = f"{kind}[{i}]"
            if not isinstance(item, dict):
                raise SpecError(f"{where}field '{label}': expected a table")
            label = f"{kind}[{i}] ({item.get('name', '?')})"
            missing = required - set(item)
            if missing:
                raise SpecError(f"{where}field '{label}': missing {sorted(missing)}")
            extra = set(item) - allowed
            if extra:
                raise SpecError(f"{where}field '{label}': unknown key(s) {sorted(extra)}")
            out.append(item)
        return out

    try:
        categorical = tuple(
            CategoricalField(name=f["name"], buckets=f["buckets"]) for f in fields("categorical")
        )
        numeric = tuple(
            NumericField(name=f["name"], mean=_num(f.get("mean")), std=_num(f.get("std")))
            for f in fields("numeric")
        )
        multi = tuple(
            MultiCategoricalField(name=f["name"], buckets=f["buckets"], max_len=f["max_len"])
            for f in fields("multi")
        )
        return FeatureSpec(
            label=names["label"],
            impression_id=names["impression_id"],
            event_time=names["event_time"],
            categorical=categorical,
            numeric=numeric,
            multi=multi,
        )
    except SpecError as exc:
        message = str(exc)
        if source and message.startswith("feature spec: "):
            raise SpecError(where + message.removeprefix("feature spec: ")) from None
        raise
    except (TypeError, KeyError) as exc:
        raise SpecError(f"{where}{exc}") from exc


def _num(value: Any) -> Any:
    """Ints from TOML/JSON become floats so equal specs have equal fingerprints; others pass to validation."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _problem(spec: FeatureSpec) -> str | None:
    """Return what is wrong with ``spec`` (naming the field), or None when it is valid."""
    try:
        _validate(spec, source=None)
    except SpecError as exc:
        return str(exc).removeprefix("feature spec: ")
    return None


def _validate(spec: FeatureSpec, *, source: str | None) -> None:
    """Check names, bucket counts and statistics; errors name the offending field."""
    where = _where(source)
    seen: set[str] = set()
    for key in ("label", "impression_id", "event_time"):
        value = getattr(spec, key)
        if not isinstance(value, str) or not value:
            raise SpecError(f"{where}field '{key}': required, a non-empty column name")
        if value in seen:
            raise SpecError(f"{where}field '{key}': column {value!r} is used twice")
        seen.add(value)
    groups: tuple[tuple[str, tuple[CategoricalField | NumericField | MultiCategoricalField, ...]], ...] = (
        ("categorical", spec.categorical),
        ("numeric", spec.numeric),
        ("multi", spec.multi),
    )
    for kind, items in groups:
        for i, f in enumerate(items):
            label = f"{kind}[{i}]"
            if not isinstance(f.name, str) or not f.name:
                raise SpecError(f"{where}field '{label}.name': required, a non-empty column name")
            label = f"{kind}[{i}] ({f.name})"
            if f.name in seen:
                raise SpecError(f"{where}field '{label}.name': column {f.name!r} is used twice")
            seen.add(f.name)
            if isinstance(f, CategoricalField | MultiCategoricalField) and (
                not isinstance(f.buckets, int) or isinstance(f.buckets, bool) or f.buckets < 2
            ):
                raise SpecError(
                    f"{where}field '{label}.buckets': must be an integer >= 2 (bucket 0 is reserved "
                    f"for missing), got {f.buckets!r}"
                )
            if isinstance(f, MultiCategoricalField) and (
                not isinstance(f.max_len, int) or isinstance(f.max_len, bool) or f.max_len < 1
            ):
                raise SpecError(f"{where}field '{label}.max_len': must be an integer >= 1, got {f.max_len!r}")
            if isinstance(f, NumericField):
                if (f.mean is None) != (f.std is None):
                    raise SpecError(f"{where}field '{label}': give both 'mean' and 'std' or neither")
                for stat in ("mean", "std"):
                    value = getattr(f, stat)
                    if value is not None and (
                        isinstance(value, bool) or not isinstance(value, int | float) or value != value
                    ):
                        raise SpecError(
                            f"{where}field '{label}.{stat}': must be a finite number, got {value!r}"
                        )
                if f.std is not None and not f.std > 0:
                    raise SpecError(f"{where}field '{label}.std': must be > 0, got {f.std!r}")
    if not spec.feature_names:
        raise SpecError(
            f"{where}no feature fields: give at least one [[categorical]], [[numeric]] or [[multi]]"
        )
