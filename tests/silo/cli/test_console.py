"""Errors reach the user whole: a message is printed as text, never as rich markup, so
nothing in square brackets is lost (a path, a value, an install hint)."""

from pathlib import Path

import pytest
import typer

from datastore.errors import UnavailableError
from silo.cli.console import clean_errors
from tests.silo.cli.command import silo


def test_a_path_with_brackets_is_named_whole(tmp_path: Path) -> None:
    folder = tmp_path / "stores" / "[weird]dir"
    folder.mkdir(parents=True)
    result = silo("datastore", "info", "--datastore", str(folder))
    assert result.returncode == 2
    assert f"{folder}/manifest.json" in result.stderr and "Traceback" not in result.stderr


def test_a_value_in_brackets_is_echoed_whole(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("")
    result = silo("datastore", "build", "--out", str(tmp_path / "ds"), "--corpus", str(corpus),
                  "--backend", "[bad]")
    assert result.returncode == 2 and "got '[bad]'" in result.stderr


def test_an_install_hint_keeps_its_extra(capsys: pytest.CaptureFixture[str]) -> None:
    def fails() -> None:
        raise UnavailableError("install the postgres extra: pip install 'silo-lm[postgres]'")

    with pytest.raises(typer.Exit) as exit_info:
        clean_errors(fails)()
    assert exit_info.value.exit_code == 2
    assert "error: install the postgres extra: pip install 'silo-lm[postgres]'" in \
        capsys.readouterr().err
