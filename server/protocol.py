"""Request and response models of the HTTP interface (DESIGN: Interface contract).

The completions models follow OpenAI's legacy completions API, which lm-evaluation-harness
and the `openai` client speak, plus the optional `silo` objects. Validation bounds that
depend on settings (prompt length, max_tokens, n) are checked by the service, which
knows them; the bounds here are the ones that never change.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from datastore.document import LicenseClass
from silo.knnlm import MAX_K, MAX_KNN_TEMPERATURE
from silo.mode import Mode

Prompt = str | list[str] | list[int] | list[list[int]]


def _lone_surrogate(value: Any) -> tuple[Any, ...] | None:
    """Where in `value` a string holds a lone surrogate (JSON's \\ud800 escapes decode to
    them, and no tokenizer, index or database takes them): the path to it, ending with
    the character's offset; None if there is none. Lists of ints (token ids) are passed
    over at once: the schema never mixes them with text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return (e.start,)
        return None
    if isinstance(value, list | tuple):
        if value and type(value[0]) is int:
            return None
        items: Any = enumerate(value)
    elif isinstance(value, dict):
        items = ((k, v) for key in value for k, v in ((key, key), (key, value[key])))
    else:
        return None
    for where, item in items:
        found = _lone_surrogate(item)
        if found is not None:
            return (where, *found)
    return None


class Request(BaseModel):
    """A request body: every string in it, however nested, is valid Unicode."""

    @model_validator(mode="after")
    def _valid_unicode(self) -> Request:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, BaseModel):  # nested requests check themselves
                continue
            found = _lone_surrogate(value)
            if found is not None:
                where = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]"
                                for p in found[:-1])
                raise ValueError(f"{name}{where}: not valid Unicode (a lone surrogate at "
                                 f"character {found[-1]})")
        return self


