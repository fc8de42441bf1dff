"""Terminal output for the `silo` commands: the two consoles and the error wrapper.

Every command is wrapped in `clean_errors`, so a mistake the user can fix (a bad
corpus line, a missing file, an unknown name) prints as one line naming the culprit
and exits with code 2, never as a traceback. Both consoles print text as it is, not as
rich markup: a path like `stores/[x]` or a hint like `pip install 'silo-lm[postgres]'`
must reach the user whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from datastore.errors import SiloError

console = Console(stderr=True, soft_wrap=True, markup=False)  # progress, messages, errors
out = Console(soft_wrap=True, markup=False)  # results (tables, JSON) on stdout

_F = TypeVar("_F", bound=Callable[..., Any])


def clean_errors(command: _F) -> _F:
    """Print a library error (or ValueError/OSError from input) as one line; exit 2."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (SiloError, ValueError, OSError) as exc:
            console.print(Text.assemble(("error:", "red"), f" {exc}"), highlight=False)
            raise typer.Exit(2) from None

    return run  # type: ignore[return-value]
