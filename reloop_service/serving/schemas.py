"""Request and response bodies of the HTTP API (also the OpenAPI schema the dashboard builds on).

The predict body has a fast path: ``orjson`` parses it and a tight type check accepts exactly
the well-formed subset of what the pydantic model accepts; anything else goes through the model,
whose errors (with the offending field's path) become the 422. Same rules, a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from itertools import chain, compress, repeat
from operator import is_
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from reloop_service.config import Settings
from reloop_service.data.spec import FeatureSpec
from reloop_service.data.transforms import RecordColumns, plain_record_columns
from reloop_service.registry.records import CycleRecord, GateVerdict

MAX_ID_LEN = 128
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
MAX_VERSION = 2**31 - 1  # registry version numbers are SQL INTEGER
VersionNumber = Annotated[int, Field(ge=1, le=MAX_VERSION)]


@dataclass(frozen=True)
class PredictLimits:
    """Size limits on what a predict request may carry (``RELOOP_MAX_*`` settings).

    ``max_body_bytes`` is enforced on the raw body (413, before it is read whole); the others by
    the parser (422 naming the field): items per request, feature keys per item, characters per
    string (feature names, values and list elements) and elements per list.
    """

    max_batch: int = 1000
    max_body_bytes: int = 8 * 1024 * 1024
    max_keys: int = 256
    max_string: int = 1024
    max_list: int = 256


def predict_limits(settings: Settings) -> PredictLimits:
    """The predict route's limits from the ``RELOOP_MAX_*`` settings."""
    return PredictLimits(
        max_batch=settings.max_batch,
        max_body_bytes=settings.max_body_bytes,
        max_keys=settings.max_item_keys,
        max_string=settings.max_string_length,
        max_list=settings.max_list_length,
    )


class PredictItem(BaseModel):
    """One item to score. Unknown feature names are ignored (and counted); missing ones are null."""

    model_config = _STRICT

    features: dict[str, Any] = Field(description="Feature name -> value, as in the click logs.")
    impression_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)] | None = Field(
        default=None, description="Client impression id; the server assigns a UUIDv7 when absent."
    )


class PredictRequestBase(BaseModel):
    """A batch of items; the size limits come from ``RELOOP_MAX_BATCH`` and ``RELOOP_MAX_*``."""

    model_config = _STRICT
    items: list[PredictItem]


@lru_cache(maxsize=8)
def predict_request_model(limits: PredictLimits) -> type[PredictRequestBase]:
    """The request model with this deployment's limits (they show in the OpenAPI schema)."""
    text = Annotated[str, Field(max_length=limits.max_string)]
    value = text | Int64 | float | bool | None | Annotated[list[text], Field(max_length=limits.max_list)]
    item = create_model(
        "PredictItem",
        __base__=PredictItem,
        __doc__=PredictItem.__doc__,
        features=(
            dict[text, value],  # type: ignore[valid-type]
            Field(
                max_length=limits.max_keys,
                description="Feature name -> value (a string, integer, finite number, boolean, null or "
                "list of strings), as in the click logs.",
            ),
        ),
    )
    return create_model(
        "PredictRequest",
        __base__=PredictRequestBase,
        items=(list[item], Field(min_length=1, max_length=limits.max_batch)),  # type: ignore[valid-type]
    )


class Prediction(BaseModel):
    impression_id: str
    ctr: float = Field(description="Predicted click probability in [0, 1].")


class PredictResponse(BaseModel):
    model_version: int
    predictions: list[Prediction]


_SCALARS = frozenset({str, float, bool, type(None)})  # need no further check
_VALUE_TYPES = frozenset({str, int, float, bool, type(None), list})
_ITEM_KEYS = frozenset({"features", "impression_id"})
_I64 = 2**63
_STR = frozenset({str})
_DICT = {dict}
_NONE_ONLY = {type(None)}
_ID_TYPES = frozenset({str, type(None)})


