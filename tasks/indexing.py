"""FAISS indexes over unit-length embeddings: exact inner product, or IVF / HNSW for large corpora.

    index = build_index(vectors, eval_cfg)          # eval_cfg: the eval config section (index, ivf_*, hnsw_*)
    scores, ids = search(index, queries, k=100)     # (nq, k) each, best first; id -1 where fewer than k were found
    sha256 = save_index(index, path)                # a run artifact; faiss.read_index(path) loads it back

Vectors are L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from hbir.core.config import EvalConfig
from hbir.core.files import file_sha256, write_file

IVF_MIN_POINTS_PER_CLUSTER = 39  # below this faiss's k-means warns and clusters badly


def build_index(vectors: np.ndarray, eval_cfg: EvalConfig, seed: int = 0) -> faiss.Index:
    """An index of ``eval_cfg.index`` kind holding ``vectors`` (n, d) float32, ids 0..n-1 in row order."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if eval_cfg.index == "flat":
        index = faiss.IndexFlatIP(dim)
    elif eval_cfg.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, eval_cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = eval_cfg.hnsw_ef_construction
        index.hnsw.efSearch = eval_cfg.hnsw_ef_search
    else:
        nlist = ivf_nlist(n, eval_cfg.ivf_nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(vectors)
        index.nprobe = min(eval_cfg.ivf_nprobe, nlist)
    index.add(vectors)
    return index


def ivf_nlist(n_vectors: int, wanted: int) -> int:
    """``wanted`` clusters, fewer for a corpus too small to train them (at least 39 points per cluster)."""
    return max(1, min(wanted, n_vectors // IVF_MIN_POINTS_PER_CLUSTER))


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best candidates per query: scores and ids (nq, k), best first."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))


def save_index(index: faiss.Index, path: Path) -> str:
    """Write ``index`` to ``path`` (atomically: a temporary file renamed into place); returns the file's SHA-256."""
    write_file(path, lambda tmp: faiss.write_index(index, str(tmp)))
    return file_sha256(path)
