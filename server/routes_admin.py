"""Admin routes: add documents, opt out, list receipts, list and swap datastores.

Every call is authorized with the admin key and written to the audit log (who, what,
when, outcome) before its response is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Query

from server.audit import AuditLog
from server.auth import Principal
from server.deps import AdminDep, AuditDep, ServiceDep
from server.protocol import (
    AddDocumentsRequest,
    AddDocumentsResponse,
    DatastoreList,
    OptOutRequest,
    ReceiptList,
    ReceiptModel,
)

router = APIRouter(prefix="/admin")
_T = TypeVar("_T")
DatastoreQuery = Query(None, max_length=200, description="A datastore; the active one if unset.")


async def _audited(audit: AuditLog, who: Principal, action: str, work: Awaitable[_T],
                   **detail: Any) -> _T:
    try:
        result = await work
    except Exception as e:
        audit.record(who.name, action, f"error: {e}", **detail)
        raise
    audit.record(who.name, action, "ok", **detail)
    return result


@router.post("/documents", response_model=AddDocumentsResponse)
async def add_documents(body: AddDocumentsRequest, service: ServiceDep, admin: AdminDep,
                        audit: AuditDep, datastore: str | None = DatastoreQuery) -> Any:
    ids = [d.get("id") for d in body.documents]
    return await _audited(audit, admin, "add_documents",
                          service.admin.add_documents(body.documents, datastore),
                          doc_ids=ids[:100], count=len(ids), datastore=datastore)


@router.post("/optout", response_model=ReceiptModel)
async def optout(body: OptOutRequest, service: ServiceDep, admin: AdminDep, audit: AuditDep,
                 datastore: str | None = DatastoreQuery) -> Any:
    return await _audited(audit, admin, "optout",
                          service.admin.optout(body.model_dump(), datastore),
                          selector=body.model_dump(exclude_none=True), datastore=datastore)


@router.get("/optouts", response_model=ReceiptList)
async def optouts(service: ServiceDep, admin: AdminDep,
                  datastore: str | None = DatastoreQuery) -> Any:
    return await service.admin.receipts(datastore)


@router.get("/datastores", response_model=DatastoreList)
def datastores(service: ServiceDep, admin: AdminDep) -> DatastoreList:
    return service.admin.datastores()


@router.post("/datastores/{name}/activate", response_model=DatastoreList)
async def activate(name: str, service: ServiceDep, admin: AdminDep, audit: AuditDep) -> Any:
    return await _audited(audit, admin, "activate_datastore", service.admin.activate(name),
                          datastore=name)