def _may_hold_long_strings(body: bytes, max_string: int) -> bool:
    """Whether some JSON string of ``body`` could be longer than ``max_string`` characters.

    A string lies between two quotes, so if no two consecutive quote bytes are more than
    ``max_string`` + 1 apart, none is (escapes only lengthen the encoding; an escaped quote would
    split a string, so a body holding any escape always answers True: one ``memchr`` for a
    backslash costs 0.4 µs on a 33 KB body where a search for the two bytes ``\\"`` cost 27).
    NumPy finds the quotes in C.
    """
    if len(body) <= max_string:
        return False
    if b"\\" in body:
        return True
    quotes = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == 34)
    return quotes.size < 2 or int(np.diff(quotes).max()) > max_string + 1


def _fast_items(body: bytes, limits: PredictLimits) -> tuple[list[dict[str, Any]], list[str | None]] | None:
    """Parse and check a well-formed body cheaply; ``None`` means "let the model decide".

    Every check is a C-level pass over the whole batch rather than a Python loop per item: item
    and feature types as sets of types, integers and lists picked out with ``compress``, limits
    as ``max`` of lengths, string lengths as one pass over the raw body's quotes
    (``_may_hold_long_strings``).
    """
    parsed = _fast_shape(body, limits)
    if parsed is None:
        return None
    items, features = parsed
    if not _fast_values(body, features, limits):
        return None
    ids = _fast_ids(items)
    return None if ids is None else (features, ids)


def _fast_columns(
    body: bytes, limits: PredictLimits, spec: FeatureSpec
) -> tuple[list[dict[str, Any]], list[str | None], RecordColumns | None] | None:
    """``_fast_items`` plus, for a batch of the plain shape, its feature columns already read.

    ``plain_record_columns`` checks each spec field's values while reading its column (types and
    limits: what ``_fast_values`` checks of them), so a body of that shape skips ``_fast_values``'
    passes over every value. Any other body is checked by ``_fast_values`` (columns ``None``). A
    single item keeps the single-record transform (columns ``None``).
    """
    parsed = _fast_shape(body, limits)
    if parsed is None:
        return None
    items, features = parsed
    columns = None
    if len(features) > 1:
        columns = plain_record_columns(spec, features, limits.max_string, limits.max_list)
    if columns is None and not _fast_values(body, features, limits):
        return None
    ids = _fast_ids(items)
    return None if ids is None else (features, ids, columns)


