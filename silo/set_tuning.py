"""Tuning several datastores as a set (silo.combination).

Each datastore's own relevance weight is tuned to leave every other domain to the LM,
which is right for a datastore served alone but too cautious inside a set, where the
other domains have datastores of their own. So a set is tuned on text of all its
domains together: the vote (silo.combination.VOTES), every member's d0 shifted by the
same multiple of its T, T scaled alike, and one lambda for all, to the lowest mean
log-perplexity over the domains. With text the set does not cover (`off`), only the
settings that keep each of those texts within a tolerance of the LM alone compete (the
least harmful where none does), as `silo tune --off-domain` does for one datastore. The
expensive part (one search per token and member) runs once; every candidate is a
recombination of the cached neighbours.

The result is stored in each member's `silo_knnlm.json`, under "sets" and the set's
names (sorted, joined by commas: the names the service lists them under), with the
vote, and `SiloLM.combine` applies it to that set; a set without one takes each
member's own parameters and the default vote. A set stored before the vote existed was
tuned with separate votes and keeps them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datastore.errors import InvalidInputError
from silo.combination import (
    DEFAULT_VOTE,
    VOTES,
    Votes,
    check_vote,
    default_vote,
    member_votes,
    target_logs,
    weights_of,
)
from silo.knnlm import KnnParams, mix
from silo.relevance_tuning import Documents
from silo.tuning import DEFAULTS_FILE, TargetScores, context_distances, perplexity

SHIFTS = (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # of each member's T
SCALES = (0.5, 1.0, 2.0, 4.0)
LAMS: tuple[float | None, ...] = (None, 0.6, 0.8, 0.95)  # None: each member's own
OFF_TOLERANCE = 0.01  # text the set does not cover: at most this much worse than the LM


def set_key(names: Sequence[str]) -> str:
    return ",".join(sorted(names))


@dataclass(frozen=True)
class SetReport:
    """Per domain: the perplexity with each member's own parameters (at the default
    vote) and with the set's; per text the set does not cover, the set's perplexity over
    the LM's alone."""

    members: tuple[KnnParams, ...]
    vote: str
    own: dict[str, float]
    tuned: dict[str, float]
    off: dict[str, float] = field(default_factory=dict)


def member_contexts(scores: Sequence[TargetScores], members: Sequence[KnnParams],
                    ) -> torch.Tensor | None:
    """The members' context distances (silo.relevance) for the same text (n, M), where
    one measures relevance from it; they depend on each member's k and decay alone."""
    if not any(p.smooths for p in members):
        return None
    return torch.from_numpy(np.stack([context_distances(s, p.k, p.relevance_decay, p.margin)
                                      for s, p in zip(scores, members, strict=True)], 1))


@dataclass(frozen=True)
class Neighbourhood:
    """One text's neighbours in every member as each candidate reads them: what depends
    on a member's k, tau and decay alone (its votes, its log p_i of each target, its
    context distances), computed once for the candidates that change only the weights."""

    lm: torch.Tensor  # (n,) the LM's log-prob of each target
    votes: list[Votes]
    knn: list[torch.Tensor]  # (n, 1) log p_i(target) per member
    context: torch.Tensor | None

    @classmethod
    def of(cls, scores: Sequence[TargetScores], members: Sequence[KnnParams]) -> Neighbourhood:
        values = torch.from_numpy(np.concatenate([s.values for s in scores], 1))
        votes = member_votes(torch.from_numpy(np.concatenate([s.distances for s in scores], 1)),
                             values, members)
        return cls(torch.from_numpy(scores[0].lm_logprob), votes,
                   target_logs(votes, values, torch.from_numpy(scores[0].targets), members),
                   member_contexts(scores, members))

    def logprob(self, members: Sequence[KnnParams], vote: str) -> np.ndarray:
        """The mixture's log-prob at each target under members of the same k, tau and
        decay as the ones it was made for (other lambdas and relevance weights)."""
        weights = weights_of(self.votes, members, vote, self.context)
        return mix(self.lm[:, None], self.knn, weights)[:, 0].double().numpy()


def combined_logprob(scores: Sequence[TargetScores], members: Sequence[KnnParams],
                     vote: str = DEFAULT_VOTE) -> np.ndarray:
    """The mixture's log-prob at each target from the members' cached neighbours
    (`scores` in member order, for the same text)."""
    return Neighbourhood.of(scores, members).logprob(members, vote)


def candidates(members: Sequence[KnnParams], votes: Sequence[str] = VOTES,
               ) -> list[tuple[str, tuple[KnnParams, ...]]]:
    """The settings tried: each vote with shifts and scales of the relevance weights
    (only lambda when a member has none)."""
    weighted = all(p.relevance is not None for p in members)
    out = []
    for vote in map(check_vote, votes):
        for shift in SHIFTS if weighted else (0.0,):
            for scale in SCALES if weighted else (1.0,):
                for lam in LAMS:
                    out.append((vote, tuple(replace(
                        p, lam=p.lam if lam is None else lam, pointers=0,
                        relevance=None if p.relevance is None
                        else p.relevance + shift * p.relevance_temperature,
                        relevance_temperature=p.relevance_temperature * scale)
                        for p in members)))
    return out


