"""The retriever: everything SiloLM asks of its datastore, always through the request's
one entry filter.

    passages     BM25 passages for a context (RIC-LM), tokenized once and cached
    neighbours   the k nearest entries of kNN queries, or with pointers their followed
                 successors (datastore.pointers), and the tokens those entries vote for
    reference    each kNN query's distance to a reference index over the LM's own text,
                 where a relevance weight is measured from it (silo.relevance)
    provenance   per token, the neighbours that voted for it and the passages in context
    attribution  per sentence of a text, the documents behind it

Datastore faults surface as `UnavailableError` (HTTP 503): a search that fails is never
replaced by an answer without the filter. The reference holds none of the datastore's
text and is searched without a filter: it is text the LM was trained on, and it reads
nothing a request may not see.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from datastore.errors import SiloError, UnavailableError
from datastore.store.datastore import Datastore
from silo.attribution import (
    Attribution,
    DocumentInfo,
    Neighbour,
    PassageRef,
    TokenProvenance,
    attribute,
)
from silo.batch import Chunk
from silo.codec import Codec
from silo.knnlm import target_neighbour_mass
from silo.request import Plan
from silo.ric import Passage, query_ids

PASSAGE_CACHE = 65_536  # tokenized RIC blocks kept in memory


def token_ends(codec: Codec, ids: Sequence[int]) -> tuple[str, list[int]]:
    """The text of `ids` and the character offset where each token ends."""
    ends, text = [], ""
    for i in range(len(ids)):
        text = codec.decode(ids[:i + 1])  # quadratic, but only on the attribution path
        ends.append(len(text))
    return text, ends


@dataclass
class SearchCounts:
    """kNN positions served and how many of them needed a search (the others followed
    pointers); for measuring, not for control (updated without a lock)."""

    searched: int = 0
    positions: int = 0

    def count(self, searched: int, positions: int) -> None:
        self.searched += searched
        self.positions += positions


@contextmanager
def datastore_faults(what: str) -> Iterator[None]:
    """A datastore call that fails unexpectedly is a datastore fault (503), not the
    caller's bad input and not an answer computed without it."""
    try:
        yield
    except SiloError:
        raise
    except Exception as e:
        raise UnavailableError(f"{what} failed: {type(e).__name__}: {e}") from e


