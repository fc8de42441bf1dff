"""Synthetic corpora and a fast key encoder for the datastore benchmarks.

Documents are lists of integer "words"; the encoder turns word w at position t into
a cluster centre (w mod 64) plus Gaussian noise, so keys have the clustered structure
IVF is built for, and building a 10M-entry store costs seconds, not an LM's hours.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from datastore.document import Document, LicenseClass

CLASSES = list(LicenseClass)


class ClusterEncoder:
    """KeyEncoder stand-in: ids are the words, keys are centre[id % 64] + noise."""

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._dim = dim
        self.centres = (rng.standard_normal((64, dim)) * 2).astype(np.float32)
        self.rng = rng

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return f"cluster-encoder-{self._dim}"

    def tokenize(self, text: str) -> list[int]:
        return [int(w) for w in text.split()]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        out, at = [], 0
        for word in text.split(" "):
            out.append((at, at + len(word)))
            at += len(word) + 1
        return out

    def encode(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return [self.centres[np.asarray(ids) % 64]
                + self.rng.standard_normal((len(ids), self._dim), dtype=np.float32)
                for ids in batch]


def documents(n_docs: int, tokens_per_doc: int, seed: int = 0) -> Iterator[Document]:
    """n_docs documents of `tokens_per_doc` integer words; classes and sources cycle."""
    rng = np.random.default_rng(seed)
    for i in range(n_docs):
        words = rng.integers(0, 5000, tokens_per_doc)
        cls = CLASSES[i % len(CLASSES)]
        yield Document(f"d{i}", " ".join(map(str, words)), cls.value, cls, f"src{i % 10}",
                       f"https://src{i % 10}.example/{i}")
