"""Embeddings of a dataset's queries and candidates, cached on disk so that unchanged inputs are never encoded twice.

    encoder = BiEncoder.from_dir(model_dir, query_prefix="query: ", passage_prefix="passage: ", max_length=128)
    vectors = embed_dataset(encoder, model_fingerprint(model_dir), tables, "sentence", cache_dir=embeddings_cache_dir())
    vectors.queries[i]     # the embedding of tables.queries row i, float32, unit length
    vectors.candidates[j]  # of tables.candidates row j

Each (dataset, language, queries | candidates) block is one cache file named by the SHA-256 of what determines it:
the model's weights and tokenizer, the texts (and paragraphs in ``paragraph`` mode), the prefix and the maximum
length. A block is written to a temporary file and renamed (``hbir.core.files``), so a killed run leaves no
half-written cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hbir.core.files import file_sha256, write_file
from models.encoder import BiEncoder, TextKind
from tasks.tables import DatasetTables

CandidateMode = Literal["sentence", "paragraph"]
# What makes a model directory's embeddings what they are (the sentence-transformers files do not matter here).
MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class DatasetEmbeddings:
    queries: np.ndarray  # (n_queries, H), row order of tables.queries
    candidates: np.ndarray  # (n_candidates, H), row order of tables.candidates


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over the weights, config and tokenizer files of a Hugging Face model directory."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        if (Path(model_dir) / name).exists():
            digest.update(f"{name}={file_sha256(Path(model_dir) / name)}\n".encode())
    return digest.hexdigest()


def texts_fingerprint(texts: list[str], contexts: list[str] | None = None) -> str:
    """SHA-256 of the texts in order (and of their contexts), unambiguous for any text."""
    return hashlib.sha256(json.dumps([texts, contexts], ensure_ascii=False).encode()).hexdigest()


def embed_dataset(
    encoder: BiEncoder,
    model_fp: str,
    tables: DatasetTables,
    candidates: CandidateMode = "sentence",
    batch_size: int = 64,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> DatasetEmbeddings:
    """Embed every query and candidate of ``tables`` language by language, reusing blocks cached in ``cache_dir``
    (``embeddings_cache_dir()``, i.e. ``$HBIR_CACHE_DIR/embeddings``, for the default; None: no cache)."""
    queries, cands = tables.queries, tables.candidates
    log(f"embedding {tables.name}: {len(queries)} queries, {len(cands)} candidates ({candidates})")
    dim = encoder.model.config.hidden_size
    query_vectors = np.empty((len(queries), dim), dtype=np.float32)
    candidate_vectors = np.empty((len(cands), dim), dtype=np.float32)
    done, total = 0, len(queries) + len(cands)
    for number, lang in enumerate(tables.languages, start=1):
        rows = np.flatnonzero((queries["lang"] == lang).to_numpy())
        done += len(rows)
        if len(rows):
            texts = queries["text"].iloc[rows].tolist()
            query_vectors[rows] = embed_texts(encoder, model_fp, texts, "query", None, batch_size, cache_dir, lang)
        rows = np.flatnonzero((cands["lang"] == lang).to_numpy())
        if len(rows):
            texts = cands["text"].iloc[rows].tolist()
            contexts = cands["context"].iloc[rows].tolist() if candidates == "paragraph" else None
            done += len(rows)
            candidate_vectors[rows] = embed_texts(
                encoder, model_fp, texts, "passage", contexts, batch_size, cache_dir, lang
            )
        # a line per language: in a log (a Prefect worker, no terminal) the bars show nothing for minutes
        log(f"embedded {tables.name} {lang} ({number}/{len(tables.languages)} languages, {done}/{total} texts)")
    return DatasetEmbeddings(query_vectors, candidate_vectors)


def embed_texts(
    encoder: BiEncoder,
    model_fp: str,
    texts: list[str],
    kind: TextKind,
    contexts: list[str] | None = None,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    label: str = "",
) -> np.ndarray:
    """Embeddings (N, H) of ``texts``, read from ``cache_dir`` when this exact block was encoded before."""
    key = {
        "model": model_fp,
        "texts": texts_fingerprint(texts, contexts),
        "kind": kind,
        "prefix": encoder.prefixes[kind],
        "max_length": encoder.max_length,
        "candidates": "paragraph" if contexts is not None else "sentence",
    }
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()}.npy"
        if path.exists():
            return np.load(path)
    vectors = encoder.embed(texts, kind, batch_size, contexts, show_progress=None, label=label).numpy()
    if path is not None:
        write_file(path, lambda tmp: _save_npy(tmp, vectors))
    return vectors


def _save_npy(path: Path, vectors: np.ndarray) -> None:
    with open(path, "wb") as stream:  # a handle: np.save would add ".npy" to the temporary name
        np.save(stream, vectors)


def save_vectors(path: Path, vectors: DatasetEmbeddings) -> Path:
    """Write a dataset's embeddings to ``path`` (``.npz``: queries, candidates)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            np.savez(stream, queries=vectors.queries, candidates=vectors.candidates)

    return write_file(path, write)


def load_vectors(path: str | Path) -> DatasetEmbeddings:
    """The embeddings ``save_vectors`` wrote."""
    with np.load(path) as saved:
        return DatasetEmbeddings(saved["queries"], saved["candidates"])
