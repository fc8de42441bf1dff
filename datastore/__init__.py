"""The nonparametric datastore: documents, kNN and BM25 indexes, the entry filter, opt-out.

The lowest floor: it imports neither `silo` nor `server` (the builder takes a key encoder
from its caller).

    store/      Datastore, the folder opened: made of state, view, replica, search,
                writes, reindex and opening
    table/      the document table (SQLite or PostgreSQL): one interface, two databases
    index/      kNN index backends behind one face (exact, faiss, Milvus, torch)
    bm25/       BM25 passage search behind one face (bm25s, Lucene)
    tlog/       the transparency log: Merkle tree, proofs, signed checkpoints, leaves
    errors      the one exception tree of the library
    document    documents and licence classes
    config      a datastore's build and index parameters
    encoder     the key encoder a caller supplies (token ids -> hidden states)
    manifest    manifest.json: model fingerprint, config, counts, checksums
    knn         the kNN key/value files (keys, next tokens, char positions)
    build       ingesting documents: encoding, rows, blocks
    blocks      RIC blocks (passages) of a document
    filter      the one entry filter: opt-out, licence policy, access scope
    optout      opt-out selectors and receipts, compaction's ranges
    pointers    following neighbours to their successors (RetoMaton)
    ngram       the verbatim-span index for attribution lookups
    suffix      the suffix-array segments the verbatim index searches
"""
