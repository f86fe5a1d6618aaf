"""Build and search time, peak memory and recall of the faiss indexes of tasks/indexing.py on a 1M-vector corpus.

    python benchmarks/index_scale.py                             # 1M x 384, 10k queries, k=100: 10+ min, 2 cores
    python benchmarks/index_scale.py --variants flat ivf         # without hnsw (its build: 4.5+ minutes)
    python benchmarks/index_scale.py --n 100000 --queries 2000   # a quick run to try parameters

Variants, each in its own process so its peak memory is its own, all through ``build_index`` and ``search``:
  flat  IndexFlatIP, exact inner product: the ground truth the others' recall@k is measured against
  ivf   IndexIVFFlat, EvalConfig's nlist 1024 and nprobe 32: recall@100 0.965 at 1M (on the first 2000 queries:
        nprobe 16 0.948, 24 0.961, 32 0.969, 64 0.983). faiss trains k-means on a sample of nlist * 256 = 262k
        points whatever the corpus size.
  hnsw  IndexHNSWFlat, M 16, efConstruction 100, efSearch 256: recall@100 0.986 at 1M, built in 4.5 minutes on
        2 cores shared with other jobs (11.5 under heavier load); EvalConfig's defaults. M 32 / efConstruction 200
        take three times as long to build (measured at 100k).
Reported per variant: build seconds (train + add), seconds to search all queries at k, queries/s, peak RSS (VmHWM) and
recall@k against flat: the mean over queries of |approximate top-k & exact top-k| / k.

IVF's search is bound by memory bandwidth: each query reads nprobe / nlist of the corpus (32 / 1024 of 1.5 GB),
while flat's BLAS reuses every block of the corpus for thousands of queries. So IVF is only a few times faster
than flat unless nlist grows, and with it the k-means cost. nlist 4096 trained on 262k points gives recall@100
0.995 at nprobe 16, reading an eighth of what nprobe 32 of 1024 reads, but that recall flatters it: with more lists
than the data's 2000 clusters each list falls inside one cluster, a clean structure real embeddings lack.

The data is synthetic and shaped like sentence embeddings, not isotropic noise. In isotropic 384-dimensional
Gaussian data every point is about equally far from every other, so the nearest neighbours are arbitrary and no
approximate index finds them: a worst case that says nothing about real use. Real embeddings gather in topics and
spend most of their variance in a few dozen directions. So: a mixture of 2000 Gaussian clusters with lognormal
sizes; centres and within-cluster noise both drawn through one decaying spectrum (the scale of direction j is
(j + 1) ** -0.5, randomly rotated: participation ratio ~34 dimensions); a spread per cluster uniform in [0.5, 1.0]
times the centre's norm, so neighbouring clusters overlap; every vector L2-normalised, float32. Queries are fresh
draws from the same clusters, near corpus points as questions are near their answers. On this data a query's
nearest neighbour has cosine ~0.77, its 100th ~0.49, and two random vectors 0.00 +- 0.17. Everything is seeded
and generated in chunks of 100k rows into .npy files in a temporary directory, once; each variant memory-maps
them, so its peak RSS includes the corpus (n * dim * 4 bytes: 1465 MiB at 1M x 384), which faiss then copies
into the index.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
from variants import peak_rss_mib, run_in_subprocess

from hbir.core.config import EvalConfig
from tasks.indexing import build_index, search

VARIANTS = ["flat", "ivf", "hnsw"]
CHUNK_ROWS = 100_000  # rows generated at a time: ~150 MiB of float32 at dim 384
SPECTRUM_DECAY = 0.5  # scale of direction j: (j + 1) ** -decay
CLUSTER_SPREAD = (0.5, 1.0)  # within-cluster noise norm relative to the centre's (1)
CORPUS_STREAM, QUERY_STREAM = 0, 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="corpus vectors")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100, help="candidates per query; recall is recall@k")
    parser.add_argument("--clusters", type=int, default=2000, help="Gaussian clusters of the synthetic data")
    parser.add_argument("--seed", type=int, default=0)
    # nlist 1024 (EvalConfig's): k-means on 262k points takes ~1 min on 2 cores, 2048 would take four times that.
    parser.add_argument("--nlist", type=int, default=1024)
    # nprobe 32 (EvalConfig's): recall@100 0.965 at 1M x 384; 24 gives 0.957, too close to 0.95 to keep.
    parser.add_argument("--nprobe", type=int, default=32)
    # M 16 / efConstruction 100 build 1M in 4-5 min on 2 cores, a third of EvalConfig's 32 / 200; efSearch 256
    # (EvalConfig's) then gives recall@100 0.986.
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef-search", type=int, default=256)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="faiss OpenMP threads")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: run one variant
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)  # internal: where the data and ids are
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    with tempfile.TemporaryDirectory(prefix="index-scale-") as workdir:
        began = time.perf_counter()
        write_data(Path(workdir), args)
        generate_s = time.perf_counter() - began
        results = {variant: run_in_subprocess(__file__, variant, Path(workdir)) for variant in args.variants}
        add_recall(results, Path(workdir))
    print_table(args, results, generate_s)


def run_variant(args: argparse.Namespace) -> dict:
    """Build and search one index over the memory-mapped data; its ids go to ``<workdir>/<variant>-ids.npy``."""
    faiss.omp_set_num_threads(args.threads)
    corpus = np.load(args.workdir / "corpus.npy", mmap_mode="r")  # (n, dim)
    queries = np.load(args.workdir / "queries.npy")  # (nq, dim)
    eval_cfg = EvalConfig(
        index=args.variant,
        ivf_nlist=args.nlist,
        ivf_nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.ef_construction,
        hnsw_ef_search=args.ef_search,
    )
    began = time.perf_counter()
    index = build_index(corpus, eval_cfg, seed=args.seed)
    build_s = time.perf_counter() - began
    began = time.perf_counter()
    _, ids = search(index, queries, args.k)  # (nq, k)
    search_s = time.perf_counter() - began
    np.save(args.workdir / f"{args.variant}-ids.npy", ids)
    return {
        "settings": describe(index, eval_cfg),
        "build_s": build_s,
        "search_s": search_s,
        "peak_rss_mib": peak_rss_mib(),
    }


def describe(index: faiss.Index, eval_cfg: EvalConfig) -> str:
    """The parameters the index was built with (nlist as ``build_index`` lowered it for a small corpus)."""
    if eval_cfg.index == "ivf":
        return f"nlist {index.nlist}, nprobe {index.nprobe}"
    if eval_cfg.index == "hnsw":
        return f"M {eval_cfg.hnsw_m}, efC {eval_cfg.hnsw_ef_construction}, efSearch {eval_cfg.hnsw_ef_search}"
    return "exact"


def add_recall(results: dict[str, dict], workdir: Path) -> None:
    """Set each variant's ``recall`` against flat's ids (NaN when flat was not run)."""
    exact = np.load(workdir / "flat-ids.npy") if "flat" in results else None
    for variant, result in results.items():
        found = np.load(workdir / f"{variant}-ids.npy")
        result["recall"] = recall_at_k(found, exact) if exact is not None else float("nan")


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found_i & exact_i| / k, k = exact.shape[1]; ids -1 (nothing found) are misses.

    Ties in score could let an exact and an approximate search return different but equally good ids; with
    continuous random data they do not occur.
    """
    rows = np.arange(len(exact))[:, None]  # (nq, 1)
    width = int(max(found.max(), exact.max())) + 1
    # One key per (query, id) so a single isin compares every row with its own exact row.
    hits = np.isin(rows * width + found, rows * width + exact) & (found >= 0)  # (nq, k_found)
    return float(hits.sum(axis=1).mean() / exact.shape[1])