def _fast_shape(
    body: bytes, limits: PredictLimits
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(items, their feature mappings) of a body shaped like a predict request within the limits
    on items and keys; ``None`` for anything else."""
    try:
        doc = orjson.loads(body)  # rejects NaN / Infinity; integers beyond 64 bits become floats
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or len(doc) != 1:
        return None
    items = doc.get("items")
    if type(items) is not list or not 1 <= len(items) <= limits.max_batch:
        return None
    if set(map(type, items)) != _DICT or not set().union(*items) <= _ITEM_KEYS:
        return None
    features: list[dict[str, Any]] = list(map(dict.get, items, repeat("features")))  # type: ignore[arg-type]
    if set(map(type, features)) != _DICT or max(map(len, features)) > limits.max_keys:
        return None
    return items, features


def _fast_values(body: bytes, features: list[dict[str, Any]], limits: PredictLimits) -> bool:
    """Whether every feature name and value is of an accepted type and within the limits."""
    values = list(chain.from_iterable(map(dict.values, features)))
    types = list(map(type, values))
    kinds = set(types)
    if not kinds <= _SCALARS:
        if not kinds <= _VALUE_TYPES:
            return False
        if int in kinds:
            ints = list(compress(values, map(is_, types, repeat(int))))
            if min(ints) < -_I64 or max(ints) >= _I64:
                return False
        if list in kinds:
            lists = list(compress(values, map(is_, types, repeat(list))))
            if (
                max(map(len, lists)) > limits.max_list
                or not set(map(type, chain.from_iterable(lists))) <= _STR
            ):
                return False
    return not (
        _may_hold_long_strings(body, limits.max_string)
        and any(map(_too_long, features, repeat(limits.max_string)))
    )


def _fast_ids(items: list[dict[str, Any]]) -> list[str | None] | None:
    """The items' impression ids (None where not given); ``None`` when one is not a valid id."""
    ids: list[str | None] = list(map(dict.get, items, repeat("impression_id")))  # type: ignore[arg-type]
    id_kinds = set(map(type, ids))
    if id_kinds != _NONE_ONLY:
        if not id_kinds <= _ID_TYPES:
            return None
        given: list[str] = list(compress(ids, map(is_, map(type, ids), repeat(str))))  # type: ignore[arg-type]
        if min(map(len, given)) < 1 or max(map(len, given)) > MAX_ID_LEN:
            return None
    return ids


def _too_long(feats: dict[str, Any], max_string: int) -> bool:
    """Whether a feature name, string value or list element is longer than ``max_string``."""
    for key, value in feats.items():
        if len(key) > max_string:
            return True
        kind = type(value)
        if kind is str and len(value) > max_string:
            return True
        if kind is list and any(len(x) > max_string for x in value):
            return True
    return False


_VALUE_MESSAGE = (
    "feature value must be a string, an integer, a finite number, a boolean, null or a list of strings"
)
_LIMIT_TYPES = frozenset({"string_too_long", "too_long"})


def _collapse(errors: list[Any]) -> list[dict[str, Any]]:
    """One error per offending field: union members of a feature value are folded together.

    When one member of the union matched the value's type but the value is over a size limit
    (a string or list too long, a feature name too long), that limit error is the one reported:
    it says what to change. Oversized inputs are never echoed back.
    """
    limited: dict[tuple[Any, ...], Any] = {}
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if len(loc) >= 4 and loc[0] == "items" and loc[2] == "features" and err.get("type") in _LIMIT_TYPES:
            limited.setdefault(loc[:4], err)
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if len(loc) >= 4 and loc[0] == "items" and loc[2] == "features":
            loc = loc[:4]
            limit = limited.get(loc)
            if limit is not None:
                message = limit["msg"]
                if tuple(limit["loc"])[-1] == "[key]":
                    message = f"feature name: {message}"
                err = {"type": limit["type"], "loc": loc, "msg": message, "input": None}
            else:
                err = {"type": "feature_value", "loc": loc, "msg": _VALUE_MESSAGE, "input": err.get("input")}
        elif err.get("type") in _LIMIT_TYPES:
            err = {**err, "input": None}
        if loc in seen:
            continue
        seen.add(loc)
        out.append({**err, "loc": ("body", *loc)})
    return out


def parse_predict_body(
    body: bytes, *, limits: PredictLimits
) -> tuple[list[dict[str, Any]], list[str | None]]:
    """Return (features per item, client impression id or None per item), or raise a 422."""
    fast = _fast_items(body, limits)
    if fast is not None:
        return fast
    model = predict_request_model(limits)
    try:
        parsed = model.model_validate_json(body or b"")
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError(_collapse(list(errors)), body=None) from None
    return [dict(it.features) for it in parsed.items], [it.impression_id for it in parsed.items]


# --- model and health ------------------------------------------------------------------------------
class ModelInfo(BaseModel):
    """The version this replica serves right now."""

    model_name: str
    model_version: int
    loaded_at: datetime
    artifact_sha256: str
    metrics: dict[str, Any]
    data_first_day: date | None
    data_last_day: date | None
    feature_names: list[str]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool = Field(description="True when a model is loaded (predictions are answered).")
    model_version: int | None
    database: str = Field(
        description="'ok'; 'unreachable' (the last registry poll failed); 'stale' (no poll succeeded "
        "for a few watch intervals: the database hangs). Details only in GET /v1/admin/status."
    )
    last_poll_at: datetime | None = Field(description="When a registry poll last succeeded.")
    load_error: str | None = Field(
        default=None,
        description="Why the production version could not be loaded "
        "('version 3: artifact checksum mismatch'); null once a load succeeds.",
    )
    archive_enabled: bool


class AdminStatus(BaseModel):
    """What /readyz keeps to itself: the registry's address and the full error texts."""

    database: str
    database_url: str = Field(description="The registry URL with its password masked.")
    database_error: str | None
    last_poll_at: datetime | None
    model_version: int | None
    load_error: str | None = Field(description="The last failed load, in full (URI, checksums).")
    load_failures: int
    swaps: int
    admin_threads_busy: int = Field(
        description="Admin database calls still running (one whose client gave up ends at the database's "
        "next answer and is then rolled back)."
    )


# --- admin -----------------------------------------------------------------------------------------
class ArtifactOut(BaseModel):
    uri: str
    sha256: str
    size: int


class VersionOut(BaseModel):
    """A registered model version: lineage, data window, metrics and gate verdict."""

    model_name: str
    version: int
    status: str = Field(description="candidate | production | archived | rejected | failed")
    parent_version: int | None
    created_at: datetime
    artifact: ArtifactOut
    feature_spec_hash: str | None
    train_config: dict[str, Any]
    data_first_day: date | None
    data_last_day: date | None
    metrics: dict[str, Any]
    gate_verdict: GateVerdict | None
    cycle_date: date | None
    status_changed_at: datetime
    rolled_back_at: datetime | None
    period: str | None = Field(
        default=None, description="The training cycle's period by its start (2024-05-01, 2024-05-01T13)."
    )


class ProductionOut(BaseModel):
    model_name: str
    version: VersionOut
    updated_at: datetime
    updated_by: str


class VersionList(BaseModel):
    production_version: int | None
    production: ProductionOut | None = Field(
        default=None, description="The production alias: its version, when and by whom it was set."
    )
    versions: list[VersionOut]


class VersionDetail(BaseModel):
    version: VersionOut
    lineage: list[VersionOut] = Field(description="Ancestors, nearest parent first.")
    is_production: bool


class EventOut(BaseModel):
    """One entry of the append-only audit trail."""

    id: int
    model_name: str
    kind: str = Field(description="registered | promoted | rolled_back | rejected | failed")
    version: int | None
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    created_at: datetime
    details: dict[str, Any]


class EventList(BaseModel):
    events: list[EventOut]


class CycleRunOut(BaseModel):
    id: int
    model_name: str
    cycle_date: date = Field(description="The day the period starts on.")
    period: str = Field(
        description="The cycle's period by its start: 2024-05-01 (daily), 2024-05-01T13 (hourly)."
    )
    status: str = Field(description="running | succeeded | failed | skipped")
    attempt: int
    owner: str
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None
    error: str | None
    produced_version: int | None
    details: CycleRecord = Field(
        description="The run's record as the cycle wrote it (gate verdict included)."
    )


class CycleRunList(BaseModel):
    runs: list[CycleRunOut]


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: VersionNumber
    reason: str = Field(min_length=1, max_length=2000)
    expected_current: int | None = Field(
        default=None,
        ge=1,
        description="Only promote if this is still the production version (409 otherwise).",
    )


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)
    to: int | None = Field(
        default=None, ge=1, description="Target version; default: the previous production."
    )
    force: bool = Field(
        default=False, description="Allow a target the lifecycle would refuse (e.g. rejected)."
    )


class TriggerCycleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    date: str = Field(
        pattern=r"^\d{4}-\d{2}-\d{2}(T\d{2}(:\d{2})?)?$",
        max_length=16,
        description="The period by its start: 2024-05-01 (daily) or 2024-05-01T13 (RELOOP_CYCLE_PERIOD=1h).",
        examples=["2024-05-01", "2024-05-01T13"],
    )
    force: bool = False
    reason: str | None = Field(
        default=None, max_length=2000, description="Why (logged with the actor; the dashboard asks for it)."
    )


class TriggerCycleResponse(BaseModel):
    run_id: int | str


class ReloadResponse(BaseModel):
    model_version: int | None
    changed: bool
    loaded_at: datetime | None
    error: str | None = None


def orjson_dumps(payload: Any) -> bytes:
    """Serialize a response body (dates ISO, numpy scalars/arrays native)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