class SiloRequestOptions(Request):
    """The `silo` extension of a completion request; unset fields take the defaults."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    mode: Mode | None = None
    k: int | None = Field(default=None, ge=1, le=MAX_K, description="Neighbours per token.")
    lambda_: float | None = Field(default=None, alias="lambda", ge=0.0, le=1.0,
                                  description="Weight of the kNN distribution.")
    knn_temperature: float | None = Field(default=None, gt=0.0, le=MAX_KNN_TEMPERATURE)
    relevance: bool = Field(default=True, description=(
        "Weight the datastore by its relevance to each context, as tuned with it (its "
        "weight falls off its domain); false: lambda at every position."))
    license_classes: list[LicenseClass] | None = Field(
        default=None, description="Licence classes the datastore may contribute; all if unset.")
    attribution: bool = False
    datastore: str | None = Field(default=None, max_length=200,
                                  description="A datastore name; the active one if unset.")
    datastores: list[Annotated[str, Field(max_length=200)]] | Literal["all"] | None = Field(
        default=None, max_length=64, description=(
            "Several datastores, combined per context by their relevance, or 'all' for "
            "every one the key may use; unset: the server's default set."))
    signed: bool = Field(default=False, description=(
        "Sign the response with the log's key: the Silo-Signature header holds a signed "
        "note over the request's and the response's SHA-256 and the checkpoint."))


class CompletionRequest(Request):
    """POST /v1/completions. Unknown OpenAI fields (user, best_of, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: Prompt = Field(..., description="Text, texts, token ids or lists of token ids.")
    max_tokens: int | None = Field(default=16, ge=0)
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    logprobs: int | None = Field(default=None, ge=0)
    echo: bool = False
    stream: bool = False
    ignore_eos: bool = Field(default=False, description=(
        "vLLM's extension: keep generating past the end-of-text token, up to max_tokens."))
    silo: SiloRequestOptions | None = None


class LogProbs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: LogProbs | None = None
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AttributedDocument(BaseModel):
    doc_id: str
    source: str
    license_class: str
    score: float
    snippet: str | None = None
    via: str | None = Field(default=None, description="knn, ric, verbatim or bm25.")
    datastore: str | None = Field(default=None, description=(
        "The datastore holding the document, when several were combined."))


class SentenceAttribution(BaseModel):
    text: str
    documents: list[AttributedDocument]
    index: int | None = Field(default=None, description="The choice this sentence belongs to.")
    datastore_weights: dict[str, float] | None = Field(default=None, description=(
        "Over several datastores: each one's mean weight (lambda w) over the sentence."))


class CheckpointRef(BaseModel):
    """The transparency log's state a response was served against: every change the
    log holds below `size` was in effect for it."""

    size: int
    root: str = Field(description="The tree's root hash, base64.")


class SiloResponseInfo(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    mode: Mode
    datastore: str | None
    datastores: list[str] | None = Field(default=None, description=(
        "The datastores combined, when the request was served over several."))
    k: int | None = None
    lambda_: float | None = Field(default=None, alias="lambda")
    knn_temperature: float | None = None
    relevance: bool | None = Field(default=None, description=(
        "Whether the datastore's weight followed its relevance to each context."))
    attribution: list[SentenceAttribution] | None = None
    checkpoint: CheckpointRef | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    silo: SiloResponseInfo | None = None


class CompletionChunk(BaseModel):
    """One server-sent event of a streamed completion: a token's choice delta, or the
    last one with no choice, the usage and the `silo` block."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    silo: SiloResponseInfo | None = None


class AttributionRequest(Request):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., max_length=100_000)
    k: int = Field(default=5, ge=1, le=100, description="Documents per sentence.")
    license_classes: list[LicenseClass] | None = None
    datastore: str | None = Field(default=None, max_length=200)


class AttributionResponse(BaseModel):
    sentences: list[SentenceAttribution]
    checkpoint: CheckpointRef | None = None


class TokenizerInfo(BaseModel):
    """GET /tokenizer_info, as vLLM answers it."""

    tokenizer_class: str
    model_max_length: int
    max_model_len: int
    vocab_size: int
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    unk_token: str | None
    eos_token_id: int | None
    bos_token_id: int | None
    chat_template: str | None = None


class TokenizeRequest(Request):
    model: str | None = None
    prompt: str = Field(..., max_length=1_000_000)
    add_special_tokens: bool = True


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(Request):
    model: str | None = None
    tokens: list[int] = Field(..., max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "silo"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AddDocumentsRequest(Request):
    documents: list[dict[str, Any]] = Field(
        ..., min_length=1, max_length=10_000,
        description="Corpus lines: id, text, license, license_class, source, url.")


class AddDocumentsResponse(BaseModel):
    datastore: str
    documents: int
    entries: int
    blocks: int


class OptOutRequest(Request):
    model_config = ConfigDict(extra="forbid")

    doc_ids: list[str] | None = Field(default=None, max_length=100_000)
    source: str | None = None
    url_prefix: str | None = None
    reason: str | None = Field(default=None, max_length=2000)


class ReceiptLog(BaseModel):
    """An opt-out's entry in the transparency log, with the proof a data owner checks."""

    index: int
    leaf: str = Field(description="The leaf's bytes, base64.")
    checkpoint: str = Field(description="A C2SP signed note of the tree ending with the leaf.")
    inclusion: list[str] = Field(description="The RFC 9162 inclusion proof, base64 hashes.")


class ReceiptModel(BaseModel):
    optout_id: str
    doc_ids: list[str]
    entries_removed: int
    blocks_removed: int
    effective_at: float
    purged_at: float | None = None
    selector: dict[str, Any]
    reason: str | None = None
    datastore: str | None = None
    log_index: int | None = Field(default=None, description="The opt-out's leaf in the log.")
    log: ReceiptLog | None = Field(default=None, description=(
        "What proves it: the leaf, a checkpoint that includes it and the inclusion proof."))


class ReceiptList(BaseModel):
    datastore: str
    receipts: list[ReceiptModel]


class DatastoreEntry(BaseModel):
    name: str
    path: str
    active: bool
    loaded: bool
    info: dict[str, Any] | None = None


class DatastoreList(BaseModel):
    active: str | None
    datastores: list[DatastoreEntry]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    datastore: str | None


# ---- the transparency log's public routes ---------------------------------------------


class LogDocument(BaseModel):
    id_sha256: str
    text_sha256: str
    license_class: str


class LogSelector(BaseModel):
    kind: str
    sha256: str


class LogEntry(BaseModel):
    """One leaf: its bytes (what is hashed) and its fields decoded."""

    index: int
    leaf: str = Field(description="The leaf's bytes, base64.")
    action: str
    time: str
    documents: list[LogDocument]
    selector: LogSelector | None = None
    config_sha256: str | None = None


class LogEntries(BaseModel):
    entries: list[LogEntry]


class InclusionProof(BaseModel):
    index: int
    size: int
    hashes: list[str]


class ConsistencyProof(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: int = Field(alias="from")
    to: int
    hashes: list[str]
