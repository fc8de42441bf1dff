"""Streaming build and incremental add: documents -> kNN entries, table rows, blocks.

Documents are tokenized, encoded by the caller's `KeyEncoder` in batches, and their
entries appended to the key/value files every `flush_entries` entries; each flush is
committed to the document table in one transaction *after* the rows are on disk. So
memory stays bounded by one flush whatever the corpus size, and a crashed build
restarts where the table says it stopped: rows past the last committed document are
truncated and committed documents are skipped.

The BM25 and n-gram indexes are derived from the stored text in the table
(`sync_text_indexes`), so they too can be brought up to date after a crash.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from datastore.config import DatastoreConfig
from datastore.document import Document
from datastore.encoder import KeyEncoder
from datastore.errors import ConflictError, InvalidInputError
from datastore.knn import KeyValueStore
from datastore.table.base import DocumentTable
from datastore.table.records import DocumentRecord, TableSnapshot


@dataclass(frozen=True)
class EncodedDocument:
    """One document's entries: keys (n, dim) float16, values (n,) int32 next tokens,
    charpos (n,) int32 char offset of each next token; n = tokens - 1 (0 if < 2)."""

    doc: Document
    keys: np.ndarray
    values: np.ndarray
    charpos: np.ndarray
    n_blocks: int
    n_tokens: int


@dataclass(frozen=True)
class IngestStats:
    """What one build or add call wrote."""

    documents: int
    skipped: int
    entries: int
    blocks: int
    tokens: int
    seconds: float

    def __post_init__(self) -> None:
        for name in ("documents", "skipped", "entries", "blocks", "tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


def document_entries(ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                     hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries of one document of L tokens: hidden (L, dim) -> keys (L-1, dim) = hidden
    state at t, values (L-1,) = token t+1, charpos (L-1,) = where token t+1 starts."""
    if len(ids) < 2:
        return hidden[:0], np.zeros(0, np.int32), np.zeros(0, np.int32)
    charpos = np.array([s for s, _ in offsets[1:]], dtype=np.int32)
    return hidden[:-1], np.asarray(ids[1:], dtype=np.int32), charpos


def block_spans(text: str, offsets: Sequence[tuple[int, int]],
                config: DatastoreConfig) -> list[tuple[int, int]]:
    """Character spans of the document's RIC blocks ([] without a BM25 index)."""
    if not config.bm25:
        return []
    try:
        from datastore.blocks import split_blocks
    except ImportError:
        return []
    if not text:
        return []
    return split_blocks(text, offsets, config.block_tokens, config.block_overlap)


def _check(doc: Document) -> None:
    if not isinstance(doc.doc_id, str) or not doc.doc_id.strip():
        raise InvalidInputError(f"document id must be a non-empty string, got {doc.doc_id!r}")
    if not isinstance(doc.text, str):
        raise InvalidInputError(f"document {doc.doc_id!r}: text must be a string")


def encode_documents(docs: Iterable[Document], encoder: KeyEncoder,
                     config: DatastoreConfig) -> Iterator[EncodedDocument]:
    """Tokenize and encode documents `encode_batch` at a time, in input order."""
    batch: list[Document] = []
    for doc in docs:
        _check(doc)
        batch.append(doc)
        if len(batch) == config.encode_batch:
            yield from _encode_batch(batch, encoder, config)
            batch = []
    if batch:
        yield from _encode_batch(batch, encoder, config)


def _encode_batch(batch: list[Document], encoder: KeyEncoder,
                  config: DatastoreConfig) -> list[EncodedDocument]:
    both = getattr(encoder, "tokenize_with_offsets", None)  # one tokenizer pass, if offered
    if both is not None:
        ids, offsets = map(list, zip(*(both(d.text) for d in batch), strict=True))
    else:
        ids = [encoder.tokenize(d.text) for d in batch]
        offsets = [encoder.token_offsets(d.text) for d in batch]
    # single-token documents have no entry; do not spend a forward pass on them
    todo = [i for i, t in enumerate(ids) if len(t) >= 2]
    hidden = dict(zip(todo, encoder.encode([ids[i] for i in todo]) if todo else [],
                      strict=True))
    out = []
    for i, doc in enumerate(batch):
        h = hidden.get(i, np.zeros((0, encoder.dim), np.float32))
        keys, values, charpos = document_entries(ids[i], offsets[i], h)
        keys = keys.astype(np.float16)  # stored fp16: convert early, halve what is buffered
        out.append(EncodedDocument(doc, keys, values, charpos,
                                   len(block_spans(doc.text, offsets[i], config)), len(ids[i])))
    return out


