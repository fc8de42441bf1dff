"""BM25 passage search over RIC blocks, one face for every backend (pyserini's searcher).

    base     BM25Index (the face: create, from_dir, add, search, batch_search, doc,
             delete, save), BM25Hit, BM25Config, and the filtered search
    factory  create_bm25 / open_bm25: the backend a name picks
    bm25s    the default: a sparse score matrix in numpy, exact under the filter
    lucene   Lucene through Anserini's jar (the `lucene` extra)
"""
