"""The transparency log's service: each datastore's checkpoint, verifier key, entries and
proofs for the public routes, receipts' proofs for the admin ones, and the signature of a
response for the callers who ask for one (`"silo": {"signed": true}`)."""

from __future__ import annotations

import hashlib

from datastore.errors import InvalidInputError, NotFoundError
from datastore.store.datastore import Datastore
from datastore.table.log import LogHead
from datastore.tlog.keys import b64
from datastore.tlog.leaf import Leaf
from datastore.tlog.note import sign_note
from server.protocol import (
    CheckpointRef,
    ConsistencyProof,
    InclusionProof,
    LogEntries,
    LogEntry,
    ReceiptLog,
)
from server.registry import DatastoreRegistry

RESPONSE_NOTE = "silo-signed-response v1"


def checkpoint_ref(head: LogHead | None) -> CheckpointRef | None:
    return None if head is None else CheckpointRef.model_construct(size=head.size,
                                                                   root=b64(head.root))


def checkpoint_header(head: LogHead | None) -> dict[str, str]:
    """`Silo-Checkpoint: <size> <base64 root>`, for clients that know nothing of SILO."""
    return {} if head is None else {"Silo-Checkpoint": f"{head.size} {b64(head.root)}"}


def response_note(store: Datastore, head: LogHead, request: bytes, response: bytes) -> str:
    """The signed note of a response: the checkpoint it was served against and the SHA-256
    of the request's and the response's bodies, signed with the log's key."""
    if store.log.signer is None:
        raise InvalidInputError("this service has no log key (SILO_LOG_KEY_FILE), so it "
                                "cannot sign responses")
    text = (f"{RESPONSE_NOTE}\n{store.log.checkpoint(head).to_text()}"
            f"request {hashlib.sha256(request).hexdigest()}\n"
            f"response {hashlib.sha256(response).hexdigest()}\n")
    return sign_note(text, [store.log.signer])


class LogService:
    """The logs of the registry's datastores."""

    def __init__(self, registry: DatastoreRegistry) -> None:
        self.registry = registry

    def _store(self, name: str | None) -> Datastore:
        return self.registry.datastore(name)

    def checkpoint(self, name: str | None) -> str:
        return self._store(name).log.note()

    def key(self, name: str | None) -> str:
        key = self._store(name).log.verifier_key
        if key is None:
            raise NotFoundError("the log's checkpoints are unsigned: the operator has set "
                                "no SILO_LOG_KEY_FILE")
        return key + "\n"

    def entries(self, name: str | None, start: int, end: int) -> LogEntries:
        out = []
        for index, data in self._store(name).log.entries(start, end):
            fields = Leaf.decode(data).to_json()
            out.append(LogEntry(index=index, leaf=b64(data), **fields))
        return LogEntries(entries=out)

    def inclusion(self, name: str | None, index: int, size: int) -> InclusionProof:
        hashes = self._store(name).log.inclusion(index, size)
        return InclusionProof(index=index, size=size, hashes=[b64(h) for h in hashes])

    def consistency(self, name: str | None, old: int, new: int) -> ConsistencyProof:
        hashes = self._store(name).log.consistency(old, new)
        return ConsistencyProof.model_validate({"from": old, "to": new,
                                                "hashes": [b64(h) for h in hashes]})

    @staticmethod
    def receipt(store: Datastore, index: int | None) -> ReceiptLog | None:
        if index is None:
            return None
        proof = store.log.receipt(index).to_json()
        return ReceiptLog(**proof)
