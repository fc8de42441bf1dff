"""Opt-out selectors and receipts."""

from __future__ import annotations

import pytest

from datastore.errors import InvalidSelectorError
from datastore.optout import OptOutSelector, Receipt


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
    row = ("o1", '{"url_prefix": "https://x/"}', "gdpr", '["a"]', 3, 1, 5.0, None)
    assert Receipt.from_row(row) == receipt
    assert receipt.to_json()["purged_at"] is None
    with pytest.raises(ValueError, match="entries_removed"):
        Receipt("o1", (), -1, 0, 0.0, {})
