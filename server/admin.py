"""The admin service: documents added, opt-outs and their receipts, and the datastores
listed and swapped. Datastore writes run in worker threads, off the event loop."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from datastore.encoder import KeyEncoder
from datastore.errors import NotFoundError
from datastore.optout import OptOutSelector, Receipt
from datastore.tlog.leaf import Leaf
from server.metrics import Metrics
from server.protocol import (
    AddDocumentsResponse,
    DatastoreEntry,
    DatastoreList,
    ReceiptList,
    ReceiptModel,
)
from server.registry import DatastoreRegistry
from server.transparency import LogService


class AdminService:
    """What the admin routes do, over the registry's datastores."""

    def __init__(self, registry: DatastoreRegistry, encoder: KeyEncoder,
                 metrics: Metrics, log: LogService) -> None:
        self.registry = registry
        self.encoder = encoder  # token ids -> keys, for documents added over HTTP
        self.metrics = metrics
        self.log = log

    def _receipt(self, receipt: Receipt, name: str) -> ReceiptModel:
        """A receipt with its proof in the datastore's transparency log."""
        log = self.log.receipt(self.registry.datastore(name), receipt.log_index)
        return ReceiptModel(**receipt.to_json(), datastore=name, log=log)

    def _store_name(self, name: str | None) -> str:
        name = name or self.registry.active
        if name is None:
            raise NotFoundError("no datastore is active")
        return name

    async def add_documents(self, lines: list[dict[str, Any]], name: str | None,
                            ) -> AddDocumentsResponse:
        from silo.corpus.jsonl import parse_line

        store_name = self._store_name(name)
        docs = [parse_line(line, "request.documents", i) for i, line in enumerate(lines)]
        store = self.registry.datastore(store_name)
        stats = await asyncio.to_thread(store.add_documents, docs, self.encoder)
        return AddDocumentsResponse(datastore=store_name, documents=stats.documents,
                                    entries=stats.entries, blocks=stats.blocks)

    async def optout(self, body: dict[str, Any], name: str | None) -> ReceiptModel:
        """Returns only after the tombstones are committed (Datastore.optout fsyncs)."""
        store_name = self._store_name(name)
        selector = OptOutSelector.from_json({k: v for k, v in body.items() if v is not None})
        store = self.registry.datastore(store_name)
        receipt = await asyncio.to_thread(store.optout, selector)
        self.metrics.optouts.inc()
        self.metrics.optout_documents.inc(len(receipt.doc_ids))
        return await asyncio.to_thread(self._receipt, receipt, store_name)

    async def receipts(self, name: str | None) -> ReceiptList:
        store_name = self._store_name(name)
        store = self.registry.datastore(store_name)
        def listed() -> list[ReceiptModel]:
            return [self._receipt(r, store_name) for r in store.receipts()]

        return ReceiptList(datastore=store_name, receipts=await asyncio.to_thread(listed))

    def datastores(self) -> DatastoreList:
        loaded = self.registry.loaded()
        entries = []
        for name, path in sorted(self.registry.paths.items()):
            lm = loaded.get(name)
            info = None if lm is None or lm.datastore is None else asdict(lm.datastore.info())
            entries.append(DatastoreEntry(name=name, path=str(path),
                                          active=name == self.registry.active,
                                          loaded=lm is not None, info=info))
        return DatastoreList(active=self.registry.active, datastores=entries)

    async def activate(self, name: str) -> DatastoreList:
        """Make `name` the active datastore, and record it in its log."""
        def activate() -> None:
            store = self.registry.activate(name).datastore
            if store is not None:
                store.log.record(Leaf.activated(store.config.to_json(), time.time()))

        await asyncio.to_thread(activate)
        return self.datastores()
