"""Opt-out selectors and receipts."""

from __future__ import annotations

import numpy as np
import pytest

from datastore.errors import InvalidSelectorError, NotFoundError
from datastore.optout import OptOutSelector, Receipt, record_optout
from datastore.table.records import DocumentRecord
from tests.datastore.conftest import OpenTable
from tests.datastore.synthetic import corpus


@pytest.mark.parametrize("body", [
    {}, {"doc_ids": []}, {"doc_ids": "doc-1"}, {"doc_ids": ["a"], "source": "s"},
    {"doc_ids": [""]}, {"source": "  "}, {"url_prefix": 3}, {"doc_id": ["a"]},
])
def test_bad_selectors_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(InvalidSelectorError):
        OptOutSelector.from_json(body)


def test_selector_and_receipt_roundtrip() -> None:
    sel = OptOutSelector.from_json({"url_prefix": "https://x/", "reason": "gdpr"})
    assert sel.to_json() == {"url_prefix": "https://x/"} and sel.reason == "gdpr"
    receipt = Receipt("o1", ("a",), 3, 1, 5.0, sel.to_json(), "gdpr")
    row = ("o1", '{"url_prefix": "https://x/"}', "gdpr", '["a"]', 3, 1, 5.0, None, None)
    assert Receipt.from_row(row) == receipt
    assert receipt.to_json()["purged_at"] is None
    with pytest.raises(ValueError, match="entries_removed"):
        Receipt("o1", (), -1, 0, 0.0, {})


def test_optout_is_committed_before_the_receipt_returns(new_table: OpenTable) -> None:
    """On either table, another connection sees the tombstones and the receipt as soon
    as record_optout returns, and the change sequence moved."""
    table, reader = new_table(), new_table()
    docs = corpus(9)
    table.insert([DocumentRecord.new(d, i, (2 * i, 2 * i + 2), (i, i + 1))
                  for i, d in enumerate(docs)], [d.text for d in docs])
    receipt, rows, seq, _ = record_optout(OptOutSelector(source="books"), table)
    assert receipt.doc_ids == ("doc-1", "doc-4", "doc-7") and rows.tolist() == [1, 4, 7]
    assert (receipt.entries_removed, receipt.blocks_removed) == (6, 3)
    assert reader.change_seq() == seq > 0
    assert np.flatnonzero(reader.snapshot().removed).tolist() == [1, 4, 7]
    assert Receipt.from_row(reader.optout_rows(receipt.optout_id)[0]) == receipt
    assert reader.get("doc-4").state == "removed"
    with pytest.raises(NotFoundError, match="doc-99"):
        record_optout(OptOutSelector(doc_ids=("doc-2", "doc-99")), table)
    assert not reader.snapshot().removed[2]
