"""FAISS indexes over unit-length embeddings: exact inner product, or IVF / HNSW for large corpora.

    index = build_index(vectors, eval_cfg)          # eval_cfg: the eval config section (index, ivf_*, hnsw_*)
    scores, ids = search(index, queries, k=100)     # (nq, k) each, best first; id -1 where fewer than k were found
    sha256 = save_index(index, path)                # a run artifact
    index = load_index(path, mmap=True)             # its IVF lists searched from the file, not read into memory

Vectors are L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np

from hbir.core.config import EvalConfig
from hbir.core.errors import ConfigError
from hbir.core.files import file_sha256, write_file

IVF_MIN_POINTS_PER_CLUSTER = 39  # below this faiss's k-means warns and clusters badly
ADD_CHUNK = 65_536  # vectors added to a factory index at a time


def build_index(vectors, eval_cfg: EvalConfig, seed: int = 0) -> faiss.Index:
    """An index of ``eval_cfg.index`` kind holding ``vectors`` (n, d) float32, ids 0..n-1 in row order; a
    ``VectorFile`` is read whole, but by a factory index (``factory_index``) a sample and a chunk at a time."""
    if eval_cfg.index not in ("flat", "hnsw", "ivf"):
        return factory_index(vectors, eval_cfg, seed)
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


def factory_index(vectors, eval_cfg: EvalConfig, seed: int = 0) -> faiss.Index:
    """An index of the faiss ``index_factory`` string ``eval.index``, trained on at most ``eval.index_train_sample``
    of ``vectors`` (drawn with ``seed``), holding all of them, with nprobe / efSearch from the config."""
    n, dim = vectors.shape
    factory = fitted_factory(eval_cfg.index, n)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.try_extract_index_ivf(index)
        ivf = faiss.downcast_index(ivf) if ivf is not None else None
        if hasattr(ivf, "do_polysemous_training"):  # IVF-PQ: polysemous codes (faiss's default) take 5x longer
            ivf.do_polysemous_training = False  # to train, and hbir never searches with them
        if not index.is_trained:
            rows = np.arange(n)
            if n > eval_cfg.index_train_sample:
                rows = np.sort(np.random.default_rng(seed).choice(n, eval_cfg.index_train_sample, replace=False))
            index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    except RuntimeError as error:
        reason = str(error).strip().split("Error: ")[-1][:200]
        raise ConfigError(
            f"eval.index {factory!r} cannot be built over {n} vectors of dimension {dim} (each language's "
            f"candidates and the pool get an index): {reason}; choose one that fits, e.g. IVF{ivf_nlist(n, 1024)},PQ"
            f"{next(m for m in (48, 32, 16, 8, 4, 2, 1) if dim % m == 0)}, or eval.index=flat"
        ) from None
    space = faiss.ParameterSpace()
    if ivf is not None:
        space.set_index_parameter(index, "nprobe", eval_cfg.ivf_nprobe)
    if "HNSW" in eval_cfg.index:
        space.set_index_parameter(index, "efSearch", eval_cfg.hnsw_ef_search)
    for start in range(0, n, ADD_CHUNK):  # added in chunks: no second copy of the pool in faiss's format at once
        index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32))
    return index


def fitted_factory(factory: str, n_vectors: int) -> str:
    """``factory`` with its ``IVF<k>`` lowered to ``ivf_nlist(n_vectors, k)``, as ``ivf``'s nlist is: a pool's
    languages differ in size (XQuAD-R + 1M distractors: 1,190 to ~140k candidates) and one factory string serves
    every block."""
    return re.sub(r"IVF(\d+)", lambda match: f"IVF{ivf_nlist(n_vectors, int(match.group(1)))}", factory)


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


def load_index(path: Path | str, mmap: bool = False) -> faiss.Index:
    """An index written by ``save_index``. ``mmap``: an IVF index's inverted lists stay in the file, memory-mapped
    (faiss ``OnDiskInvertedLists``): the same results, and the lists need not fit in RAM."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
