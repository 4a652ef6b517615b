"""One error body for the whole API: RFC 9457 problem details (``application/problem+json``).

Every error (validation, auth, registry, unknown route, an unexpected crash) answers

    {"type": ..., "title": ..., "status": 422, "detail": "one line", "instance": "/v1/predict", ...}

with extension members where they help: ``errors`` (each invalid field: ``loc``, ``msg``, ``type``
and a bounded, JSON-safe echo of the ``input``) and ``error`` (the registry error class). The echo
never fails to encode: integers beyond 64 bits, NaN and bytes become strings, and long values are
cut, so no input can turn a 422 into a 500.
"""

from __future__ import annotations

import math
import re
from http import HTTPStatus
from typing import Any

import orjson
from starlette.responses import Response

PROBLEM_JSON = "application/problem+json"
ABOUT_BLANK = "about:blank"
TYPE_PREFIX = "urn:reloop:problem:"
_ECHO_CHARS = 200
_ECHO_ITEMS = 20
_INT64 = 2**63


def problem_type(slug: str) -> str:
    """A stable URI naming one kind of problem (``urn:reloop:problem:validation``)."""
    return TYPE_PREFIX + slug


def slug_of(name: str) -> str:
    """``PromotionConflictError`` -> ``promotion-conflict``."""
    words = re.sub(r"(?<!^)(?=[A-Z])", "-", name.removesuffix("Error")).lower()
    return words or "error"


def title_of(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def safe_echo(value: Any, depth: int = 0) -> Any:
    """A bounded copy of a client value that orjson always encodes."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if -_INT64 <= value < _INT64:
            return value
        try:
            text = str(value)
        except ValueError:  # beyond sys.get_int_max_str_digits()
            return f"<integer of {value.bit_length()} bits>"
        return text if len(text) <= _ECHO_CHARS else f"{text[:_ECHO_CHARS]}… ({len(text)} digits)"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= _ECHO_CHARS else value[:_ECHO_CHARS] + "…"
    if isinstance(value, bytes | bytearray):
        return bytes(value[:_ECHO_CHARS]).decode("utf-8", errors="replace")
    if depth >= 3:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:_ECHO_ITEMS]
        return {str(k)[:_ECHO_CHARS]: safe_echo(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [safe_echo(v, depth + 1) for v in list(value)[:_ECHO_ITEMS]]
    return str(value)[:_ECHO_CHARS]


def problem_body(
    status: int,
    detail: str,
    *,
    type_: str = ABOUT_BLANK,
    title: str | None = None,
    instance: str | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or title_of(status),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update({k: v for k, v in extensions.items() if v is not None})
    return body


def problem(
    status: int,
    detail: str,
    *,
    type_: str = ABOUT_BLANK,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """A problem-details response; the body always encodes (values pass ``safe_echo``)."""
    body = problem_body(status, detail, type_=type_, title=title, instance=instance, **extensions)
    try:
        raw = orjson.dumps(body)
    except TypeError:
        raw = orjson.dumps(safe_echo(body, depth=-10))
    return Response(raw, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI error dicts reduced to ``loc``, ``msg``, ``type`` and a safe ``input``."""
    out = []
    for err in errors[:50]:
        item = {k: err[k] for k in ("type", "loc", "msg") if k in err}
        item["loc"] = [safe_echo(p) for p in item.get("loc", ())]
        if "input" in err:
            item["input"] = safe_echo(err["input"])
        out.append(item)
    return out


def one_line(errors: list[dict[str, Any]]) -> str:
    """``body.items.0.features.x: Input should be ...`` (+ how many more)."""
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"
