"""The attribution service: POST /v1/attribution, the documents behind any text, looked
up through the caller's filter (silo.lookup) in a worker thread."""

from __future__ import annotations

import asyncio

from datastore.filter import SearchFilter
from datastore.table.log import LogHead
from server.auth import Principal
from server.protocol import AttributionRequest, AttributionResponse
from server.registry import DatastoreRegistry
from server.responses import sentences
from server.transparency import checkpoint_ref
from silo.attribution import Attribution
from silo.lookup import lookup


class AttributionService:
    """Attribution lookups over the registry's datastores."""

    def __init__(self, registry: DatastoreRegistry) -> None:
        self.registry = registry

    async def lookup(self, body: AttributionRequest, principal: Principal,
                     ) -> tuple[AttributionResponse, LogHead]:
        """The documents behind each sentence, and the log's head they were looked up
        against (every change below it was in effect)."""
        store = self.registry.datastore(body.datastore, principal.datastores)
        classes = body.license_classes
        flt = SearchFilter(None if classes is None else frozenset(classes), principal.scope)

        def run() -> tuple[Attribution, LogHead]:
            store.sync()
            head = store.view.log  # before the searches: every change below it is in effect
            return lookup(store, body.text, body.k, flt), head

        found, head = await asyncio.to_thread(run)
        return AttributionResponse(sentences=sentences(None, found),
                                   checkpoint=checkpoint_ref(head)), head
