"""kNN-LM hyperparameter search: (k, lam, tau) per domain on the validation split.

The expensive part, the forward passes and one k_max-neighbour search per token, runs
once (`SiloLM.target_scores`); every grid point is then a cheap recombination of the
cached log-probs and distances, since the k nearest of k_max neighbours sorted by
distance are its first k. The best values are stored with the datastore
(`silo_knnlm.json` in its folder) and become SiloLM's defaults for it.

Then the pointer threshold (datastore.pointers) is chosen by measurement: each candidate
re-runs the neighbours with pointers followed, and the setting that searches least
within 2% of the full search's perplexity is stored with the others.

SILO's grid stops at tau = 40; small models have larger key distances relative to
their spread, so the default grid reaches further (tau up to 320, lam up to 0.95).

With text from outside the datastore's domain, the relevance weight is tuned too
(silo.relevance_tuning).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from datastore.errors import InvalidInputError
from silo.knnlm import (
    MAX_K,
    MAX_KNN_TEMPERATURE,
    KnnParams,
    interpolate,
    nearest_distance,
    target_neighbour_mass,
)
from silo.relevance import smooth

if TYPE_CHECKING:
    from silo.relevance_tuning import RelevanceReport

DEFAULTS_FILE = "silo_knnlm.json"


@dataclass(frozen=True)
class Grid:
    """The values searched; every combination is tried."""

    ks: tuple[int, ...] = (16, 64, 256, 1024)
    lams: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    temperatures: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)

    def __post_init__(self) -> None:
        for name in ("ks", "lams", "temperatures"):
            if not getattr(self, name):
                raise InvalidInputError(f"{name} must not be empty")
        for k in self.ks:
            KnnParams(k=k)
        for lam in self.lams:
            KnnParams(lam=lam)
        for t in self.temperatures:
            KnnParams(temperature=t)

    @property
    def k_max(self) -> int:
        return max(self.ks)


@dataclass(frozen=True)
class TargetScores:
    """Per predicted token: LM-side log-prob (n,) float64, neighbour squared distances
    (n, k_max) float32 ascending and their values (n, k_max) int64 (-1 padding), the
    target tokens (n,) int64, and `first` (n,) bool: the tokens that start a sequence
    (None: the tokens are one sequence), for the context's distance (silo.relevance);
    `baseline` (n,) float64 each token's distance to the reference (None: not measured),
    for a weight measured from it."""

    lm_logprob: np.ndarray
    distances: np.ndarray
    values: np.ndarray
    targets: np.ndarray
    first: np.ndarray | None = None
    baseline: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.lm_logprob)
        if self.distances.shape[0] != n or self.values.shape != self.distances.shape:
            raise InvalidInputError("distances and values must be (n, k) with n = len(lm_logprob)")
        if self.targets.shape != (n,):
            raise InvalidInputError(f"targets must be ({n},), got {self.targets.shape}")
        if self.first is not None and self.first.shape != (n,):
            raise InvalidInputError(f"first must be ({n},), got {self.first.shape}")
        if self.baseline is not None and self.baseline.shape != (n,):
            raise InvalidInputError(f"baseline must be ({n},), got {self.baseline.shape}")

    @property
    def starts(self) -> np.ndarray:
        """(n,) bool: `first`, or the first token alone when the tokens are one sequence."""
        if self.first is not None:
            return self.first
        out = np.zeros(len(self.lm_logprob), dtype=bool)
        out[:1] = True
        return out


@dataclass(frozen=True)
class GridPoint:
    k: int
    lam: float
    temperature: float
    perplexity: float
    pointers: int = 0  # chosen after the grid (choose_pointers); 0: search every token
    searched: float = 1.0  # the share of tokens that needed a search at that setting
    relevance: float | None = None  # d0 of the relevance weight (relevance_tuning); None: off
    relevance_temperature: float = 1.0
    relevance_decay: float = 0.0  # beta of the context's distance (silo.relevance)
    relevance_margin: bool = False  # d_1 measured from the distance to the reference

    @property
    def params(self) -> KnnParams:
        return KnnParams(self.k, self.lam, self.temperature, self.pointers, self.relevance,
                         self.relevance_temperature, self.relevance_decay,
                         self.relevance_margin)


def knn_target_prob(scores: TargetScores, k: int, temperature: float) -> np.ndarray:
    """p_kNN(target) from the first k neighbours: (n,) float64; 0 where none."""
    mass = target_neighbour_mass(torch.from_numpy(scores.distances[:, :k]),
                                 torch.from_numpy(scores.values[:, :k]),
                                 torch.from_numpy(scores.targets), temperature)
    return mass.sum(1).double().numpy()


def mix_at_targets(lm_logprob: np.ndarray, p_knn: np.ndarray, has: np.ndarray,
         lam: float | np.ndarray) -> np.ndarray:
    """silo.knnlm.interpolate on the targets only: (n,) each -> (n,) float64; `lam` a
    float or a weight per token (n,)."""
    with np.errstate(divide="ignore"):
        log_knn = torch.from_numpy(np.log(p_knn))[:, None]
    mixed = interpolate(torch.from_numpy(lm_logprob)[:, None], log_knn,
                        lam if isinstance(lam, float) else torch.from_numpy(lam),
                        torch.from_numpy(has))
    return mixed[:, 0].numpy()


def nearest_distances(scores: TargetScores, k: int) -> np.ndarray:
    """(n,) float64 the nearest of each token's first k neighbours (inf: none)."""
    return nearest_distance(torch.from_numpy(scores.distances[:, :k]),
                            torch.from_numpy(scores.values[:, :k])).numpy()


