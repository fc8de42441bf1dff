import math

import pytest
import torch

from datastore.document import Document, LicenseClass
from silo.config import EvalConfig
from silo.evaluate import Window, evaluate_domains, score_windows, sliding_windows


@pytest.mark.parametrize(
    ("n", "window", "stride"),
    [(1, 4, 2), (10, 4, 2), (10, 4, 4), (11, 5, 3), (3, 8, 4), (100, 16, 1)],
)
def test_every_target_is_scored_exactly_once_with_enough_context(n, window, stride) -> None:
    ids = list(range(n + 1))  # ids[0] is the EOS; targets are ids[1..n]
    scored = []
    for w in sliding_windows(ids, window, stride):
        assert len(w.ids) - 1 <= window
        targets = w.ids[len(w.ids) - w.scored :]
        for t in targets:
            # context = tokens before t inside this window
            context = w.ids.index(t)
            assert context >= min(t, window - stride)
        scored.extend(targets)
    assert scored == list(range(1, n + 1))


def by_hand(model, ids: list[int]) -> tuple[float, int]:
    """Mean NLL of ids[1:] given all preceding tokens, one log-softmax at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0]
    total = 0.0
    for t in range(len(ids) - 1):
        row = logits[t].double()
        total -= (row[ids[t + 1]] - torch.logsumexp(row, 0)).item()
    return total, len(ids) - 1


def test_perplexity_is_exp_mean_nll_by_hand(tiny_lm, tiny_tokenizer) -> None:
    text = "And God said, Let there be light: and there was light."
    doc = Document("d", text, "Public Domain", LicenseClass.PD, "kjv")
    ids = [
        tiny_tokenizer.eos_token_id,
        *tiny_tokenizer(text, add_special_tokens=False)["input_ids"],
    ]
    nll, n = by_hand(tiny_lm, ids)
    [result] = evaluate_domains(tiny_lm, tiny_tokenizer, [doc], EvalConfig(window=64, stride=32))
    assert result.tokens == n == len(ids) - 1
    assert result.perplexity == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_batched_sliding_windows_match_one_window_at_a_time(
    tiny_lm, tiny_tokenizer, documents
) -> None:
    cfg = EvalConfig(window=8, stride=3, batch_size=4)
    windows: list[Window] = []
    for d in documents[:4]:
        ids = [
            tiny_tokenizer.eos_token_id,
            *tiny_tokenizer(d.text, add_special_tokens=False)["input_ids"],
        ]
        windows.extend(sliding_windows(ids, cfg.window, cfg.stride))
    reference = 0.0
    for w in windows:
        nll_row = by_hand_tail(tiny_lm, list(w.ids), w.scored)
        reference += nll_row
    total, count = score_windows(
        tiny_lm, windows, batch_size=cfg.batch_size, pad_id=tiny_tokenizer.pad_token_id
    )
    assert count == sum(w.scored for w in windows)
    assert total == pytest.approx(reference, rel=1e-5)


def by_hand_tail(model, ids: list[int], scored: int) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].double(), -1)
    n = len(ids) - 1
    return -sum(logp[t, ids[t + 1]].item() for t in range(n - scored, n))


def test_domains_are_separate_and_budgeted(tiny_lm, tiny_tokenizer, documents) -> None:
    results = evaluate_domains(
        tiny_lm,
        tiny_tokenizer,
        documents,
        EvalConfig(window=16, stride=8),
        max_tokens_per_domain=20,
    )
    assert [r.domain for r in results] == sorted({d.source for d in documents})
    assert all(r.tokens <= 20 for r in results)


def test_eval_config_validation() -> None:
    with pytest.raises(ValueError, match="stride"):
        EvalConfig(window=8, stride=9)