class _Pending:
    """Encoded documents waiting for the next flush, with their id ranges assigned."""

    def __init__(self, snapshot: TableSnapshot) -> None:
        self.next_row = len(snapshot.doc_ids)
        self.next_entry = snapshot.n_entries
        self.next_block = snapshot.n_blocks
        self.items: list[EncodedDocument] = []
        self.records: list[DocumentRecord] = []
        self.entries = 0

    def push(self, enc: EncodedDocument) -> None:
        n = len(enc.values)
        self.records.append(DocumentRecord.new(
            enc.doc, self.next_row, (self.next_entry, self.next_entry + n),
            (self.next_block, self.next_block + enc.n_blocks)))
        self.items.append(enc)
        self.next_row += 1
        self.next_entry += n
        self.next_block += enc.n_blocks
        self.entries += n

    def flush(self, table: DocumentTable, kv: KeyValueStore) -> None:
        """Rows to disk (fsync'd), then the table rows in one transaction."""
        if not self.items:
            return
        assert len(kv) == self.records[0].entry_start, "key files out of step with the table"
        kv.append(np.concatenate([e.keys for e in self.items]).reshape(-1, kv.dim),
                  np.concatenate([e.values for e in self.items]),
                  np.concatenate([e.charpos for e in self.items]))
        table.insert(self.records, [e.doc.text for e in self.items])
        self.items, self.records, self.entries = [], [], 0


def ingest(docs: Iterable[Document], encoder: KeyEncoder, table: DocumentTable,
           kv: KeyValueStore, config: DatastoreConfig, skip_existing: bool,
           progress: bool = True) -> IngestStats:
    """Append documents to a datastore's table and key files (not yet to its indexes).

    skip_existing: True when resuming a build (documents already committed are skipped);
    False for an add, where an id already present is a ConflictError.
    """
    start = time.perf_counter()
    snapshot = table.snapshot()
    kv.truncate(snapshot.n_entries)  # rows of a flush that never reached the table
    pending = _Pending(snapshot)
    seen: set[str] = set()
    skipped = documents = blocks = tokens = 0
    bar: Any = tqdm(unit="tok", unit_scale=True, disable=not progress, desc="datastore")
    for chunk in _chunks(docs, config.encode_batch):
        fresh = _new_documents(chunk, table, seen, skip_existing)
        skipped += len(chunk) - len(fresh)
        for enc in encode_documents(fresh, encoder, config):
            pending.push(enc)
            documents += 1
            blocks += enc.n_blocks
            tokens += enc.n_tokens
            bar.update(enc.n_tokens)
        if pending.entries >= config.flush_entries:
            pending.flush(table, kv)
    pending.flush(table, kv)
    bar.close()
    return IngestStats(documents, skipped, pending.next_entry - snapshot.n_entries, blocks,
                       tokens, time.perf_counter() - start)


def _chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _new_documents(chunk: list[Document], table: DocumentTable, seen: set[str],
                   skip_existing: bool) -> list[Document]:
    """Drop (resume) or refuse (add) ids already stored or repeated in the input."""
    for doc in chunk:
        _check(doc)
    stored = set(table.existing([d.doc_id for d in chunk]))
    fresh = []
    for doc in chunk:
        if doc.doc_id in seen and not skip_existing:
            raise ConflictError(f"document id {doc.doc_id!r} appears twice in the input")
        if doc.doc_id in stored or doc.doc_id in seen:
            if not skip_existing:
                raise ConflictError(f"document {doc.doc_id!r} is already in the datastore")
            continue
        seen.add(doc.doc_id)
        fresh.append(doc)
    return fresh


def index_text(table: DocumentTable, encoder: KeyEncoder, config: DatastoreConfig,
               bm25: Any, ngram: Any, start_row: int, batch_blocks: int = 4096) -> int:
    """Add the blocks and texts of live documents from `start_row` on to the BM25 and
    n-gram indexes (either may be None) and save them. Returns the next row to index.
    Block ids are the ones the table assigned; spans are recomputed from the text."""
    from datastore.blocks import Block

    pending: list[Any] = []
    next_row = start_row
    for row, doc_id, state, first_block, text in table.texts(start_row):
        next_row = row + 1
        if state != "live" or text is None:
            continue
        if bm25 is not None:
            spans = block_spans(text, encoder.token_offsets(text), config)
            pending += [Block(first_block + i, doc_id, text[s:e], s, e)
                        for i, (s, e) in enumerate(spans)]
            if len(pending) >= batch_blocks:
                bm25.add(pending)
                pending = []
        if ngram is not None:
            ngram.add(doc_id, text)
    if bm25 is not None:
        if pending:
            bm25.add(pending)
        bm25.save()
    if ngram is not None:
        ngram.save()
    return next_row
