"""FastAPI dependencies: the service, the caller (user or admin), the audit log.

Handlers declare what they need with the `Annotated` shortcuts below. The service and
the user are `async` (FastAPI runs a sync dependency in its thread pool, a hop per
request for a lookup in memory); the admin stays sync, as a refusal writes the audit log.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.audit import AuditLog
from server.auth import KeyRing, Principal, authorize_admin, authorize_user
from server.errors import ApiError
from server.service import SiloService


async def get_service(request: Request) -> SiloService:
    return request.app.state.service  # type: ignore[no-any-return]


def get_audit(request: Request) -> AuditLog:
    return request.app.state.audit  # type: ignore[no-any-return]


def _keys(request: Request) -> KeyRing:
    return request.app.state.keys  # type: ignore[no-any-return]


async def get_user(request: Request) -> Principal:
    return authorize_user(_keys(request), request.headers.get("authorization"))


def get_admin(request: Request) -> Principal:
    """The admin caller; a refused attempt is written to the audit log too."""
    try:
        return authorize_admin(_keys(request), request.headers.get("authorization"))
    except ApiError as e:
        get_audit(request).record("unknown", f"{request.method} {request.url.path}",
                                  f"refused {e.status}", client=_client(request))
        raise


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


ServiceDep = Annotated[SiloService, Depends(get_service)]
AuditDep = Annotated[AuditLog, Depends(get_audit)]
UserDep = Annotated[Principal, Depends(get_user)]
AdminDep = Annotated[Principal, Depends(get_admin)]
