"""The parametric LM side of SILO: corpus, tokenizer, model, training, evaluation, CLI."""

__version__ = "0.1.0"
