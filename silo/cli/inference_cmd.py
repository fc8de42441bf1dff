"""`silo tune`, `silo tune-set` and `silo complete`: kNN-LM tuning and SILO generation
from the command line.

`tune` searches (k, lam, tau) per domain on a split of the corpus and stores the best
values with the datastore, where SiloLM reads its defaults; `tune-set` tunes several
datastores for requests that combine them (silo.set_tuning). `complete` continues a
prompt in any mode and prints the per-sentence attribution. Library errors print as
one line with exit code 2 (the wrapper in silo/cli/console.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from datastore.errors import InvalidInputError, SiloError
from silo.cli.console import console, out
from silo.mode import Mode

if TYPE_CHECKING:
    from silo.lm import SiloLM

ModelOpt = Annotated[Path | None, typer.Option(
    help="LM folder (save_pretrained layout); default: the shipped models/silo-small.")]
StoreOpt = Annotated[Path, typer.Option("--datastore", help="Datastore folder.")]


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidInputError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def _counts(text: str, name: str) -> list[int]:
    """A comma-separated list of whole numbers >= 0, checked before any work starts."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SiloError(f"--{name} must be whole numbers separated by commas, "
                        f"got {text!r}") from None
    if any(v < 0 for v in values):
        raise SiloError(f"--{name} must be >= 0, got {text!r}")
    return values


OffDomainOpt = Annotated[list[Path] | None, typer.Option(
    "--off-domain", help="Corpus files or folders of text outside the datastores' domains: "
                         "the relevance weights keep it near the LM alone.")]
ToleranceOpt = Annotated[float, typer.Option(
    help="Largest perplexity increase over the LM alone the datastores may cause on "
         "off-domain text.")]
ReferenceOpt = Annotated[Path | None, typer.Option(help=(
    "A reference index over the LM's own training text (a datastore folder): the "
    "relevance weight may then be measured from the distance to it as well."))]
DocumentToleranceOpt = Annotated[float | None, typer.Option(
    help="Also hold each off-domain document of 256 tokens or more within this increase "
         "over the LM alone (default: the pooled bound alone).")]


def _check_tolerances(relevance: float, document: float | None) -> None:
    if relevance < 0:
        raise SiloError(f"--relevance-tolerance must be >= 0, got {relevance}")
    if document is not None and document < 0:
        raise SiloError(f"--document-tolerance must be >= 0, got {document}")


def _split_texts(files: list[Path], split: str, lm: SiloLM, max_tokens: int,
                 ) -> dict[str, list[tuple[int, ...]]]:
    """The `split` documents of the corpus files as token sequences per domain, up to
    `max_tokens` each; none is a CLI error naming the files."""
    from silo.corpus.jsonl import read_corpus, split_of
    from silo.evaluate import domain_sequences

    docs = (d for d in read_corpus(files) if split_of(d.doc_id) == split)
    seqs = domain_sequences(docs, lm.encode, lm.eos_id, max_tokens)
    if not seqs:
        raise SiloError(f"no {split} documents in {[str(c) for c in files]}")
    return seqs


def tune(
    corpus: Annotated[list[Path], typer.Option("--corpus", help="Corpus files or folders.")],
    datastore: StoreOpt,
    model: ModelOpt = None,
    split: Annotated[str, typer.Option(help="Split to tune on.")] = "valid",
    max_tokens: Annotated[int, typer.Option(help="Tokens per domain.")] = 4096,
    ks: str = "16,64,256,1024",
    lams: str = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95",
    temperatures: str = "1,2,5,10,20,40,80,160,320",
    pointers: Annotated[str, typer.Option(
        help="Pointer thresholds to try (empty: always search).")] = "1,2,4,8,16,32",
    pointer_tolerance: Annotated[float, typer.Option(
        help="Largest perplexity increase a pointer threshold may cost.")] = 0.02,
    k_tolerance: Annotated[float, typer.Option(
        help="Take the smallest k within this perplexity increase of the best (a "
             "smaller k searches faster); 0: the best.")] = 0.0,
    off_domain: OffDomainOpt = None,
    relevance_tolerance: ToleranceOpt = 0.01,
    document_tolerance: DocumentToleranceOpt = None,
    reference: ReferenceOpt = None,
) -> None:
    """Tune kNN-LM's k, lambda and temperature per domain (and with --off-domain the
    relevance weight, measured from the context's distance, and with --reference from
    its margin to the LM's own text as well); store the best with the datastore as its
    defaults."""
    from silo.lm import SiloLM
    from silo.model import DEFAULT_MODEL
    from silo.tuning import Grid, tune_for, tune_pointers, write_defaults

    if k_tolerance < 0:  # checked before any work starts, as the lists below
        raise SiloError(f"--k-tolerance must be >= 0, got {k_tolerance}")
    _check_tolerances(relevance_tolerance, document_tolerance)
    candidates = _counts(pointers, "pointers") if pointers.strip() else []
    grid = Grid(tuple(int(k) for k in _floats(ks, "ks")), _floats(lams, "lams"),
                _floats(temperatures, "temperatures"))
    lm = SiloLM.from_dirs(model or DEFAULT_MODEL, datastore, reference_dir=reference)
    seqs = _split_texts(corpus, split, lm, max_tokens)
    off = _split_texts(off_domain, split, lm, max_tokens) if off_domain else None
    best, points, report = tune_for(lm, seqs, off, grid, k_tolerance, relevance_tolerance,
                                    document_tolerance)
    for name, p in points.items():
        console.print(f"{name}: k={p[0].k} lambda={p[0].lam} tau={p[0].temperature:g} "
                      f"ppl {p[0].perplexity:.2f}")
    if report is not None:
        closest = ("" if report.feasible else
                   " (no setting keeps off-domain text within the tolerance of the LM "
                   "alone; the closest)")
        console.print(f"relevance d0={best.relevance:g} T={best.relevance_temperature:g} "
                      f"decay={best.relevance_decay:g} lambda={best.lam}"
                      f"{' from the reference' if best.relevance_margin else ''}{closest}")
        for name in report.parametric:
            console.print(f"  {name}: ppl LM {report.parametric[name]:.2f}, one weight "
                          f"{report.uniform[name]:.2f}, weighted {report.weighted[name]:.2f}")
        console.print(f"  worst off-domain document: {report.worst_document:.3f} of the LM "
                      "alone")
    if candidates:
        best, swept = tune_pointers(lm, seqs, best, candidates, pointer_tolerance)
        for point in swept:
            console.print(f"pointers {point.pointers}: ppl {point.perplexity:.2f}, "
                          f"{point.searched:.0%} of tokens searched")
    uniform = None if report is None else replace(report.uniform_point,
                                                  pointers=best.pointers)
    path = write_defaults(datastore, best, {d: p[0] for d, p in points.items()},
                          note=f"silo tune on the {split} split", uniform=uniform)
    console.print(f"default k={best.k} lambda={best.lam} tau={best.temperature:g} "
                  f"pointers={best.pointers} -> {path}")


