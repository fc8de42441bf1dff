"""Build and index parameters of a datastore, validated once and stored in its manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from datastore.errors import InvalidInputError

BACKENDS = ("exact", "faiss-flat", "faiss-ivfpq", "faiss-ivfpq-fs", "milvus", "torch-exact",
            "torch-ivfpq")
# index backends whose files live in the datastore folder and can be rebuilt from its
# key files (Datastore.reindex)
LOCAL_BACKENDS = ("exact", "faiss-flat", "faiss-ivfpq", "faiss-ivfpq-fs")
# a Milvus URI with one of these schemes names a server (shared by replicas); any other,
# or none, is milvus-lite in the datastore folder
SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")


def is_server(uri: str) -> bool:
    """Does a Milvus URI name a server (rather than a milvus-lite file)?"""
    return uri.startswith(SERVER_SCHEMES)


@dataclass(frozen=True)
class DatastoreConfig:
    """How a datastore is built and searched.

    The IVF-PQ defaults are SILO's (nlist 4096, M 64 sub-quantizers of 8 bits, nprobe 8);
    small test stores pass smaller values. `train_size` caps the keys used to train IVF-PQ.
    `faiss-ivfpq-fs` is IVF-PQ with 4-bit codes, scanned by faiss's SIMD fast-scan
    kernels (nbits must be 4; M divides the key dim). With twice the sub-quantizers of an
    8-bit index (M = dim, one dimension each) its codes are as large and several times
    faster to scan (docs/BENCHMARKS.md). It is a CPU index.
    """

    backend: str = "exact"
    nlist: int = 4096
    m: int = 64
    nbits: int = 8
    nprobe: int = 8
    train_size: int = 262_144
    # "cpu" or "cuda[:n]". On CUDA, exact search is the resident fp16 torch search and
    # faiss-ivfpq searches on the GPU (faiss-gpu where installed, else torch IVF-PQ)
    device: str = "cpu"
    encode_batch: int = 16  # sequences per encoder call
    flush_entries: int = 65_536  # entries buffered before they are written and committed
    block_tokens: int = 128  # RIC block length B, in tokens
    block_overlap: int = 32  # tokens shared by consecutive blocks
    bm25: bool = True  # keep the BM25 block index (RIC-LM)
    bm25_backend: str = "bm25s"
    ngram: bool = True  # keep the verbatim (n-gram) attribution index
    milvus_uri: str = ""  # "" = milvus-lite in the datastore folder; else a server URI
    # on a server: FLAT, IVF_FLAT, IVF_PQ, HNSW, GPU_IVF_PQ or GPU_CAGRA
    milvus_index: str = "FLAT"
    name: str = "datastore"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidInputError(f"backend must be one of {', '.join(BACKENDS)}, "
                                    f"got {self.backend!r}")
        for name in ("nlist", "m", "nprobe", "train_size", "encode_batch", "flush_entries",
                     "block_tokens"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise InvalidInputError(f"device must be cpu or cuda[:n], got {self.device!r}")
        if not 1 <= self.nbits <= 16:
            raise InvalidInputError(f"nbits must be in [1, 16], got {self.nbits}")
        if self.backend == "faiss-ivfpq-fs":
            if self.nbits != 4:
                raise InvalidInputError(f"faiss-ivfpq-fs (fast-scan) codes are 4 bits: nbits must "
                                 f"be 4, got {self.nbits}")
            if self.device != "cpu":
                raise InvalidInputError("faiss-ivfpq-fs is a CPU index; on CUDA use faiss-ivfpq")
        if not 0 <= self.block_overlap < self.block_tokens:
            raise InvalidInputError(
                f"block_overlap must be in [0, block_tokens), got {self.block_overlap}"
            )

    @property
    def shares_index(self) -> bool:
        """True when the kNN index lives on a server that replicas share."""
        return self.backend == "milvus" and is_server(self.milvus_uri)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatastoreConfig:
        """Read a stored config, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
