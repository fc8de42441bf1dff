"""RIC blocks: the overlapping passages of a document that BM25 indexes.

A document is cut into passages of at most B tokens, consecutive passages sharing
`overlap` tokens, so that a span near a cut is still whole in one of them. The tokens
are the LM tokenizer's (the caller hands over their character offsets), so B is the
number of LM tokens a retrieved passage adds to the prompt. Blocks keep the character
span they cover in their document, for attribution snippets.

The block file (`blocks.jsonl`, one JSON object per line) is shared by every BM25
backend: it is the one place in a BM25 index folder that holds passage text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from datastore.errors import CorruptDatastoreError


@dataclass(frozen=True)
class Block:
    """One passage of one document; `text == document.text[char_start:char_end]`."""

    block_id: int
    doc_id: str
    text: str
    char_start: int
    char_end: int

    def __post_init__(self) -> None:
        if self.block_id < 0:
            raise ValueError(f"block_id must be >= 0, got {self.block_id}")
        if not self.doc_id:
            raise ValueError(f"doc_id of block {self.block_id} must not be empty")
        if not 0 <= self.char_start <= self.char_end:
            raise ValueError(
                f"char_start/char_end of block {self.block_id} must satisfy "
                f"0 <= start <= end, got ({self.char_start}, {self.char_end})"
            )


def split_blocks(
    text: str, offsets: Sequence[tuple[int, int]], max_tokens: int, overlap: int
) -> list[tuple[int, int]]:
    """Character spans of the passages of `text`.

    offsets: (n_tokens,) of (start, end) character offsets of each token, in order.
    Returns spans (offsets[s][0], offsets[e - 1][1]) of windows [s, e) of at most
    `max_tokens` tokens starting every `max_tokens - overlap` tokens; the last window
    ends at the last token. No tokens, no passages.
    """
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if max_tokens <= overlap:
        raise ValueError(f"max_tokens must be > overlap ({overlap}), got {max_tokens}")
    for i, (start, end) in enumerate(offsets):
        if not 0 <= start <= end <= len(text):
            raise ValueError(
                f"offsets[{i}] = ({start}, {end}) lies outside the text of length {len(text)}"
            )
    n = len(offsets)
    stride = max_tokens - overlap
    spans = []
    for s in range(0, n, stride):
        e = min(s + max_tokens, n)
        spans.append((offsets[s][0], offsets[e - 1][1]))
        if e == n:
            break
    return spans


def write_blocks(path: Path, blocks: Iterable[Block]) -> None:
    """Write `blocks` to `path` as JSON lines, replacing the file atomically.

    The old file is replaced, not edited, so a block deleted before this call leaves
    no bytes behind in it.
    """
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for block in blocks:
            f.write(json.dumps(asdict(block), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_blocks(path: Path) -> list[Block]:
    """Blocks stored by `write_blocks`, in file order; a bad line names file:line."""
    if not path.is_file():
        raise CorruptDatastoreError(f"{path}: block file is missing")
    blocks = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                blocks.append(Block(**json.loads(line)))
            except (ValueError, TypeError) as e:
                raise CorruptDatastoreError(f"{path}:{lineno}: bad block line: {e}") from None
    return blocks