def complete(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    datastore: Annotated[Path | None, typer.Option(help="Datastore folder.")] = None,
    model: ModelOpt = None,
    mode: Annotated[Mode, typer.Option(help="How the LM uses the datastore.")] = Mode.KNNLM,
    max_tokens: int = 48,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    attribution: Annotated[bool, typer.Option(help="Print per-sentence attribution.")] = True,
    reference: ReferenceOpt = None,
) -> None:
    """Continue a prompt with SiloLM in any mode, with attribution."""
    from silo.lm import GenerationRequest, SiloLM, SiloOptions
    from silo.model import DEFAULT_MODEL

    lm = SiloLM.from_dirs(model or DEFAULT_MODEL, datastore, reference_dir=reference)
    opts = SiloOptions(mode, attribution=attribution and datastore is not None)
    ids = (lm.eos_id, *lm.encode(prompt))  # EOS: a document starts, as in training
    res = lm.generate(GenerationRequest(ids, max_tokens, temperature, top_p, seed=seed,
                                        options=opts))
    choice = res.choices[0]
    out.print(prompt + choice.text, highlight=False)
    if choice.attribution is not None:
        out.print_json(json.dumps(choice.attribution.to_json()))


def tune_set(
    datastores: Annotated[list[str], typer.Option(
        "--datastore", help="A member as name=folder (the name the service lists it "
                            "under; a bare folder is named after it); two or more.")],
    corpus: Annotated[list[Path], typer.Option("--corpus", help="Corpus files or folders "
                                                                "of the members' domains.")],
    model: ModelOpt = None,
    split: Annotated[str, typer.Option(help="Split to tune on.")] = "valid",
    max_tokens: Annotated[int, typer.Option(help="Tokens per domain.")] = 4096,
    off_domain: OffDomainOpt = None,
    relevance_tolerance: ToleranceOpt = 0.01,
    document_tolerance: DocumentToleranceOpt = None,
    reference: ReferenceOpt = None,
) -> None:
    """Tune several datastores as a set for requests that combine them (the vote, each
    member's relevance weight shifted and scaled alike, one lambda); stored with every
    member."""
    from datastore.store.datastore import Datastore
    from silo.lm import SiloLM
    from silo.model import DEFAULT_MODEL, load_lm
    from silo.set_tuning import tune_set as tune
    from silo.set_tuning import write_set

    named: dict[str, Path] = {}
    for item in datastores:
        name, _, folder = item.rpartition("=") if "=" in item else ("", "", item)
        named[name or Path(folder).name] = Path(folder)
    if len(named) < 2:
        raise SiloError("--datastore must name at least two datastores, got "
                        f"{len(named)}")
    _check_tolerances(relevance_tolerance, document_tolerance)
    loaded = load_lm(model or DEFAULT_MODEL)
    ref = None if reference is None else Datastore.open(
        reference, encoder_fingerprint=loaded.fingerprint)
    members = [(n, SiloLM(loaded.model, loaded.tokenizer,
                          Datastore.open(f, encoder_fingerprint=loaded.fingerprint),
                          reference=ref))
               for n, f in sorted(named.items())]
    first = members[0][1]
    report = tune(members, _split_texts(corpus, split, first, max_tokens),
                  _split_texts(off_domain, split, first, max_tokens) if off_domain else None,
                  relevance_tolerance, document_tolerance)
    for d in report.own:
        console.print(f"{d}: ppl {report.own[d]:.2f} with each datastore's own weight, "
                      f"{report.tuned[d]:.2f} tuned as a set")
    for d, ratio in report.off.items():
        console.print(f"{d} (off-domain): {ratio:.3f} of the LM alone" + (
            "" if ratio <= 1 + relevance_tolerance else
            f" (no setting keeps it within {relevance_tolerance:.0%}; the closest)"))
    console.print(f"vote: {report.vote}")
    for (name, lm), params in zip(members, report.members, strict=True):
        assert lm.datastore is not None
        write_set(lm.datastore.folder, list(named), params, report.vote)
        console.print(f"{name}: lambda={params.lam} relevance d0={params.relevance} "
                      f"T={params.relevance_temperature:g} decay={params.relevance_decay:g}")
