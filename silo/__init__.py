"""The model side of SILO: the parametric LM and its combination with a datastore.

    lm          SiloLM: the LM plus its datastore, for scoring and generation
    request     the request and result types, and a request's plan
    mode        the four modes (parametric, knnlm, ric, knnlm+ric)
    runner      the model run: forward passes, LM-head inputs, the KV cache
    retrieval   what SiloLM asks of its datastore: passages, neighbours, provenance
    contexts    the inputs of a request's passes: windows, RIC passages prepended
    batch       Group and Chunk, what one pass carries
    mixer       the next-token mixture under a plan
    scoring     log-probabilities of prompts
    generation  batched generation with per-request isolation
    sampling    the sampling rules
    knnlm, ric  the math of kNN-LM and of retrieval in context
    attribution per-token provenance and per-sentence attribution
    lookup      attribution of any text (verbatim spans, BM25)
    codec       text <-> token ids as SiloLM uses them
    model, config, train, evaluate, tuning, tokenizer, tokens, encoder
                presets and loading, training configs and the loop, perplexity,
                kNN-LM tuning, the BPE tokenizer, token streams, the key encoder
    corpus/     the licensed corpus: JSONL documents, Debian and OLC sources
    cli/        the `silo` command line
"""

__version__ = "0.1.0"
