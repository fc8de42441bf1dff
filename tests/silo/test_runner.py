"""The model run: padded batches, the LM head's input, and incremental decoding against
reading each row whole."""

from __future__ import annotations

import torch

from silo.runner import ModelRunner, right_padded

ROWS = [[1, 5, 6, 7], [1, 8, 9, 10], [1, 2, 3]]


def _runner(tiny_lm: object, tiny_tokenizer: object) -> ModelRunner:
    return ModelRunner(tiny_lm, tiny_tokenizer, int(tiny_tokenizer.pad_token_id))  # type: ignore[attr-defined]


def test_right_padding_and_mask() -> None:
    ids, mask = right_padded([[4, 5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[4, 5, 6], [7, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_a_padded_batch_scores_each_row_as_alone(tiny_lm: object, tiny_tokenizer: object,
                                                 ) -> None:
    runner = _runner(tiny_lm, tiny_tokenizer)
    lps, hidden = runner.forward(ROWS, [len(r) for r in ROWS])
    for row, lp, h in zip(ROWS, lps, hidden, strict=True):
        alone = torch.log_softmax(
            tiny_lm(input_ids=torch.tensor([row])).logits[0].float(), -1)  # type: ignore[operator]
        torch.testing.assert_close(lp, alone, atol=1e-5, rtol=0)
        assert h.shape == (len(row), tiny_lm.config.hidden_size)  # type: ignore[attr-defined]


def test_the_hook_path_reads_the_same_head_input(tiny_lm: object, tiny_tokenizer: object,
                                                 ) -> None:
    runner = _runner(tiny_lm, tiny_tokenizer)
    assert runner.base_gives_head_input
    want = runner.forward(ROWS, [2, 2, 2])
    runner.base_gives_head_input = False
    got = runner.forward(ROWS, [2, 2, 2])
    for a, b in zip([*want[0], *want[1]], [*got[0], *got[1]], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_prefill_then_decode_equals_reading_the_rows_whole(tiny_lm: object,
                                                           tiny_tokenizer: object) -> None:
    runner = _runner(tiny_lm, tiny_tokenizer)
    runs = [ROWS[:2], ROWS[2:]]  # runs of equal lengths, padded together
    lp, hidden, caches = runner.prefill(runs)
    whole_lp, whole_h = runner.forward(ROWS, [1] * len(ROWS))
    torch.testing.assert_close(lp, torch.cat(whole_lp), atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden, torch.cat(whole_h), atol=1e-5, rtol=0)
    assert [c[0][0].shape[:1] + c[0][0].shape[2:3] for c in caches] == [(2, 4), (1, 3)]
    for _ in range(2):  # two more tokens, each over the growing caches
        runs = [[[*r, 11] for r in run] for run in runs]
        lp, hidden, caches = runner.decode(runs, caches)
        flat = [r for run in runs for r in run]
        whole_lp, whole_h = runner.forward(flat, [1] * len(flat))
        torch.testing.assert_close(lp, torch.cat(whole_lp), atol=1e-4, rtol=0)
        torch.testing.assert_close(hidden, torch.cat(whole_h), atol=1e-4, rtol=0)
    assert [c[0][0].shape[2] for c in caches] == [6, 5]


def test_the_rows_hook_sees_every_pass(tiny_lm: object, tiny_tokenizer: object) -> None:
    runner = _runner(tiny_lm, tiny_tokenizer)
    seen: list[list[list[int]]] = []
    runner.rows_hook = lambda rows: seen.append([list(r) for r in rows])
    _, _, caches = runner.prefill([ROWS[2:]])
    runner.decode([[[*ROWS[2], 4]]], caches)
    runner.forward(ROWS[:1], [1])
    assert seen == [ROWS[2:], [[*ROWS[2], 4]], ROWS[:1]]


def test_decode_feeds_every_token_past_a_cache(tiny_lm: object, tiny_tokenizer: object,
                                               ) -> None:
    """A cached prefix (a RIC passage) and several new tokens per row, of unequal
    counts: as reading each row whole."""
    runner = _runner(tiny_lm, tiny_tokenizer)
    prefix = [7, 8, 9, 10]
    _, _, (short,) = runner.prefill([[prefix[:2]]])
    _, _, (long,) = runner.prefill([[prefix]])
    rows = [[*prefix[:2], 30, 31, 32], [*prefix, 40]]
    lp, hidden, grown = runner.decode([[rows[0]], [rows[1]]], [short, long])
    whole_lp, whole_h = runner.forward(rows, [1, 1])
    torch.testing.assert_close(lp, torch.cat(whole_lp), atol=1e-4, rtol=0)
    torch.testing.assert_close(hidden, torch.cat(whole_h), atol=1e-4, rtol=0)
    assert [c[0][0].shape[2] for c in grown] == [5, 5]
    # and the grown caches carry on
    rows = [[*r, 12] for r in rows]
    lp, _, _ = runner.decode([[rows[0]], [rows[1]]], grown)
    torch.testing.assert_close(lp, torch.cat(runner.forward(rows, [1, 1])[0]), atol=1e-4,
                               rtol=0)
