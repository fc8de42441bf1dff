"""The retriever over several datastores: each member's search through the request's one
entry filter, run concurrently, their neighbours side by side (silo.combination), and
provenance that names each neighbour's datastore.

Members are the retrievers of SiloLMs sharing one model; a search of n members costs
about the slowest of them, not their sum, where the backends release the GIL (faiss
does). RIC-LM searches every member's BM25 index and merges the passages
(silo.ric.merge_passages).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch

from datastore.errors import InvalidInputError
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
from silo.combination import columns, contributions
from silo.request import Plan
from silo.retrieval import Retriever, datastore_faults, token_ends
from silo.ric import Passage, merge_passages


class CombinedRetriever(Retriever):
    """The Retriever face over named member retrievers (see the module docstring)."""

    def __init__(self, members: Sequence[tuple[str, Retriever]], codec: Codec) -> None:
        if len(members) < 2:
            raise InvalidInputError("a combination needs at least two datastores")
        # no single datastore; the members' one reference (they share one model)
        super().__init__(None, codec, members[0][1].reference)
        self.names = tuple(name for name, _ in members)
        self.members = tuple(r for _, r in members)
        self._pool = ThreadPoolExecutor(len(members), thread_name_prefix="silo-search")

    def _member_plan(self, plan: Plan, i: int) -> Plan:
        return replace(plan, knn=plan.members[i], members=(), datastores=())

    def passages(self, context: Sequence[int], plan: Plan) -> tuple[Passage, ...]:
        """Every member's BM25 passages for the context, searched at once, merged by
        `plan.ric.merge` (silo.ric.merge_passages), each naming its datastore."""
        futures = [self._pool.submit(r.passages, context, self._member_plan(plan, i))
                   for i, r in enumerate(self.members)]
        found = [tuple(replace(p, datastore=name) for p in f.result())
                 for f, name in zip(futures, self.names, strict=True)]
        return merge_passages(found, plan.ric.k, plan.ric.merge)

    def neighbours(self, queries: np.ndarray, plan: Plan, previous: np.ndarray | None = None,
                   tokens: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(q, sum k) distances and entry ids, each member's k_i columns in order (entry
        ids are the member's own); every member searched at once."""
        futures = [self._pool.submit(r.neighbours, queries, self._member_plan(plan, i))
                   for i, r in enumerate(self.members)]
        found = [f.result() for f in futures]
        self.searches.count(len(queries), len(queries))
        return (np.concatenate([d for d, _ in found], axis=1),
                np.concatenate([i for _, i in found], axis=1))

    def search(self, chunk: Chunk, queries: torch.Tensor, plan: Plan,
               previous: np.ndarray | None = None, tokens: np.ndarray | None = None) -> None:
        """The chunk's neighbours in every member and the tokens they vote for, and
        their distances to the reference (searched beside them) where the plan reads them."""
        baseline = self.baseline_beside(queries, plan)
        dist, ids = self.neighbours(queries.numpy(), plan)
        values = np.empty_like(ids)
        for c, r in zip(columns(plan.members), self.members, strict=True):
            assert r.datastore is not None
            with datastore_faults("the kNN search"):
                values[:, c] = r.datastore.values(np.ascontiguousarray(ids[:, c]))
        chunk.distances = torch.from_numpy(dist)
        chunk.entry_ids = ids
        chunk.values = torch.from_numpy(values)
        chunk.baseline = None if baseline is None else baseline.result()

    def provenance(self, chunk: Chunk, targets: torch.Tensor, plan: Plan,
                   ) -> list[TokenProvenance]:
        """Per position: the neighbours of every member that voted for the target, with
        a_i times their mass, best first, and each member's weight a_i."""
        refs = [tuple(PassageRef(p.block_id, p.doc_id, p.score, p.text, p.datastore)
                      for p in chunk.passages[i]) for i in range(len(targets))]
        if chunk.distances is None or chunk.values is None or chunk.entry_ids is None:
            return [TokenProvenance((), r) for r in refs]  # RIC-LM alone
        mass, weights = contributions(chunk.distances, chunk.values, targets, plan.members,
                                      plan.vote, chunk.context)
        found: list[list[Neighbour]] = [[] for _ in range(len(targets))]
        for c, name, r in zip(columns(plan.members), self.names, self.members, strict=True):
            assert r.datastore is not None
            snap = r.datastore.snapshot
            block, ids = mass[:, c].numpy(), chunk.entry_ids[:, c]
            with datastore_faults("the attribution lookup"):
                rows = snap.rows_of_entries(ids)
            for i, j in zip(*np.nonzero(block > 0), strict=True):
                found[i].append(Neighbour(int(ids[i, j]), snap.doc_ids[int(rows[i, j])],
                                          float(chunk.distances[i, c][j]),
                                          float(block[i, j]), name))
        w = weights.numpy()
        return [TokenProvenance(tuple(sorted(found[i], key=lambda n: -n.contribution)), refs[i],
                                tuple((name, float(w[i, m])) for m, name in enumerate(self.names)))
                for i in range(len(targets))]

    def attribution(self, ids: Sequence[int], provs: Sequence[TokenProvenance],
                    ) -> Attribution:
        return attribute(*token_ends(self.codec, ids), provs, self.describe)

    def describe(self, doc_id: str, entry_id: int | None,
                 datastore: str | None = None) -> DocumentInfo:
        return self.members[self.names.index(datastore or self.names[0])].describe(
            doc_id, entry_id)
