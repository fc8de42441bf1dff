"""Token streams for training and evaluation.

A split of the corpus becomes one flat array of token ids, documents separated by the
EOS id (so every document starts right after an EOS, as in evaluation). Arrays are
cached as .npy next to a small JSON key, so a second run skips tokenisation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from datastore.document import Document


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    # uint16 halves the cache while every id fits; values in the datastore are int32.
    return np.uint16 if vocab_size <= 65535 else np.uint32


def tokenize_stream(
    docs: Iterable[Document], tokenizer: PreTrainedTokenizerBase, desc: str = "tokenizing"
) -> np.ndarray:
    """EOS + doc1 + EOS + doc2 ...: a flat array of ids (uint16 when the vocabulary fits)."""
    eos = tokenizer.eos_token_id
    assert eos is not None, "tokenizer needs an EOS token"
    parts: list[np.ndarray] = []
    dtype = token_dtype(len(tokenizer))
    with tqdm(desc=desc, unit=" docs") as bar:
        stream = iter(docs)
        while batch := list(islice(stream, 256)):
            encoded = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
            for ids in encoded:
                parts.append(np.asarray([eos, *ids], dtype=dtype))
            bar.update(len(batch))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def cached_stream(
    cache_dir: Path,
    key: dict[str, object],
    docs: Iterable[Document],
    tokenizer: PreTrainedTokenizerBase,
    desc: str,
) -> np.ndarray:
    """`tokenize_stream` memoised on disk under a hash of `key` (memory-mapped on reuse)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = cache_dir / f"{desc}-{digest[:16]}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    stream = tokenize_stream(docs, tokenizer, desc=desc)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, stream)
    tmp.replace(path)
    return stream
