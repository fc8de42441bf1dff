"""Incremental decoding: the next-token distributions of many inputs, each over its own
key/value cache where it has one.

    Cached          an input's tokens and the keys/values of all of them
    Decoder.next    per input, the last position's log-probs and LM-head input

An input that extends its cached tokens (by the token just sampled) is fed what is new
alone, all such inputs in one pass over their left-padded, masked caches
(silo.runner.decode). An input that starts with a shared prefix (a RIC passage, put
before the context) is fed the tokens after it over the prefix's keys/values, which are
computed once and kept for the next input with that passage (`PREFIXES` of them): a
request that retrieves a new passage every `stride` tokens then reads its context, not
the passage, again. Any other input (a first step, a context whose window slid) is read
whole, in right-padded passes (silo.runner.prefill). Whether an input extends its cache
is decided from the tokens themselves, so a caller never has to know when a passage or a
window changed. Each input is its own run: rows of different requests, plans and
lengths share the passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from silo.runner import Cache, ModelRunner


@dataclass(frozen=True)
class Cached:
    """The keys/values of every token of `tokens` (per layer, one row)."""

    tokens: tuple[int, ...]
    cache: Cache

    def extended_by_one(self, tokens: Sequence[int]) -> bool:
        return len(tokens) == len(self.tokens) + 1 and tuple(tokens[:-1]) == self.tokens


# padding a pass may add before its inputs go in two passes, in positions (a pass costs
# about as much as this many more positions read whole, or fed over a cache)
PREFILL_SLACK = 64
DECODE_SLACK = 256
PREFIXES = 256  # shared prefixes (RIC passages) whose keys/values are kept


class Decoder:
    """Batches inputs into prefill and decode passes of at most `batch_size` rows."""

    def __init__(self, runner: ModelRunner, batch_size: int) -> None:
        self.runner = runner
        self.batch_size = batch_size
        # prefix tokens -> their keys/values; in insertion order, the oldest first
        self._prefixes: dict[tuple[int, ...], Cache] = {}

    def next(self, inputs: Sequence[Sequence[int]], cached: Sequence[Cached | None],
             keep: bool = True, prefixes: Sequence[int] | None = None,
             positions: dict[int, torch.Tensor | None] | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, list[Cached | None]]:
        """Per input (each at most the context long): the last position's log-probs
        (m, V) and LM-head input (m, dim) float32, and its cache of all its tokens (None
        for all without `keep`, and for an input that fills the context, whose window
        slides at the next token). `prefixes[i]`: how many of input i's first tokens
        are a prefix worth sharing (its passage; 0: none). `positions`: for each input
        it names, set to its LM-head inputs at every position (len, dim) where the input
        is read whole (None where it is fed over a cache)."""
        m = len(inputs)
        lp: list[torch.Tensor | None] = [None] * m
        hidden: list[torch.Tensor | None] = [None] * m
        out: list[Cached | None] = [None] * m
        over: dict[int, Cache] = {}  # input -> the cache it is fed over
        for i in range(m):
            c = cached[i]
            if keep and c is not None and c.extended_by_one(inputs[i]):
                over[i] = c.cache
        shared = {i: tuple(inputs[i][:n]) for i, n in enumerate(prefixes or [0] * m)
                  if keep and i not in over and 0 < n < len(inputs[i])}
        self._compute_prefixes(set(shared.values()) - set(self._prefixes))
        for i, key in shared.items():
            if key in self._prefixes:  # (unless the prefix cache was just full)
                over[i] = self._prefixes[key]
        whole = sorted(set(range(m)) - set(over), key=lambda i: len(inputs[i]))
        for part in _parts(whole, [len(inputs[i]) for i in whole], self.batch_size,
                           PREFILL_SLACK):
            every: list[torch.Tensor] | None = [] if positions else None
            p_lp, p_h, caches = self.runner.prefill([[list(inputs[i])] for i in part], every)
            self._spread(part, inputs, p_lp, p_h, caches, lp, hidden, out, keep,
                         self.runner.max_length)
            for j, i in enumerate(part):
                if every is not None and positions is not None and i in positions:
                    positions[i] = every[j]
        fed = sorted(over, key=lambda i: over[i][0][0].shape[2])
        for part in _parts(fed, [over[i][0][0].shape[2] for i in fed], self.batch_size,
                           DECODE_SLACK):
            runs = [[list(inputs[i])] for i in part]
            d_lp, d_h, caches = self.runner.decode(runs, [over[i] for i in part])
            self._spread(part, inputs, d_lp, d_h, caches, lp, hidden, out, keep,
                         self.runner.max_length)
        return torch.stack(_all(lp)), torch.stack(_all(hidden)), out

    def _compute_prefixes(self, missing: set[tuple[int, ...]]) -> None:
        """Read the prefixes no input has shared yet, in right-padded passes, and keep
        their keys/values (the oldest half goes when `PREFIXES` are kept)."""
        todo = sorted(missing, key=len)
        for part in _parts(list(range(len(todo))), [len(t) for t in todo], self.batch_size,
                           PREFILL_SLACK):
            _, _, caches = self.runner.prefill([[list(todo[j])] for j in part])
            for j, cache in zip(part, caches, strict=True):
                if len(self._prefixes) >= PREFIXES:
                    for old in list(self._prefixes)[:PREFIXES // 2]:
                        del self._prefixes[old]
                self._prefixes[todo[j]] = cache

    @staticmethod
    def _spread(part: list[int], inputs: Sequence[Sequence[int]], p_lp: torch.Tensor,
                p_h: torch.Tensor, caches: list[Cache], lp: list[torch.Tensor | None],
                hidden: list[torch.Tensor | None], out: list[Cached | None], keep: bool,
                max_length: int) -> None:
        for j, i in enumerate(part):
            lp[i], hidden[i] = p_lp[j], p_h[j]
            if keep and len(inputs[i]) < max_length:  # a full window slides next step
                out[i] = Cached(tuple(inputs[i]), caches[j])


def _all(xs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    assert all(x is not None for x in xs)
    return [x for x in xs if x is not None]


def _parts(items: list[int], lengths: list[int], size: int, slack: int) -> list[list[int]]:
    """Items sorted by length in passes of at most `size`, a new pass where padding the
    pass so far to the next item's length would add more than `slack` positions (a
    short prompt padded to a RIC input's length costs as much as the RIC input)."""
    parts: list[list[int]] = []
    longest = 0
    for i, n in zip(items, lengths, strict=True):
        if not parts or len(parts[-1]) == size or len(parts[-1]) * (n - longest) > slack:
            parts.append([])
        parts[-1].append(i)
        longest = n
    return parts
