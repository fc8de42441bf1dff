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

The draw is by inverse CDF: one uniform number per row from the request's own
`torch.Generator`, and the first token whose cumulative weight exceeds it times the
total. So a seeded request samples the same tokens whatever else shares its batch, and
the rows of a whole batch are drawn in one call (`sample_many`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Draw:
    """Rows start..end-1 of a batch, drawn under one request's settings, each row with
    its generator (one per choice, so a choice's tokens do not depend on how many
    choices the request asks for)."""

    start: int
    end: int
    temperature: float
    top_p: float
    generators: tuple[torch.Generator, ...]


def sample(log_probs: torch.Tensor, temperature: float, top_p: float,
           gen: torch.Generator) -> torch.Tensor:
    """(m, V) log-probs -> (m,) token ids under the rules above."""
    return sample_one(log_probs, Draw(0, len(log_probs), temperature, top_p,
                                      (gen,) * len(log_probs)))


def sample_one(log_probs: torch.Tensor, draw: Draw) -> torch.Tensor:
    """`sample_many` of one draw over all of `log_probs`, raising its error."""
    (out,) = sample_many(log_probs, [draw])
    if isinstance(out, Exception):
        raise out
    return out


def sample_many(log_probs: torch.Tensor, draws: Sequence[Draw],
                ) -> list[torch.Tensor | Exception]:
    """The rows of many requests at once: (m, V) log-probs -> per draw its (end - start,)
    token ids, or the error that draw alone ends with (a ValueError for a row with no
    distribution). Each draw takes one uniform number per row from its own generator and
    the token is where it falls in the row's cumulative weights (inverse CDF); the
    weights and the search are computed for all rows together, so a draw's tokens are
    those of sampling it alone, and no draw touches another's generator."""
    lp = log_probs.float()
    top = lp.amax(dim=1)  # nan where a row has one (amax propagates it)
    bad = (torch.isnan(top) | torch.isinf(top)).tolist()  # a nan, or no finite log-prob
    drawn = [(i, d, g) for d in draws
             for i, g in zip(range(d.start, d.end), d.generators, strict=True)
             if _sampled(d, bad[i])]  # rows drawn: (row, its draw, its generator)
    rows = [i for i, _, _ in drawn]
    picked = lp.argmax(dim=1) if len(rows) < len(lp) else torch.empty(len(lp), dtype=torch.long)
    unusable = [False] * len(lp)
    if rows:
        sampled = lp if rows == list(range(len(lp))) else lp[rows]
        temps = torch.tensor([d.temperature for _, d, _ in drawn])
        top_p = torch.tensor([d.top_p for _, d, _ in drawn])
        cum = nucleus_weights(sampled / temps[:, None], top_p).cumsum(dim=1)
        u = torch.cat([torch.rand(1, generator=g) for _, _, g in drawn])
        total = cum[:, -1]
        at = torch.searchsorted(cum, (u * total)[:, None], right=True)[:, 0]
        # u * total may round up to the total: then the last token with weight, never one
        # without (a token without weight adds nothing to the running sum, so the first
        # position where the sum reaches the total is the last token with weight)
        for j in torch.nonzero(at >= cum.shape[1])[:, 0].tolist():
            at[j] = int((cum[j] < total[j]).sum())
        picked[rows] = at
        for i, ok in zip(rows, (torch.isfinite(total) & (total > 0)).tolist(), strict=True):
            unusable[i] = not ok
    out: list[torch.Tensor | Exception] = []
    for d in draws:
        if any(unusable[d.start:d.end]):  # settings no caller can send (a nan T)
            out.append(RuntimeError(f"no weights to sample from at temperature "
                                    f"{d.temperature} and top_p {d.top_p}"))
        elif any(bad[d.start:d.end]):
            out.append(ValueError("a next-token distribution has a nan or no finite "
                                  "log-probability"))
        else:
            out.append(picked[d.start:d.end])
    return out


def _sampled(d: Draw, bad: bool) -> bool:
    """Is a row drawn (rather than greedy, or an error)? A nan temperature is drawn, and
    fails as a draw."""
    return not d.temperature < GREEDY_BELOW and not bad


def nucleus_weights(logits: torch.Tensor, top_p: float | torch.Tensor) -> torch.Tensor:
    """(m, V) logits -> (m, V) unnormalised weights in [0, 1]: exp(logit - row max),
    zero outside the top-p nucleus (`top_p` one value, or one per row). The row maximum
    always has weight 1."""
    logits = logits - logits.max(dim=1, keepdim=True).values
    p = torch.as_tensor(top_p, dtype=torch.float32).reshape(-1, 1)
    if bool((p >= 1.0).all()):
        return logits.exp()  # -inf -> 0, the maximum -> 1 (sample rejects nan rows)
    # ranked by logit, not by weight: two logits an ulp apart may share a weight, and the
    # top token must be argmax's (ties to the lowest id)
    sorted_l, order = logits.sort(dim=1, descending=True, stable=True)
    sorted_w = sorted_l.exp()
    total = sorted_w.sum(dim=1, keepdim=True)  # >= 1
    before = (sorted_w.cumsum(1) - sorted_w) / total  # mass ranked above, in [0, 1)
    keep = before < p
    keep[:, 0] = True  # the most likely token survives any top_p
    sorted_w = torch.where(keep, sorted_w, torch.zeros_like(sorted_w))
    return torch.zeros_like(logits).scatter(1, order, sorted_w)


def choice_seed(seed: int, choice: int) -> int:
    """The seed of a request's choice: the request's own for the first, and for the
    others a mix of it with the choice's index (a splitmix64 step), so that no choice
    repeats another request's stream at a neighbouring seed."""
    if choice == 0:
        return seed
    x = (seed + choice * 0x9E3779B97F4A7C15) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 31)) % 2**63