class Retriever:
    """SiloLM's side of its datastore (None: the LM alone, and nothing here is called)
    and of the reference, where it has one."""

    def __init__(self, datastore: Datastore | None, codec: Codec,
                 reference: Datastore | None = None) -> None:
        self.datastore = datastore
        self.codec = codec
        self.reference = reference
        # the reference is searched beside the datastore (faiss releases the GIL)
        self._beside = None if reference is None else ThreadPoolExecutor(
            1, thread_name_prefix="silo-reference")
        self.searches = SearchCounts()
        self._passage_ids: dict[int, tuple[int, ...]] = {}  # block id -> tokens, bounded

    def _store(self) -> Datastore:
        assert self.datastore is not None, "a plan that uses the datastore needs one"
        return self.datastore

    # ---- RIC-LM --------------------------------------------------------------------------

    def passages(self, context: Sequence[int], plan: Plan) -> tuple[Passage, ...]:
        """Top-k BM25 passages for the context's last q tokens, through the filter."""
        q = query_ids(context, plan.ric.query_tokens, self.codec.special)
        text = self.codec.decode(q).strip()
        if not text:
            return ()
        with datastore_faults("the BM25 search"):
            hits = self._store().bm25_search(text, plan.ric.k, plan.filter)
        out = []
        for h in hits:
            ids = self._passage_ids.get(h.block_id)
            if ids is None:
                ids = tuple(self.codec.encode(h.text))
                if len(self._passage_ids) >= PASSAGE_CACHE:
                    self._passage_ids.clear()
                self._passage_ids[h.block_id] = ids
            out.append(Passage(h.block_id, h.doc_id, float(h.score), h.text, ids))
        return tuple(out)

    # ---- kNN-LM --------------------------------------------------------------------------

    def neighbours(self, queries: np.ndarray, plan: Plan, previous: np.ndarray | None = None,
                   tokens: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(q, k) distances and entry ids: a search per query, or with `plan.knn.pointers`
        the successors of each query's `previous` neighbours that voted for its `tokens`
        where enough of them remain (datastore.pointers)."""
        store = self._store()
        with datastore_faults("the kNN search"):
            if not plan.knn.pointers:
                self.searches.count(len(queries), len(queries))
                return store.knn_search(queries, plan.knn.k, plan.filter)
            dist, ids, searched = store.follow(queries, previous, tokens, plan.knn.k,
                                               plan.filter, plan.knn.pointers)
        self.searches.count(int(searched.sum()), len(queries))
        return dist, ids

    def attach(self, chunk: Chunk, dist: np.ndarray, ids: np.ndarray,
               baseline: Future[torch.Tensor] | None = None) -> None:
        """Set a chunk's neighbours and the tokens they vote for, and its distances to
        the reference once `baseline` (from `baseline_beside`) has them."""
        with datastore_faults("the kNN search"):
            values = self._store().values(ids)
        chunk.distances = torch.from_numpy(dist)
        chunk.entry_ids = ids
        chunk.values = torch.from_numpy(values)
        if baseline is not None:
            chunk.baseline = baseline.result()

    def search(self, chunk: Chunk, queries: torch.Tensor, plan: Plan,
               previous: np.ndarray | None = None, tokens: np.ndarray | None = None) -> None:
        """The chunk's kNN neighbours (one row per query, in order), and their distances
        to the reference where the plan reads them (searched at the same time)."""
        baseline = self.baseline_beside(queries, plan)
        self.attach(chunk, *self.neighbours(queries.numpy(), plan, previous, tokens), baseline)

    def baseline_beside(self, queries: torch.Tensor, plan: Plan,
                        ) -> Future[torch.Tensor] | None:
        """`baseline` on a thread of its own where the plan reads the reference."""
        if not plan.reads_reference:
            return None
        assert self._beside is not None, "a plan that reads the reference needs one"
        return self._beside.submit(self.baseline, queries.numpy())

    def baseline(self, queries: np.ndarray) -> torch.Tensor:
        """(q,) float64 each query's distance d_ref to its nearest entry of the reference
        (silo.relevance; inf where it has none)."""
        assert self.reference is not None, "a plan that reads the reference needs one"
        with datastore_faults("the reference search"):
            dist, ids = self.reference.knn_search(queries, 1)
        return torch.from_numpy(np.where(ids[:, 0] >= 0, dist[:, 0], np.inf)
                                .astype(np.float64))

    # ---- attribution ---------------------------------------------------------------------

    def provenance(self, chunk: Chunk, targets: torch.Tensor, plan: Plan,
                   ) -> list[TokenProvenance]:
        """Per position: the neighbours that voted for the target, with lam w * mass, best
        first, and the RIC passages in context."""
        out = []
        neighbours: list[tuple[Neighbour, ...]] = [() for _ in range(len(targets))]
        if chunk.values is not None and chunk.distances is not None:
            assert chunk.entry_ids is not None
            lam = plan.knn.row_lam(chunk.distances, chunk.values, chunk.context_of(0))
            if isinstance(lam, torch.Tensor):
                lam = lam[:, None]
            mass = lam * target_neighbour_mass(chunk.distances, chunk.values, targets,
                                               plan.knn.temperature)
            snap = self._store().snapshot
            with datastore_faults("the attribution lookup"):
                rows = snap.rows_of_entries(chunk.entry_ids)
            for i, j in zip(*np.nonzero(mass.numpy() > 0), strict=True):
                neighbours[i] += (Neighbour(int(chunk.entry_ids[i, j]),
                                            snap.doc_ids[int(rows[i, j])],
                                            float(chunk.distances[i, j]), float(mass[i, j])),)
        for i in range(len(targets)):
            ranked = tuple(sorted(neighbours[i], key=lambda n: -n.contribution))
            refs = tuple(PassageRef(p.block_id, p.doc_id, p.score, p.text, p.datastore)
                         for p in chunk.passages[i])
            out.append(TokenProvenance(ranked, refs))
        return out

    def attribution(self, ids: Sequence[int], provs: Sequence[TokenProvenance],
                    ) -> Attribution:
        """Per-sentence attribution of the text of `ids` (one provenance per id)."""
        return attribute(*token_ends(self.codec, ids), provs, self.describe)

    def describe(self, doc_id: str, entry_id: int | None,
                 datastore: str | None = None) -> DocumentInfo:
        """What attribution shows of one of this datastore's documents."""
        store = self._store()
        doc = store.snapshot.document(doc_id)
        with datastore_faults("the attribution lookup"):
            info = None if entry_id is None else store.entry_info([entry_id])[0]
        return DocumentInfo(doc.source, doc.license_class.value,
                            None if info is None else info.snippet)
