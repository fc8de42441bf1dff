"""Tuning several datastores as a set (silo.combination).

Each datastore's own relevance weight is tuned to leave every other domain to the LM,
which is right for a datastore served alone but too cautious inside a set, where the
other domains have datastores of their own. So a set is tuned on text of all its
domains together: every member's d0 shifted by the same multiple of its T, T scaled
alike, and one lambda for all, to the lowest mean log-perplexity over the domains. The
expensive part (one search per token and member) runs once; every candidate is a
recombination of the cached neighbours.

The result is stored in each member's `silo_knnlm.json`, under "sets" and the set's
names (sorted, joined by commas: the names the service lists them under), and
`SiloLM.combine` applies it to that set; a set without one takes each member's own
parameters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datastore.errors import InvalidInputError
from silo.combination import combined_target_log_probs
from silo.knnlm import KnnParams
from silo.tuning import DEFAULTS_FILE, TargetScores, perplexity

SHIFTS = (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # of each member's T
SCALES = (0.5, 1.0, 2.0, 4.0)
LAMS: tuple[float | None, ...] = (None, 0.6, 0.8, 0.95)  # None: each member's own


def set_key(names: Sequence[str]) -> str:
    return ",".join(sorted(names))


@dataclass(frozen=True)
class SetReport:
    """Per domain: the perplexity with each member's own parameters and with the set's."""

    members: tuple[KnnParams, ...]
    own: dict[str, float]
    tuned: dict[str, float]


def combined_logprob(scores: Sequence[TargetScores], members: Sequence[KnnParams],
                     ) -> np.ndarray:
    """The mixture's log-prob at each target from the members' cached neighbours
    (`scores` in member order, for the same text)."""
    return combined_target_log_probs(
        torch.from_numpy(scores[0].lm_logprob),
        torch.from_numpy(np.concatenate([s.distances for s in scores], 1)),
        torch.from_numpy(np.concatenate([s.values for s in scores], 1)),
        torch.from_numpy(scores[0].targets), members).double().numpy()


def candidates(members: Sequence[KnnParams]) -> list[tuple[KnnParams, ...]]:
    """The settings tried: shifts and scales of the relevance weights (only lambda when a
    member has none)."""
    weighted = all(p.relevance is not None for p in members)
    out = []
    for shift in SHIFTS if weighted else (0.0,):
        for scale in SCALES if weighted else (1.0,):
            for lam in LAMS:
                out.append(tuple(replace(
                    p, lam=p.lam if lam is None else lam, pointers=0,
                    relevance=None if p.relevance is None
                    else p.relevance + shift * p.relevance_temperature,
                    relevance_temperature=p.relevance_temperature * scale) for p in members))
    return out


def choose(scores: Mapping[str, Sequence[TargetScores]], members: Sequence[KnnParams],
           ) -> SetReport:
    """The candidate with the lowest mean log-perplexity over the domains; `scores[d]`
    holds each member's neighbours (at its k) for domain d's text, in member order."""
    if not scores:
        raise InvalidInputError("tuning a set needs text of at least one domain")

    def ppl(ms: Sequence[KnnParams]) -> dict[str, float]:
        return {d: perplexity(combined_logprob(s, ms)) for d, s in scores.items()}

    def mean_log(p: dict[str, float]) -> float:
        return float(np.mean([math.log(v) for v in p.values()]))

    own = ppl(members)
    best = min(((ms, ppl(ms)) for ms in candidates(members)), key=lambda x: mean_log(x[1]))
    return SetReport(best[0], own, best[1])


def tune_set(members: Sequence[tuple[str, Any]], seqs: Mapping[str, Sequence[Sequence[int]]],
             ) -> SetReport:
    """`choose` for SiloLMs (name, lm) over token sequences per domain."""
    from silo.request import Mode, SiloOptions

    params = [lm.plan(SiloOptions(Mode.KNNLM, pointers=0)).knn for _, lm in members]
    scores = {d: [lm.target_scores(s, SiloOptions(Mode.KNNLM), p.k)
                  for (_, lm), p in zip(members, params, strict=True)]
              for d, s in sorted(seqs.items())}
    return choose(scores, params)


def write_set(folder: Path, names: Sequence[str], params: KnnParams) -> None:
    """Store a member's parameters for the set `names` beside its own defaults."""
    path = Path(folder) / DEFAULTS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("sets", {})[set_key(names)] = asdict(params)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def read_set(folder: Path, names: Sequence[str]) -> KnnParams | None:
    """A member's stored parameters for the set `names`, if any."""
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return None
    found = json.loads(path.read_text()).get("sets", {}).get(set_key(names))
    return None if found is None else KnnParams(**found)