class Mixture(NamedTuple):
    """A Gaussian mixture on the unit sphere: see the module docstring."""

    basis: np.ndarray  # (dim, dim) float32: decaying scales, then a random rotation
    centers: np.ndarray  # (clusters, dim) unit rows
    spread: np.ndarray  # (clusters,) noise norm per cluster
    weights: np.ndarray  # (clusters,) probabilities


def embedding_mixture(dim: int, clusters: int, seed: int) -> Mixture:
    """The mixture every corpus and query vector of one ``seed`` is drawn from."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))  # (dim, dim) orthogonal
    scales = (1.0 + np.arange(dim)) ** -SPECTRUM_DECAY
    scales /= np.sqrt((scales**2).sum())  # so a standard normal row maps to expected norm 1
    basis = (scales[:, None] * rotation.T).astype(np.float32)  # (dim, dim)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32) @ basis  # (clusters, dim)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    spread = rng.uniform(*CLUSTER_SPREAD, clusters).astype(np.float32)
    weights = rng.lognormal(0.0, 0.7, clusters)
    return Mixture(basis, centers, spread, weights / weights.sum())


def sample_embeddings(mixture: Mixture, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` L2-normalised float32 vectors (rows, dim) drawn from ``mixture``."""
    cluster = rng.choice(len(mixture.weights), size=rows, p=mixture.weights)  # (rows,)
    noise = rng.standard_normal((rows, mixture.basis.shape[0]), dtype=np.float32) @ mixture.basis  # (rows, dim)
    vectors = mixture.centers[cluster] + mixture.spread[cluster, None] * noise  # (rows, dim)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_data(workdir: Path, args: argparse.Namespace) -> None:
    """``corpus.npy`` (n, dim) and ``queries.npy`` (nq, dim) in ``workdir``, deterministic in ``args.seed``."""
    mixture = embedding_mixture(args.dim, args.clusters, args.seed)
    for name, rows, stream in (("corpus", args.n, CORPUS_STREAM), ("queries", args.queries, QUERY_STREAM)):
        out = np.lib.format.open_memmap(workdir / f"{name}.npy", mode="w+", dtype=np.float32, shape=(rows, args.dim))
        for chunk, start in enumerate(range(0, rows, CHUNK_ROWS)):
            size = min(CHUNK_ROWS, rows - start)
            rng = np.random.default_rng([args.seed, stream, chunk])  # per chunk: same data whatever the order
            out[start : start + size] = sample_embeddings(mixture, size, rng)
        out.flush()
        del out  # closes the memory map before the variants read the file


def print_table(args: argparse.Namespace, results: dict[str, dict], generate_s: float) -> None:
    corpus_mib = args.n * args.dim * 4 / 2**20
    print(
        f"{args.n:,} x {args.dim} corpus ({corpus_mib:.0f} MiB float32, memory-mapped: part of each peak RSS), "
        f"{args.queries:,} queries, {args.clusters} clusters, k={args.k}, {args.threads} threads; "
        f"data generated in {generate_s:.0f} s\n"
    )
    print(f"| variant | settings | build s | search s | queries/s | peak RSS MiB | recall@{args.k} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for variant, result in results.items():
        print(
            f"| {variant} | {result['settings']} | {result['build_s']:.1f} | {result['search_s']:.1f} | "
            f"{args.queries / result['search_s']:,.0f} | {result['peak_rss_mib']:,.0f} | {result['recall']:.4f} |"
        )


if __name__ == "__main__":
    main()