def context_distances(scores: TargetScores, k: int, decay: float,
                      margin: bool = False) -> np.ndarray:
    """(n,) float64 the distance each token's relevance is measured from: its nearest
    of the first k neighbours (with `margin`, less its distance to the reference),
    averaged over its sequence so far at `decay` (silo.relevance; 0: the token's own)."""
    nearest = nearest_distances(scores, k)
    if margin:
        if scores.baseline is None:
            raise InvalidInputError("a weight measured from the reference needs the "
                                    "tokens' distances to it (TargetScores.baseline)")
        nearest = nearest - scores.baseline
    if decay == 0.0:
        return nearest
    return smooth(nearest[:, None], scores.starts, (decay,))[0][:, 0]


def mixed_logprob(scores: TargetScores, params: KnnParams) -> np.ndarray:
    """log((1 - lam w) p_LM(target) + lam w p_kNN(target)) per token, (n,) float64;
    tokens without any neighbour keep the LM's log-prob."""
    has = np.asarray((scores.values[:, :params.k] >= 0).any(1))
    p_knn = knn_target_prob(scores, params.k, params.temperature)
    context = (torch.from_numpy(context_distances(scores, params.k, params.relevance_decay,
                                                  params.margin))
               if params.smooths else None)
    lam = params.row_lam(torch.from_numpy(scores.distances[:, :params.k]),
                         torch.from_numpy(scores.values[:, :params.k]), context)
    return mix_at_targets(scores.lm_logprob, p_knn, has,
                lam if isinstance(lam, float) else lam.double().numpy())


def perplexity(logprob: np.ndarray) -> float:
    return float(np.exp(-logprob.mean())) if len(logprob) else float("nan")


def grid_search(scores: TargetScores, grid: Grid) -> list[GridPoint]:
    """Perplexity at every grid point, best first."""
    points = []
    for k in grid.ks:
        has = np.asarray((scores.values[:, :k] >= 0).any(1))
        for t in grid.temperatures:
            p_knn = knn_target_prob(scores, k, t)
            for lam in grid.lams:
                ppl = perplexity(mix_at_targets(scores.lm_logprob, p_knn, has, lam))
                points.append(GridPoint(k, lam, t, ppl))
    return sorted(points, key=lambda p: p.perplexity)


