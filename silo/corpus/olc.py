"""Reader for the Open License Corpus on the Hugging Face hub.

`kernelmachine/open-license-corpus` has 16 configurations named `pd_*`, `sw_*` and
`ccby_*`; the prefix is the licence class. The same code reads a local folder laid out
like the hub repository (`<root>/<config>/*.parquet` or `*.jsonl`), which is how the
tests exercise it without a network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datastore.document import Document, LicenseClass
from datastore.errors import InvalidInputError

OLC_REPO = "kernelmachine/open-license-corpus"
OLC_CONFIGS = (
    "ccby_law",
    "ccby_s2orc",
    "ccby_stackexchange",
    "ccby_stackoverflow",
    "ccby_wikinews",
    "ccby_wikipedia",
    "pd_arxiv_abstracts",
    "pd_books",
    "pd_law",
    "pd_news",
    "pd_s2orc",
    "sw_amps_math",
    "sw_dm_math",
    "sw_github",
    "sw_hackernews",
    "sw_ubuntu_irc",
)
# Prefix -> (licence string as the corpus card states it, class).
_PREFIX: dict[str, tuple[str, LicenseClass]] = {
    "pd": ("Public Domain", LicenseClass.PD),
    "sw": ("Permissive (MIT/BSD/Apache)", LicenseClass.SW),
    "ccby": ("CC-BY-SA", LicenseClass.BY),
}


def config_license(config: str) -> tuple[str, LicenseClass]:
    """Licence and class of an OLC configuration, from its name's prefix."""
    prefix = config.split("_", 1)[0]
    if prefix not in _PREFIX or "_" not in config:
        raise InvalidInputError(
            f"OLC config {config!r} has no licence prefix; expected pd_*, sw_* or ccby_*"
        )
    return _PREFIX[prefix]


def _load(repo: str, config: str, split: str, streaming: bool) -> Any:
    import datasets  # optional dependency (the `hub` extra)

    local = Path(repo)
    if local.is_dir():
        folder = local / config
        files = sorted(str(p) for p in folder.glob("*") if p.suffix in (".parquet", ".jsonl"))
        if not files:
            raise InvalidInputError(f"no .parquet or .jsonl files in {folder}")
        kind = "parquet" if files[0].endswith(".parquet") else "json"
        return datasets.load_dataset(kind, data_files=files, split=split, streaming=streaming)
    return datasets.load_dataset(repo, config, split=split, streaming=streaming)


def olc_documents(
    config: str,
    repo: str = OLC_REPO,
    split: str = "train",
    streaming: bool = True,
    limit: int | None = None,
    loader: Callable[[str, str, str, bool], Any] = _load,
) -> Iterator[Document]:
    """Documents of one OLC configuration, each labelled with its config's licence."""
    license, cls = config_license(config)
    source = config.split("_", 1)[1]
    for i, row in enumerate(loader(repo, config, split, streaming)):
        if limit is not None and i >= limit:
            break
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        doc_id = str(row.get("id") or f"{i}")
        yield Document(
            doc_id=f"olc/{config}/{doc_id}",
            text=text,
            license=license,
            license_class=cls,
            source=source,
            url=f"hf://datasets/{repo}/{config}",
        )
