"""lm-evaluation-harness against the live server (`lm_eval --model local-completions`,
remote tokenizer): a rolling-perplexity task and a multiple-choice task from local files.
The perplexity must equal `silo eval`'s on the same text."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from datastore.document import Document, LicenseClass
from tests.conftest import PD_TEXT

TEXTS = PD_TEXT  # each well under the tiny model's 128-token window: one window per text
ROLLING = """task: silo_rolling
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
"""
CHOICE = """task: silo_choice
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def _tasks(folder: Path) -> Path:
    folder.mkdir()
    (folder / "rolling.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                  for t in TEXTS))
    (folder / "choice.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [
        {"question": "In the beginning God created the", "choices": [" heaven", " kernel"],
         "answer": 0},
        {"question": "The heapq module provides an implementation of the heap",
         "choices": [" queue algorithm.", " light."], "answer": 0},
    ]))
    (folder / "rolling.yaml").write_text(ROLLING.format(data=folder / "rolling.jsonl"))
    (folder / "choice.yaml").write_text(CHOICE.format(data=folder / "choice.jsonl"))
    return folder


def _silo_eval_nll(model_dir: Path) -> tuple[float, int]:
    """Total NLL (nats) and tokens of TEXTS by `silo eval`'s own function."""
    from silo.config import EvalConfig
    from silo.evaluate import evaluate_domains
    from silo.model import load_lm

    lm = load_lm(model_dir)
    docs = [Document(f"t/{i}", t, "Public Domain", LicenseClass.PD, "t")
            for i, t in enumerate(TEXTS)]
    [result] = evaluate_domains(lm.model, lm.tokenizer, docs,
                                EvalConfig(window=128, stride=64, batch_size=4), None)
    return result.nll, result.tokens


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("lm_eval") is None, reason="lm-eval is not installed")
def test_lm_eval_local_completions(make_live, model_dir: Path, tmp_path: Path,
                                   tiny_tokenizer) -> None:
    live = make_live(model=model_dir)  # no datastore: parametric, as `silo eval` scores
    tasks = _tasks(tmp_path / "tasks")
    args = (f"model=tiny-silo,base_url={live.url}/v1/completions,tokenizer_backend=remote,"
            f"max_length=128,custom_prefix_token_id={tiny_tokenizer.eos_token_id},"
            "num_concurrent=4,max_retries=1,tokenized_requests=True")
    out = tmp_path / "out"
    run = subprocess.run(["lm_eval", "--model", "local-completions", "--model_args", args,
                          "--tasks", "silo_rolling,silo_choice", "--include_path", str(tasks),
                          "--output_path", str(out), "--batch_size", "4"],
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next(out.rglob("results*.json")).read_text())["results"]
    assert 0.0 <= results["silo_choice"]["acc,none"] <= 1.0
    # word perplexity -> total log-likelihood, compared with silo eval's NLL
    words = sum(len(t.split()) for t in TEXTS)
    lm_eval_nll = math.log(results["silo_rolling"]["word_perplexity,none"]) * words
    nll, tokens = _silo_eval_nll(model_dir)
    assert tokens == sum(len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"])
                         for t in TEXTS)
    assert lm_eval_nll == pytest.approx(nll, rel=1e-4)
