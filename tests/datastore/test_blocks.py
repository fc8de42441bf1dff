"""Tests for datastore.blocks: passage spans and the block file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from datastore.blocks import Block, read_blocks, split_blocks, write_blocks
from datastore.errors import CorruptDatastoreError


def word_offsets(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def test_split_blocks_windows_overlap_and_cover_the_text() -> None:
    text = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    spans = split_blocks(text, word_offsets(text), max_tokens=4, overlap=1)
    assert [text[s:e] for s, e in spans] == [
        "w0 w1 w2 w3",
        "w3 w4 w5 w6",
        "w6 w7 w8 w9",
    ]


def test_split_blocks_last_window_ends_at_last_token() -> None:
    text = "a b c d e"
    spans = split_blocks(text, word_offsets(text), max_tokens=3, overlap=1)
    assert [text[s:e] for s, e in spans] == ["a b c", "c d e"]
    spans = split_blocks(text, word_offsets(text), max_tokens=4, overlap=0)
    assert [text[s:e] for s, e in spans] == ["a b c d", "e"]


@pytest.mark.parametrize("n_tokens", [0, 1, 7, 16, 17, 40])
@pytest.mark.parametrize(("max_tokens", "overlap"), [(4, 0), (4, 3), (8, 2), (1, 0)])
def test_split_blocks_against_reference(n_tokens: int, max_tokens: int, overlap: int) -> None:
    offsets = [(2 * i, 2 * i + 1) for i in range(n_tokens)]
    text = " ".join("x" * n_tokens)
    spans = split_blocks(text, offsets, max_tokens, overlap)
    # Reference: every token lies in some window, windows have <= max_tokens tokens,
    # consecutive windows share exactly `overlap` tokens (except possibly the last).
    windows = [[i for i, (s, e) in enumerate(offsets) if a <= s and e <= b] for a, b in spans]
    assert sorted({i for w in windows for i in w}) == list(range(n_tokens))
    assert all(0 < len(w) <= max_tokens for w in windows)
    for prev, nxt in zip(windows, windows[1:], strict=False):
        assert nxt[0] == prev[0] + max_tokens - overlap
    if windows:
        assert windows[-1][-1] == n_tokens - 1


@pytest.mark.parametrize(
    ("max_tokens", "overlap", "field"),
    [(4, 4, "max_tokens"), (2, 5, "max_tokens"), (4, -1, "overlap")],
)
def test_split_blocks_validates_sizes(max_tokens: int, overlap: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        split_blocks("a b", [(0, 1), (2, 3)], max_tokens, overlap)


def test_split_blocks_rejects_offsets_outside_text() -> None:
    with pytest.raises(ValueError, match=r"offsets\[1\]"):
        split_blocks("a b", [(0, 1), (2, 9)], 4, 1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"block_id": -1}, "block_id"),
        ({"doc_id": ""}, "doc_id"),
        ({"char_start": 5, "char_end": 2}, "char_start"),
    ],
)
def test_block_validates_fields(kwargs: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {
        "block_id": 0, "doc_id": "d", "text": "t", "char_start": 0, "char_end": 1,
    }
    with pytest.raises(ValueError, match=field):
        Block(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_block_file_round_trip(tmp_path: Path) -> None:
    blocks = [Block(3, "doc-ü", 'quote " and\nnewline', 10, 29), Block(1, "d2", "", 0, 0)]
    write_blocks(tmp_path / "blocks.jsonl", blocks)
    assert read_blocks(tmp_path / "blocks.jsonl") == blocks
    assert [p.name for p in tmp_path.iterdir()] == ["blocks.jsonl"]


def test_block_file_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "blocks.jsonl"
    write_blocks(path, [Block(0, "d", "t", 0, 1)])
    with path.open("a") as f:
        f.write('{"block_id": 1}\n')
    with pytest.raises(CorruptDatastoreError, match="blocks.jsonl:2"):
        read_blocks(path)
    with pytest.raises(CorruptDatastoreError, match="missing"):
        read_blocks(tmp_path / "absent.jsonl")
