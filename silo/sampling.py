"""Sampling the next token: total over every temperature and top_p a request may carry.

The rules (the README's API section states them for clients):

- temperature below `GREEDY_BELOW` (1e-5, vLLM's rule) is greedy decoding: the most
  likely token, ties to the lowest id. Dividing by a denormal temperature would overflow
  to inf, and softmax of inf is nan; greedy is the limit it tends to.
- otherwise the draw is from softmax(log p / T), computed in log space: the logits are
  shifted by their row maximum, so the most likely token has weight exp(0) = 1 and the
  row always has positive mass, however small the other probabilities underflow.
- top_p keeps the smallest set of most likely tokens whose mass reaches top_p, and always
  at least the most likely token (ties to the lowest id), so the smallest positive
  top_p is greedy too.
- a row with a nan, or with no finite log-probability, has no distribution to draw from:
  that is a bug upstream, raised as a plain ValueError (never a silent token).

Each request draws with its own `torch.Generator`, so a seeded request samples the same
tokens whatever else shares its batch.
"""

from __future__ import annotations

import torch

GREEDY_BELOW = 1e-5


def sample(log_probs: torch.Tensor, temperature: float, top_p: float,
           gen: torch.Generator) -> torch.Tensor:
    """(m, V) log-probs -> (m,) token ids under the rules above."""
    if torch.isnan(log_probs).any() or not torch.isfinite(log_probs).any(dim=1).all():
        raise ValueError("a next-token distribution has a nan or no finite log-probability")
    if temperature < GREEDY_BELOW:
        return log_probs.argmax(dim=1)
    weights = nucleus_weights(log_probs.float() / temperature, top_p)
    return torch.multinomial(weights, 1, generator=gen)[:, 0]


def nucleus_weights(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(m, V) logits -> (m, V) unnormalised weights in [0, 1]: exp(logit - row max),
    zero outside the top-p nucleus. The row maximum always has weight 1."""
    logits = logits - logits.max(dim=1, keepdim=True).values
    if top_p >= 1.0:
        return logits.exp()  # -inf -> 0, the maximum -> 1 (sample rejects nan rows)
    # ranked by logit, not by weight: two logits an ulp apart may share a weight, and the
    # top token must be argmax's (ties to the lowest id)
    sorted_l, order = logits.sort(dim=1, descending=True, stable=True)
    sorted_w = sorted_l.exp()
    total = sorted_w.sum(dim=1, keepdim=True)  # >= 1
    before = (sorted_w.cumsum(1) - sorted_w) / total  # mass ranked above, in [0, 1)
    keep = before < top_p
    keep[:, 0] = True  # the most likely token survives any top_p
    sorted_w = torch.where(keep, sorted_w, torch.zeros_like(sorted_w))
    return torch.zeros_like(logits).scatter(1, order, sorted_w)