def choose(scores: Mapping[str, Sequence[TargetScores]], members: Sequence[KnnParams],
           off: Mapping[str, Sequence[TargetScores]] | None = None,
           tolerance: float = OFF_TOLERANCE, votes: Sequence[str] = VOTES,
           document_tolerance: float | None = None) -> SetReport:
    """The candidate with the lowest mean log-perplexity over the domains; `scores[d]`
    holds each member's neighbours (at its k) for domain d's text, in member order, and
    `off[d]` the same for text the set does not cover, held within `tolerance` of the LM
    (and each of its documents of DOCUMENT_TOKENS or more within `document_tolerance`,
    as silo.relevance_tuning holds one datastore)."""
    if not scores:
        raise InvalidInputError("tuning a set needs text of at least one domain")
    off = off or {}
    lm_alone = {d: perplexity(s[0].lm_logprob) for d, s in off.items()}
    # the candidates keep each member's k, tau and decay: each text read once
    near = {(on, d): Neighbourhood.of(s, members)
            for on, texts in (("on", scores), ("off", off)) for d, s in texts.items()}

    def ppl(on: str, vote: str, ms: Sequence[KnnParams]) -> dict[str, float]:
        texts = scores if on == "on" else off
        return {d: perplexity(near[(on, d)].logprob(ms, vote)) for d in texts}

    documents = {d: Documents(s[0]) for d, s in off.items()}

    def rank(c: tuple[str, tuple[KnnParams, ...]]) -> tuple[bool, float, float]:
        vote, ms = c
        mixed = {d: near[("off", d)].logprob(ms, vote) for d in off}
        worst = max((perplexity(x) / lm_alone[d] for d, x in mixed.items()), default=1.0)
        feasible = worst <= 1 + tolerance and (document_tolerance is None or all(
            documents[d].worst(x) <= 1 + document_tolerance for d, x in mixed.items()))
        mean_log = float(np.mean([math.log(v) for v in ppl("on", *c).values()]))
        return not feasible, 0.0 if feasible else worst, mean_log

    vote, best = min(candidates(members, votes), key=rank)
    return SetReport(best, vote, ppl("on", default_vote(members), members), ppl("on", vote, best),
                     {d: v / lm_alone[d] for d, v in ppl("off", vote, best).items()})


def tune_set(members: Sequence[tuple[str, Any]], seqs: Mapping[str, Sequence[Sequence[int]]],
             off: Mapping[str, Sequence[Sequence[int]]] | None = None,
             tolerance: float = OFF_TOLERANCE, document_tolerance: float | None = None,
             ) -> SetReport:
    """`choose` for SiloLMs (name, lm) over token sequences per domain (and per text the
    set does not cover, each sequence a document)."""
    from silo.request import Mode, SiloOptions

    params = [lm.plan(SiloOptions(Mode.KNNLM, pointers=0)).knn for _, lm in members]

    def neighbours(texts: Mapping[str, Sequence[Sequence[int]]],
                   ) -> dict[str, list[TargetScores]]:
        return {d: [lm.target_scores(s, SiloOptions(Mode.KNNLM), p.k, reference=p.margin)
                    for (_, lm), p in zip(members, params, strict=True)]
                for d, s in sorted(texts.items())}

    return choose(neighbours(seqs), params, neighbours(off or {}), tolerance,
                  document_tolerance=document_tolerance)


def write_set(folder: Path, names: Sequence[str], params: KnnParams,
              vote: str = DEFAULT_VOTE) -> None:
    """Store a member's parameters and the vote for the set `names` beside its own
    defaults."""
    path = Path(folder) / DEFAULTS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("sets", {})[set_key(names)] = {**asdict(params), "vote": check_vote(vote)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def read_set(folder: Path, names: Sequence[str]) -> tuple[KnnParams, str] | None:
    """A member's stored parameters and vote for the set `names`, if any (a set stored
    before the vote existed was tuned with separate votes)."""
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return None
    found = json.loads(path.read_text()).get("sets", {}).get(set_key(names))
    return None if found is None else _parse_set(found)


def _parse_set(found: dict[str, Any]) -> tuple[KnnParams, str]:
    found = dict(found)
    vote = check_vote(found.pop("vote", "separate"))
    return KnnParams(**found), vote


def check_sets(folder: Path, reference: bool = True) -> None:
    """Raise InvalidInputError, naming the file and the set, unless every set stored with
    the datastore reads back (a known vote, valid parameters, and without a `reference`
    no weight measured from one): a service checks this at start, where a bad entry
    would otherwise fail the first request over its set."""
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return
    try:
        sets = list(json.loads(path.read_text()).get("sets", {}).items())
    except (ValueError, AttributeError) as e:
        raise InvalidInputError(f"{path}: not a JSON object of tuned parameters ({e})") from None
    for key, found in sets:
        try:
            params, _ = _parse_set(found)
        except (InvalidInputError, TypeError, ValueError) as e:
            raise InvalidInputError(f"{path}: the set {key!r} does not read back: {e}") from None
        if params.margin and not reference:
            raise InvalidInputError(f"{path}: the set {key!r} measures its weights from the "
                                    "distance to a reference index, and none is set")