def widen(grid: Grid, best: GridPoint) -> Grid:
    """`grid` extended one step past each edge that `best` sits on, so that a best value
    at the edge is tested against a value beyond it: k doubled or halved (within 1 ..
    MAX_K), lam halfway to 1 or to 0, tau times or divided by 4 (at most
    MAX_KNN_TEMPERATURE). The same grid when `best` is inside on every axis, or at a
    limit."""
    ks, lams, temps = set(grid.ks), set(grid.lams), set(grid.temperatures)
    if best.k == max(ks) and best.k < MAX_K:
        ks.add(min(2 * best.k, MAX_K))
    if best.k == min(ks) and best.k > 1:
        ks.add(best.k // 2)
    if best.lam == max(lams) and best.lam < 1:
        lams.add(round((1 + best.lam) / 2, 6))
    if best.lam == min(lams) and best.lam > 0:
        lams.add(round(best.lam / 2, 6))
    if best.temperature == max(temps) and best.temperature < MAX_KNN_TEMPERATURE:
        temps.add(min(4 * best.temperature, MAX_KNN_TEMPERATURE))
    if best.temperature == min(temps):
        temps.add(best.temperature / 4)
    return Grid(tuple(sorted(ks)), tuple(sorted(lams)), tuple(sorted(temps)))


def best_overall(per_domain: Mapping[str, Sequence[GridPoint]], k_tolerance: float = 0.0,
                 ) -> GridPoint:
    """The grid point with the lowest mean log-perplexity over the domains (each
    domain's list covers the same grid). With `k_tolerance`, the point with the fewest
    neighbours among those within that share of the lowest perplexity (a smaller k
    searches faster: faiss's cost of collecting the k results grows with k)."""
    table: dict[tuple[int, float, float], list[float]] = {}
    for points in per_domain.values():
        for p in points:
            table.setdefault((p.k, p.lam, p.temperature), []).append(math.log(p.perplexity))
    mean = [GridPoint(k, lam, t, float(np.exp(np.mean(logs))))
            for (k, lam, t), logs in table.items()]
    best = min(mean, key=lambda p: p.perplexity)
    bound = best.perplexity * (1 + k_tolerance)
    return min((p for p in mean if p.perplexity <= bound),
               key=lambda p: (p.k, p.perplexity))


def write_defaults(folder: Path, default: GridPoint, per_domain: Mapping[str, GridPoint],
                   note: str = "", uniform: GridPoint | None = None) -> Path:
    """Store the tuned values with the datastore, where SiloLM reads its defaults;
    `uniform`: the best point without the relevance weight, for requests that turn the
    weight off."""
    path = Path(folder) / DEFAULTS_FILE
    data: dict[str, Any] = {"default": asdict(default),
                            "per_domain": {d: asdict(p) for d, p in per_domain.items()},
                            "note": note}
    if uniform is not None:
        data["uniform"] = asdict(replace(uniform, relevance=None))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def read_defaults(folder: Path, relevance: bool = True) -> KnnParams | None:
    """The tuned kNN-LM parameters stored with a datastore, if any; with `relevance`
    off, the best ones without the relevance weight."""
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if "default" not in data:  # only the tuning of sets it is in (silo.set_tuning)
        return None
    best = data["default"] if relevance else {**data.get("uniform", data["default"]),
                                              "relevance": None,
                                              "relevance_temperature": 1.0}
    d0 = best.get("relevance")
    return KnnParams(int(best["k"]), float(best["lam"]), float(best["temperature"]),
                     int(best.get("pointers", 0)), None if d0 is None else float(d0),
                     float(best.get("relevance_temperature", 1.0)),
                     float(best.get("relevance_decay", 0.0)) if d0 is not None else 0.0,
                     bool(best.get("relevance_margin", False)) and d0 is not None)


def needs_reference(folder: Path) -> bool:
    """Whether the datastore's stored defaults measure its weight from the distance to a
    reference (silo.relevance), so that it cannot be served without one."""
    tuned = read_defaults(folder)
    return tuned is not None and tuned.margin


def has_relevance(folder: Path) -> bool:
    """Whether the datastore's stored defaults were tuned with off-domain text, with the
    context's distance and the reference (they carry the relevance weight's d0, T, decay
    and margin; defaults tuned before those existed do not count)."""
    path = Path(folder) / DEFAULTS_FILE
    best = json.loads(path.read_text()).get("default", {}) if path.is_file() else {}
    return (best.get("relevance") is not None and "relevance_decay" in best
            and "relevance_margin" in best)


def choose_pointers(score: Callable[[int], tuple[float, float]], best: GridPoint,
                    candidates: Sequence[int] = (1, 2, 4, 8, 16, 32),
                    tolerance: float = 0.02) -> tuple[GridPoint, list[GridPoint]]:
    """Pick how many pointers must remain to skip a search (datastore.pointers): the
    setting that searches least while its perplexity stays within `tolerance` of the
    full search's. `score(m)` -> (perplexity, share of tokens searched) at the tuned
    k, lambda, tau with threshold m. Returns the choice and every point measured."""
    measured = [replace(best, pointers=m, perplexity=ppl, searched=share)
                for m, (ppl, share) in ((m, score(m)) for m in candidates)]
    bound = best.perplexity * (1 + tolerance)
    ok = [p for p in measured if p.perplexity <= bound]
    choice = min(ok, key=lambda p: (p.searched, p.perplexity)) if ok else best
    return choice, measured


def tune_pointers(lm: Any, seqs: Mapping[str, Sequence[Sequence[int]]], best: GridPoint,
                  candidates: Sequence[int] = (1, 2, 4, 8, 16, 32),
                  tolerance: float = 0.02) -> tuple[GridPoint, list[GridPoint]]:
    """`choose_pointers` for a SiloLM over per-domain token sequences, perplexity
    aggregated over domains as `best_overall` does (mean log-perplexity)."""
    from silo.request import Mode, SiloOptions

    def score(m: int) -> tuple[float, float]:
        searched, positions = lm.searches.searched, lm.searches.positions
        logs = [math.log(perplexity(mixed_logprob(
            lm.target_scores(s, SiloOptions(Mode.KNNLM, pointers=m), best.k,
                             reference=best.relevance_margin),
            replace(best, pointers=m).params))) for s in seqs.values()]
        share = (lm.searches.searched - searched) / max(lm.searches.positions - positions, 1)
        return float(np.exp(np.mean(logs))), share

    return choose_pointers(score, best, candidates, tolerance)


def tune_for(lm: Any, own: Mapping[str, Sequence[Sequence[int]]],
             off: Mapping[str, Sequence[Sequence[int]]] | None, grid: Grid,
             k_tolerance: float = 0.0, relevance_tolerance: float = 0.01,
             document_tolerance: float | None = None,
             ) -> tuple[GridPoint, dict[str, list[GridPoint]], RelevanceReport | None]:
    """The whole search for a SiloLM over token sequences per domain: the grid on the
    `own` domains (`best_overall`), then with `off`-domain text the relevance weight
    (silo.relevance_tuning; each sequence a document), measured from the reference too
    where the LM has one. Returns the choice, each own
    domain's grid (best first) and the relevance report (None without `off`)."""
    from silo.relevance_tuning import tune_relevance  # it builds on this module
    from silo.request import Mode, SiloOptions

    # with a reference open, the weight may be measured from it (silo.relevance)
    reference = bool(off) and lm.reference is not None
    scores = {d: lm.target_scores(s, SiloOptions(Mode.KNNLM), grid.k_max, reference=reference)
              for d, s in sorted(own.items())}
    points = {d: grid_search(sc, grid) for d, sc in scores.items()}
    best = best_overall(points, k_tolerance)
    if not off:
        return best, points, None
    off_scores = {d: lm.target_scores(s, SiloOptions(Mode.KNNLM), best.k, reference=reference)
                  for d, s in sorted(off.items())}
    report = tune_relevance(scores, off_scores, best, grid.lams, relevance_tolerance,
                            document_tolerance=document_tolerance)
    return report.choice, points, report
