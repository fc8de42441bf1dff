"""The `silo` command line: every command, listed in one table.

Commands are plain typed functions in the modules beside this one (corpus_cmd,
model_cmd, datastore_cmd, inference_cmd, serve_cmd), registered below. Library errors
are printed as one line naming what went wrong, with exit code 2 and no traceback
(silo.cli.console).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import typer

from silo.cli.console import clean_errors
from silo.cli.corpus_cmd import corpus_build, corpus_olc, corpus_split, corpus_stats
from silo.cli.datastore_cmd import app as datastore_app
from silo.cli.inference_cmd import complete, tune, tune_set
from silo.cli.log_cmd import keygen, verify
from silo.cli.model_cmd import eval_cmd, generate_cmd, tokenizer_train, train_cmd
from silo.cli.serve_cmd import serve

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="SILO: an LM whose weights hold no legal risk, plus an opt-out datastore.",
)
corpus_app = typer.Typer(no_args_is_help=True, help="Build, inspect and split corpora.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train tokenizers.")
log_app = typer.Typer(no_args_is_help=True, help="The transparency log's signing key.")

app.add_typer(datastore_app, name="datastore")
app.add_typer(corpus_app, name="corpus")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(log_app, name="log")


commands: list[tuple[typer.Typer, str, Callable[..., None]]] = [
    (corpus_app, "build", corpus_build),
    (corpus_app, "stats", corpus_stats),
    (corpus_app, "split", corpus_split),
    (corpus_app, "olc", corpus_olc),
    (tokenizer_app, "train", tokenizer_train),
    (app, "train", train_cmd),
    (app, "eval", eval_cmd),
    (app, "generate", generate_cmd),
    (app, "serve", serve),
    (app, "tune", tune),
    (app, "tune-set", tune_set),
    (app, "complete", complete),
    (log_app, "keygen", keygen),
    (app, "verify", verify),
]
for group, name, fn in commands:
    group.command(name)(clean_errors(fn))


def main() -> None:
    """Entry point (the `silo` script)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
