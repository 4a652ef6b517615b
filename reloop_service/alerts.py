"""Operator alerts: ``RELOOP_ALERT_WEBHOOK_URL`` receives a JSON event when something needs a look.

Events: a cycle that failed, was rejected by the gate, or was skipped (no data, too few rows), and
a rollback. The POST is retried with exponential backoff (stamina) on connection errors, timeouts
and 5xx/429 answers; a receiver that stays down costs a logged warning, never a failed cycle or
a failed rollback. The URL may carry a secret, so only its scheme and host are ever logged.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

from reloop_service.config import Settings

log = logging.getLogger(__name__)

ALERT_KINDS = ("cycle_failed", "cycle_rejected", "cycle_skipped", "rollback")


@dataclass(frozen=True)
class AlertEvent:
    """The webhook body (``schema`` versions the shape for receivers)."""

    kind: str
    model_name: str
    summary: str
    cycle_date: str | None = None
    run_id: int | None = None
    version: int | None = None
    from_version: int | None = None
    to_version: int | None = None
    actor: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    schema: str = "reloop.alert/1"
    source: str = "reloop-service"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _finite(asdict(self))
        return out


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class _HideWebhook(logging.Filter):
    """Drops httpx's own request log lines for webhook URLs (their query may hold a token)."""

    urls: ClassVar[set[str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(url in text for url in self.urls)


_hide = _HideWebhook()
logging.getLogger("httpx").addFilter(_hide)


class _Retryable(Exception):
    """A 5xx or 429 answer: worth another attempt."""


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"


def _post(settings: Settings, url: str, event: AlertEvent) -> bool:
    import httpx
    import stamina

    _HideWebhook.urls.add(url)
    body = event.to_dict()
    try:
        for attempt in stamina.retry_context(
            on=(httpx.TransportError, _Retryable),
            attempts=settings.alert_attempts,
            timeout=settings.alert_timeout_s * settings.alert_attempts + 10.0,
            wait_initial=0.2,
            wait_max=5.0,
        ):
            with attempt:
                response = httpx.post(url, json=body, timeout=settings.alert_timeout_s)
                if response.status_code >= 500 or response.status_code == 429:
                    raise _Retryable(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    log.warning(
                        "alert %s refused by %s: HTTP %d", event.kind, _where(url), response.status_code
                    )
                    return False
        log.info("alert %s sent to %s", event.kind, _where(url))
        return True
    except Exception as exc:
        log.warning(
            "alert %s not delivered to %s after %d attempts: %s",
            event.kind,
            _where(url),
            settings.alert_attempts,
            type(exc).__name__ if not isinstance(exc, _Retryable) else exc,
        )
        return False


def send_alert(settings: Settings, event: AlertEvent, *, background: bool = False) -> bool | None:
    """POST ``event`` to the configured webhook with retries; never raises.

    Returns whether it was delivered (``None`` with no webhook configured, or in ``background``,
    where a daemon thread sends it so that an API request does not wait for the retries).
    """
    if settings.alert_webhook_url is None:
        return None
    url = settings.alert_webhook_url.get_secret_value()
    if not url:
        return None
    if background:
        threading.Thread(target=_post, args=(settings, url, event), name="reloop-alert", daemon=True).start()
        return None
    return _post(settings, url, event)


def cycle_alert(model_name: str, outcome: Any) -> AlertEvent | None:
    """The event for a finished cycle outcome, or ``None`` when it needs no operator (promoted).

    A date another process holds or that already succeeded (``reason`` ``held``/``succeeded``) is not
    news; a cycle that decided not to train (the ``skipped`` status with a data reason) is.
    """
    status = getattr(outcome, "status", None)
    reason = getattr(outcome, "reason", None)
    # the period's name (2024-05-01, or 2024-05-01T13 for an hourly cycle)
    day = getattr(outcome, "period", None) or getattr(outcome, "cycle_date", None)
    common: dict[str, Any] = {
        "model_name": model_name,
        "cycle_date": day.isoformat() if day is not None else None,
        "run_id": getattr(outcome, "run_id", None),
        "version": getattr(outcome, "version", None),
        "from_version": getattr(outcome, "parent_version", None),
    }
    if status == "failed":
        error = getattr(outcome, "error", None)
        return AlertEvent(kind="cycle_failed", summary=f"cycle {day} failed: {error}", reason=error, **common)
    if status == "skipped":
        if reason in ("held", "succeeded"):
            return None
        why = getattr(outcome, "error", None) or reason
        return AlertEvent(kind="cycle_skipped", summary=f"cycle {day} skipped: {why}", reason=why, **common)
    if status == "succeeded" and getattr(outcome, "decision", None) == "rejected":
        verdict = getattr(outcome, "verdict", None)  # a registry GateVerdict (this module imports no domain)
        gate = verdict.model_dump(mode="json") if verdict is not None else {}
        failed = ", ".join(gate.get("failed_rules") or []) or "gate"
        return AlertEvent(
            kind="cycle_rejected",
            summary=f"cycle {day}: version {common['version']} rejected by the gate ({failed})",
            reason=failed,
            details={k: gate.get(k) for k in ("failed_rules", "rules", "candidate", "production")},
            **common,
        )
    return None


def rollback_alert(production: Any, *, reason: str, from_version: int | None = None) -> AlertEvent:
    """The event for a rollback that put ``production.version`` back in production."""
    version = production.version.version
    return AlertEvent(
        kind="rollback",
        model_name=production.model_name,
        summary=f"rolled back to version {version}: {reason}",
        version=version,
        from_version=from_version,
        to_version=version,
        actor=production.updated_by,
        reason=reason,
    )
