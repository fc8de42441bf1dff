"""Nonparametric datastore: documents, kNN and BM25 indexes, the entry filter, opt-out."""
