"""The transparency log's public routes: no key needed, so that transparency-log clients
and `silo verify` work unchanged (hashes and leaves are standard base64, as in the C2SP
formats; checkpoints and keys are note text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from server.deps import ServiceDep
from server.protocol import ConsistencyProof, InclusionProof, LogEntries

router = APIRouter(prefix="/v1/log", tags=["transparency log"])
DatastoreQuery = Query(None, max_length=200, description="A datastore; the active one if unset.")


def count(description: str, alias: str | None = None) -> Any:
    """A required count parameter (one Query per parameter: FastAPI names a shared one
    after the first parameter that uses it)."""
    return Query(..., ge=0, le=2**62, alias=alias, description=description)


@router.get("/checkpoint", response_class=PlainTextResponse)
async def checkpoint(service: ServiceDep, datastore: str | None = DatastoreQuery) -> str:
    """The current checkpoint: a C2SP tlog-checkpoint, as a signed note where the
    operator set a key (else its text alone)."""
    return service.log.checkpoint(datastore)


@router.get("/key", response_class=PlainTextResponse)
async def key(service: ServiceDep, datastore: str | None = DatastoreQuery) -> str:
    """The verifier key of the checkpoints, in C2SP note form (404 while unsigned)."""
    return service.log.key(datastore)


@router.get("/entries", response_model=LogEntries)
async def entries(service: ServiceDep, start: int = count("The first leaf."),
                  end: int = count("The leaf after the last (exclusive)."),
                  datastore: str | None = DatastoreQuery) -> LogEntries:
    """Leaves [start, end) (end exclusive; at most 1000 in one answer)."""
    return service.log.entries(datastore, start, end)


@router.get("/proof/inclusion", response_model=InclusionProof)
async def inclusion(service: ServiceDep, index: int = count("The leaf."),
                    size: int = count("The tree's size."),
                    datastore: str | None = DatastoreQuery) -> InclusionProof:
    """The RFC 9162 inclusion proof of leaf `index` in the tree of `size` leaves."""
    return service.log.inclusion(datastore, index, size)


@router.get("/proof/consistency", response_model=ConsistencyProof, response_model_by_alias=True)
async def consistency(service: ServiceDep,
                      from_: int = count("The older tree's size.", alias="from"),
                      to: int = count("The newer tree's size."),
                      datastore: str | None = DatastoreQuery,
                      ) -> ConsistencyProof:
    """The RFC 9162 consistency proof from the tree of `from` leaves to that of `to`."""
    return service.log.consistency(datastore, from_, to)
