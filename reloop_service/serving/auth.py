"""Admin bearer-token check: closed unless a token is configured, compared in constant time.

No token configured means the admin API is off (403 to everything), so a fresh install is never
open by default. A missing or wrong token is 401. The token is never logged or echoed.
"""

from __future__ import annotations

import hmac
import re

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from reloop_service.config import Settings

_bearer = HTTPBearer(auto_error=False, description="Admin token (RELOOP_ADMIN_TOKEN).")
ADMIN_ACTOR = "admin-api"
ACTOR_HEADER = "X-Reloop-Actor"
ACTOR_PATTERN = re.compile(r"[A-Za-z0-9._@+:-]{1,64}")


def check_admin_token(*, settings: Settings, presented: str | None) -> None:
    """Raise 403 when the admin API is off, 401 when ``presented`` is not the configured token."""
    if settings.admin_token is None or not settings.admin_token.get_secret_value():
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="admin API disabled: no RELOOP_ADMIN_TOKEN configured"
        )
    expected = settings.admin_token.get_secret_value().encode()
    given = (presented or "").encode()
    if not presented or not hmac.compare_digest(expected, given):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid admin bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def actor_of(header: str | None) -> str:
    """The audit actor: ``admin-api:<name>`` from ``X-Reloop-Actor``, or ``admin-api`` without it.

    The name is who the caller says acts (an operator, the dashboard, a script); the token proves
    the caller may act at all. A name that is not 1-64 of ``A-Za-z0-9._@+:-`` is a 422.
    """
    if header is None or not header.strip():
        return ADMIN_ACTOR
    name = header.strip()
    if not ACTOR_PATTERN.fullmatch(name):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"{ACTOR_HEADER}: 1-64 characters of letters, digits and . _ @ + : - "
            f"(got {len(name)} characters)",
        )
    return f"{ADMIN_ACTOR}:{name}"


async def require_admin(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> str:
    """FastAPI dependency of every admin route; returns the actor name recorded in the audit trail.

    ``async`` so it runs on the event loop: admin routes never queue on the threadpool predictions use."""
    settings: Settings = request.app.state.settings
    check_admin_token(settings=settings, presented=credentials.credentials if credentials else None)
    return actor_of(request.headers.get(ACTOR_HEADER))
