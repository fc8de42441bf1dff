"""Shared tiny fixtures: a small licensed corpus, a byte-level tokenizer and a tiny Llama.

Everything is built here from text in this file; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datastore.document import Document, LicenseClass

PD_TEXT = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "CYNIC, n. A blackguard whose faulty vision sees things as they are, not as they ought to be.",
    "HYDROGEN: Symbol H. Atomic number 1. The lightest element, a colourless gas.",
]
SW_TEXT = [
    'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n',
    "The heapq module provides an implementation of the heap queue algorithm.",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
]
COPYLEFT_TEXT = [
    "Lay, v. t. To cause to lie down, to place in a horizontal position.",
    "kernel: The essential part of an operating system, responsible for resources.",
]


def make_documents() -> list[Document]:
    docs = []
    for i, t in enumerate(PD_TEXT):
        docs.append(
            Document(f"pd/{i}", t, "Public Domain", LicenseClass.PD, "kjv" if i < 3 else "devil")
        )
    for i, t in enumerate(SW_TEXT):
        docs.append(Document(f"sw/{i}", t, "PSF-2.0", LicenseClass.SW, "stdlib"))
    for i, t in enumerate(COPYLEFT_TEXT):
        docs.append(Document(f"cl/{i}", t, "GPL-2.0-or-later", LicenseClass.COPYLEFT, "gcide"))
    return docs


@pytest.fixture
def documents() -> list[Document]:
    return make_documents()


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    with open(path, "w") as fh:
        for doc in make_documents():
            fh.write(json.dumps(doc.to_json()) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from silo.tokenizer import train_tokenizer

    texts = [d.text for d in make_documents()] * 4
    return train_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    from silo.model import build_lm

    model = build_lm(
        "tiny",
        len(tiny_tokenizer),
        seed=0,
        special_ids=(
            tiny_tokenizer.bos_token_id,
            tiny_tokenizer.eos_token_id,
            tiny_tokenizer.pad_token_id,
        ),
    )
    model.eval()
    torch.manual_seed(0)
    return model
