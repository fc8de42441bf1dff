"""The `Datastore`: a datastore folder opened, made of parts that share its state.

    datastore  Datastore (the face callers use) and DatastoreInfo
    opening    checking a folder and reading its parts; starting or resuming a build
    state      StoreState: folder, manifest, config, table, key files, indexes, locks
    view       View (what a search reads), Views (swaps and the filter cache), the lock
               between searches and index writes
    replica    LocalReplica / SharedReplica: keeping up with other processes
    search     Searcher: kNN, pointers, BM25, verbatim, behind the one filter
    writes     Writer: add, opt-out, compaction, recovery after a crash
    reindex    rebuilding the kNN index from the key files
"""
