"""kNN index backends, one face for all, chosen by the config's `backend` name.

    base            KnnIndex (the face), SharedKnnIndex (an index replicas share),
                    pad_results
    factory         create_index / open_index: the backend a config names
    exact           brute force in torch over the key file (the tests' reference)
    faiss_index     faiss Flat, IVF-PQ and IVF-PQ fast-scan
    milvus          a Milvus collection in milvus-lite, inside the folder
    milvus_server   the collection on a Milvus server, shared by replicas
    torch_exact     brute force over keys resident on the device (GPU path)
    torch_ivfpq     the faiss IVF-PQ index file searched by torch (GPU path)
    torch_search    what the torch backends share: the filter on the device, top-k
"""
