"""The shipped default model: loads with plain transformers, and was trained on pd+sw only."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from datastore.document import LicenseClass, parse_policy
from silo.model import DEFAULT_MODEL, load_lm


def test_default_checkpoint_loads_with_auto_classes() -> None:
    model = AutoModelForCausalLM.from_pretrained(str(DEFAULT_MODEL))
    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL))
    ids = tokenizer("The kernel of an operating system", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert model.config.model_type == "llama"


def test_default_model_was_trained_on_low_risk_text_only() -> None:
    summary = json.loads((DEFAULT_MODEL / "silo_train.json").read_text())
    policy = parse_policy(summary["config"]["policy"])
    assert policy <= {LicenseClass.PD, LicenseClass.SW}
    assert summary["config"]["preset"] == "small"


def test_default_model_is_better_than_uniform_on_held_out_text() -> None:
    from silo.config import EvalConfig
    from silo.corpus.jsonl import read_corpus, split_of
    from silo.evaluate import evaluate_domains

    lm = load_lm(DEFAULT_MODEL)
    corpus = DEFAULT_MODEL.parent.parent / "data" / "corpus" / "devil.jsonl.gz"
    docs = [d for d in read_corpus([corpus]) if split_of(d.doc_id) == "valid"]
    [result] = evaluate_domains(lm.model, lm.tokenizer, docs, EvalConfig(window=256, stride=128),
                                max_tokens_per_domain=2000)
    assert result.tokens > 0 and result.perplexity < len(lm.tokenizer) / 10
