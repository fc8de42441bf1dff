"""The attribution service: POST /v1/attribution, the documents behind any text, looked
up through the caller's filter (silo.lookup) in a worker thread."""

from __future__ import annotations

import asyncio

from datastore.filter import SearchFilter
from server.auth import Principal
from server.protocol import AttributionRequest, AttributionResponse
from server.registry import DatastoreRegistry
from server.responses import sentences
from silo.lookup import lookup


class AttributionService:
    """Attribution lookups over the registry's datastores."""

    def __init__(self, registry: DatastoreRegistry) -> None:
        self.registry = registry

    async def lookup(self, body: AttributionRequest, principal: Principal,
                     ) -> AttributionResponse:
        store = self.registry.datastore(body.datastore)
        classes = body.license_classes
        flt = SearchFilter(None if classes is None else frozenset(classes), principal.scope)
        found = await asyncio.to_thread(lookup, store, body.text, body.k, flt)
        return AttributionResponse(sentences=sentences(None, found))
