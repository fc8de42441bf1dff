"""The request and result types of `SiloLM`: frozen dataclasses in, frozen dataclasses out.

    Mode               the four ways of combining the LM and its datastore (the one list)
    SiloOptions        per-request SILO settings (mode, k, lam, tau, licence classes, ...)
    Plan               a request's options resolved against its datastore
    ScoreRequest       score a prompt          -> ScoreResult
    GenerationRequest  continue a prompt       -> TokenEvent per token, GenerationResult
    SiloConfig         batching and scoring windows of one SiloLM

Every constructor checks its values and raises InvalidInputError naming the field, so the
server maps any bad value to a 400 before it reaches the model thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from datastore.document import LicenseClass
from datastore.errors import InvalidInputError
from datastore.filter import AccessScope, SearchFilter
from silo.attribution import Attribution, TokenProvenance
from silo.combination import DEFAULT_VOTE
from silo.knnlm import KnnParams
from silo.mode import MODES, Mode
from silo.ric import RicParams


@dataclass(frozen=True)
class SiloOptions:
    """Per-request SILO settings; None takes the datastore's tuned default. `mode` may be
    given as its string."""

    mode: Mode = Mode.KNNLM
    k: int | None = None
    lam: float | None = None
    knn_temperature: float | None = None
    license_classes: frozenset[LicenseClass] | None = None  # None: every class
    attribution: bool = False
    ric: RicParams = field(default_factory=RicParams)
    pointers: int | None = None  # min pointers followed instead of a search (0: off)
    relevance: bool = True  # the datastore's weight falls off its domain, as tuned

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        object.__setattr__(self, "mode", Mode(self.mode))
        # KnnParams validates the values that are set
        KnnParams(self.k or 1, 0.0 if self.lam is None else self.lam,
                  self.knn_temperature or 1.0, self.pointers or 0)


@dataclass(frozen=True)
class Plan:
    """A request's options resolved against the datastore: what to compute."""

    mode: Mode
    knn: KnnParams
    ric: RicParams
    filter: SearchFilter
    attribution: bool
    # over several datastores (silo.combination): each one's resolved parameters and
    # its name, in the order of their neighbours' columns; `knn` then sums them up
    members: tuple[KnnParams, ...] = ()
    datastores: tuple[str, ...] = ()
    vote: str = DEFAULT_VOTE  # how the members' neighbours vote (silo.combination)
    # search the reference at every kNN position even where no weight reads it (for
    # tuning the weight against it: silo.tuning.TargetScores.baseline)
    reference: bool = False

    @property
    def uses_knn(self) -> bool:
        return self.mode.uses_knn and self.knn.lam > 0

    @property
    def uses_ric(self) -> bool:
        return self.mode.uses_ric

    @property
    def stores(self) -> tuple[KnnParams, ...]:
        """Each datastore's parameters in the order of its neighbours' columns: the
        members of a combination, or the one datastore's `knn`."""
        return self.members or (self.knn,)

    @property
    def decays(self) -> tuple[float, ...] | None:
        """Each datastore's relevance decay where the plan measures relevance from the
        context (silo.relevance), in the order of its columns; None where none does."""
        if not self.uses_knn or not any(p.smooths for p in self.stores):
            return None
        return tuple(p.relevance_decay for p in self.stores)

    @property
    def reads_reference(self) -> bool:
        """Whether each kNN position needs its distance to the reference (silo.relevance):
        a datastore's weight is measured from it, or the plan asks for it."""
        return self.mode.uses_knn and (self.reference or (self.uses_knn and any(
            p.margin for p in self.stores)))


def _check_ids(ids: Sequence[int], name: str) -> None:
    if not all(isinstance(t, int) and t >= 0 for t in ids):
        raise InvalidInputError(f"{name} must be non-negative token ids")


@dataclass(frozen=True)
class ScoreRequest:
    """Score every token of `prompt_ids` given the ones before it."""

    prompt_ids: tuple[int, ...]
    top_logprobs: int = 0  # N most likely tokens per position (0: none)
    options: SiloOptions = field(default_factory=SiloOptions)
    scope: AccessScope = field(default_factory=AccessScope)
    plan: Plan | None = None  # options and scope resolved (SiloLM.plan); None: at the call

    def __post_init__(self) -> None:
        _check_ids(self.prompt_ids, "prompt_ids")
        if self.top_logprobs < 0:
            raise InvalidInputError(f"top_logprobs must be >= 0, got {self.top_logprobs}")


@dataclass(frozen=True)
class ScoreResult:
    """Per token of the prompt: its log-prob (None for the first), the top-N (token id
    -> log-prob; None for the first, or when not asked), and with attribution on the
    provenance of each token (None for the first) and the per-sentence attribution."""

    tokens: tuple[int, ...]
    token_logprobs: tuple[float | None, ...]
    top_logprobs: tuple[dict[int, float] | None, ...] | None = None
    provenance: tuple[TokenProvenance | None, ...] | None = None
    attribution: Attribution | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """Continue `prompt_ids` n times. temperature 0 is greedy decoding."""

    prompt_ids: tuple[int, ...]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int = 0  # top-N per generated token
    echo: bool = False  # also score the prompt
    options: SiloOptions = field(default_factory=SiloOptions)
    scope: AccessScope = field(default_factory=AccessScope)
    ignore_eos: bool = False  # vLLM's: the end-of-text token does not end a choice
    plan: Plan | None = None  # options and scope resolved (SiloLM.plan); None: at start

    def __post_init__(self) -> None:
        _check_ids(self.prompt_ids, "prompt_ids")
        if not self.prompt_ids:
            raise InvalidInputError("prompt_ids must hold at least one token")
        if self.max_tokens < 0:
            raise InvalidInputError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InvalidInputError(f"temperature must be a finite number >= 0, got "
                                    f"{self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise InvalidInputError(f"n must be >= 1, got {self.n}")
        if self.logprobs < 0:
            raise InvalidInputError(f"logprobs must be >= 0, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise InvalidInputError("stop sequences must be non-empty strings")


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of choice `choice`, as streamed."""

    choice: int
    token_id: int
    text: str  # text this token adds ("" while a multi-byte character is incomplete)
    logprob: float
    top_logprobs: dict[int, float] | None
    provenance: TokenProvenance | None
    finish_reason: str | None  # set on a choice's last event: "stop" or "length"


@dataclass(frozen=True)
class Completion:
    index: int
    token_ids: tuple[int, ...]
    text: str  # cut before a stop sequence
    token_logprobs: tuple[float, ...]
    top_logprobs: tuple[dict[int, float], ...] | None
    finish_reason: str
    provenance: tuple[TokenProvenance, ...] | None = None
    attribution: Attribution | None = None


@dataclass(frozen=True)
class GenerationResult:
    choices: tuple[Completion, ...]
    prompt: ScoreResult | None = None  # with echo


@dataclass(frozen=True)
class SiloConfig:
    """Batching and the scoring windows (defaults: the model's context, half overlap)."""

    batch_size: int = 8  # sequences per forward pass
    window: int | None = None
    stride: int | None = None
    kv_cache: bool = True  # incremental decoding (off: every step re-reads the context)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.window is not None and self.window < 2:
            raise InvalidInputError(f"window must be >= 2, got {self.window}")
        if self.stride is not None and self.stride < 1:
            raise InvalidInputError(f"stride must be >= 1, got {self.stride}")
