"""A small deterministic KeyEncoder and corpus for datastore tests.

Tokens are whitespace-separated words (ids from a CRC of the word); the key at
position t is the running mean of fixed random word embeddings over tokens 0..t, so it
depends on the whole left context the way an LM's hidden state does.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from datastore.document import Document, LicenseClass

WORDS = [f"w{i}" for i in range(60)]


class SyntheticEncoder:
    """Whitespace tokens, CRC ids, causal running mean of a random embedding table."""

    def __init__(self, dim: int = 16, vocab: int = 1000, seed: int = 0) -> None:
        self._dim = dim
        self.vocab = vocab
        self.table = np.random.default_rng(seed).standard_normal((vocab, dim)).astype(
            np.float32)
        self._fingerprint = f"synthetic-{dim}-{vocab}-{seed}"
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def tokenize(self, text: str) -> list[int]:
        return [zlib.crc32(m.group().encode()) % self.vocab for m in re.finditer(r"\S+", text)]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]

    def encode(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        self.calls += 1
        out = []
        for ids in batch:
            emb = self.table[np.asarray(ids, dtype=np.int64)]
            out.append(np.cumsum(emb, 0) / np.arange(1, len(ids) + 1)[:, None])
        return [o.astype(np.float32) for o in out]


CLASSES = [LicenseClass.PD, LicenseClass.SW, LicenseClass.BY, LicenseClass.COPYLEFT,
           LicenseClass.RESTRICTED]


def corpus(n: int, seed: int = 0, min_words: int = 3, max_words: int = 40) -> list[Document]:
    """n documents with random words, licence classes, three sources and urls."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(min_words, max_words)))
        cls = CLASSES[i % len(CLASSES)]
        source = ["news", "books", "code"][i % 3]
        docs.append(Document(f"doc-{i}", " ".join(words), cls.value, cls, source,
                             f"https://{source}.example/{i}"))
    return docs
