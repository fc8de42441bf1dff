"""The state of a kNN index shared by many replicas (a Milvus server), kept in the
document table: which entries the index holds and the fence a search sees them at
(`index_state`), the rows whose index delete is not yet behind it (`pending_deletes`),
and the RIC block spans other replicas refresh their text indexes from."""

from __future__ import annotations

from collections.abc import Sequence

from datastore.table.core import TableCore
from datastore.table.schema import BUMP


class SharedIndexState(TableCore):
    """The shared index's bookkeeping in the table (a part of `DocumentTable`)."""

    def index_state(self) -> tuple[int, int, list[int]]:
        """(published entries, fence, rows pending an index delete) of a shared index."""
        published, fence = self._read("SELECT published, fence FROM index_state WHERE id = 0")[0]
        pending = [r[0] for r in self._read("SELECT doc_row FROM pending_deletes "
                                            "ORDER BY doc_row")]
        return int(published), int(fence), pending

    def publish_text(self, spans: Sequence[tuple[int, str, int, int]], upto_row: int) -> int:
        """Record RIC block spans (block_id, doc_id, char_start, char_end) and that rows
        [0, upto_row) are in the text indexes. Returns the change sequence."""
        with self._transaction() as run:
            if spans:
                run("INSERT INTO block_spans (block_id, doc_id, char_start, char_end) "
                    "VALUES (?,?,?,?) ON CONFLICT DO NOTHING", list(spans), True)
            run("UPDATE index_state SET text_published = ? WHERE id = 0 AND "
                "text_published < ?", (upto_row, upto_row))
            return int(run(BUMP)[0][0])

    def text_published(self) -> int:
        return int(self._read("SELECT text_published FROM index_state WHERE id = 0")[0][0])

    def block_spans(self, start: int, end: int) -> list[tuple[int, str, int, int]]:
        """(block_id, doc_id, char_start, char_end) of block ids [start, end)."""
        return [tuple(r) for r in self._read(  # type: ignore[misc]
            "SELECT block_id, doc_id, char_start, char_end FROM block_spans WHERE "
            "block_id >= ? AND block_id < ? ORDER BY block_id", (start, end))]

    def index_written(self, fence: int, published: int | None = None,
                      deleted: Sequence[int] = ()) -> int:
        """Record index writes behind `fence`: entries [0, published) are in the index
        (None: unchanged) and the rows `deleted` left it. Returns the change sequence."""
        with self._transaction() as run:
            run("UPDATE index_state SET fence = CASE WHEN fence > ? THEN fence ELSE ? END "
                "WHERE id = 0", (fence, fence))
            if published is not None:
                run("UPDATE index_state SET published = ? WHERE id = 0", (published,))
            if deleted:
                run("DELETE FROM pending_deletes WHERE doc_row = ?",
                    [(r,) for r in deleted], True)
            return int(run(BUMP)[0][0])
