"""Embeddings of a dataset's queries and candidates, cached on disk so that unchanged inputs are never encoded twice.

    encoder = load_text_encoder(model_dir, model_cfg, torch.device("cpu"), model_fingerprint(model_dir))
    vectors = embed_dataset(encoder, model_fingerprint(model_dir), tables, "sentence", cache_dir=embeddings_cache_dir())
    vectors.queries[i]     # the embedding of tables.queries row i, float32, unit length
    vectors.candidates[j]  # of tables.candidates row j
    embed_dataset(encoder, fingerprint, tables, into=folder)   # the same, written to folder (candidates shard by
    vectors = load_vectors(folder)                             # shard), read back: candidates as a VectorFile

The encoder is the one ``model.backend`` names (``resolve_backend``): PyTorch's ``BiEncoder``, or ONNX Runtime's
``OnnxEncoder`` in float32 or int8. Each (dataset, language, queries | candidates) block is one cache file named by
the SHA-256 of what determines it: the model's weights and tokenizer, the backend that encodes, the texts (and
paragraphs in ``paragraph`` mode), the prefix and the maximum length. A block is written to a temporary file and
renamed (``hbir.core.files``), so a killed run leaves no half-written cache.

A block of more than ``shard_size`` texts is embedded in shards, each its own cache file (the block's key, the shard
number, the shard and batch sizes), so a killed run started again embeds only the shards that are missing; peak
memory is that of one shard's encoding (with ``into``: the candidates' vectors go to disk a shard at a time, and the
pool is never whole in memory). The texts are put in the order ``BiEncoder.embed`` batches them in (by token
count) and cut at multiples of the batch size, so every encoder batch is the one the one-shot path makes and the
vectors are identical. Candidates whose texts stay in the tables' folder (``load_tables(..., texts=False)``) are
read a batch at a time for the block's key and token counts, and a shard's texts alone when it is encoded
(``tasks.tables.TextColumn``): a language's texts are never whole in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from hbir.core.config import ModelConfig
from hbir.core.files import file_sha256, write_file
from hbir.core.paths import models_cache_dir
from models.encoder import BiEncoder, TextEncoder, TextKind, TorchBackend
from tasks.tables import DatasetTables, TextColumn, TextList
from tasks.vector_file import VectorFile

CandidateMode = Literal["sentence", "paragraph"]
# What makes a model directory's embeddings what they are (the sentence-transformers files do not matter here).
MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model")
FINGERPRINT_CHUNK = 10_000  # texts serialised at once for a block's fingerprint
QUERIES, CANDIDATES = "queries.npy", "candidates.npy"  # the files of a dataset's embeddings folder
Texts = TextList | TextColumn  # a block's texts: in memory, or read from the tables' folder when needed


@dataclass(frozen=True)
class DatasetEmbeddings:
    queries: np.ndarray  # (n_queries, H), row order of tables.queries
    candidates: np.ndarray | VectorFile  # (n_candidates, H), row order of tables.candidates; in memory or on disk


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over the weights, config and tokenizer files of a Hugging Face model directory."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        if (Path(model_dir) / name).exists():
            digest.update(f"{name}={file_sha256(Path(model_dir) / name)}\n".encode())
    return digest.hexdigest()


def resolve_backend(
    model_cfg: ModelConfig,
    device: torch.device,
    model_dir: str | Path,
    model_fp: str,
    log: Callable[[str], None] | None = None,
) -> str:
    """The backend that encodes for ``model.backend``: ``auto`` is torch on a GPU and, on a CPU, the fastest on this
    CPU of those within the quality bound (``tasks.cpu_backend``: timed once per CPU and model shape); the ONNX
    backends run on the CPU whatever the device."""
    if model_cfg.backend != "auto":
        return model_cfg.backend
    if device.type != "cpu":
        return "torch"
    from tasks.cpu_backend import fastest_cpu_backend

    return fastest_cpu_backend(model_dir, model_cfg, model_fp, log)


def load_text_encoder(
    model_dir: str | Path,
    model_cfg: ModelConfig,
    device: torch.device,
    model_fp: str,
    log: Callable[[str], None] | None = None,
) -> TextEncoder:
    """The encoder that embeds for an evaluation: ``model_cfg.backend`` resolved for ``device``; an ONNX backend
    exports the model once, to ``<cache>/models/onnx``, named by its fingerprint ``model_fp`` (saying so to ``log``)."""
    backend = resolve_backend(model_cfg, device, model_dir, model_fp, log)
    if backend in get_args(TorchBackend):
        return BiEncoder.from_config(model_dir, model_cfg, backend).to(device).eval()
    from models.onnx_encoder import OnnxEncoder

    return OnnxEncoder.from_config(model_dir, model_cfg, backend, models_cache_dir() / "onnx", model_fp, log)


def texts_fingerprint(texts: list[str] | Texts, contexts: list[str] | Texts | None = None) -> str:
    """SHA-256 of the texts in order (and of their contexts), unambiguous for any text: of the bytes of
    ``json.dumps([texts, contexts], ensure_ascii=False)``, hashed FINGERPRINT_CHUNK texts at a time, so no copy of a
    block's texts is made whole (a language of a million-passage pool: 650 MB of JSON)."""
    digest = hashlib.sha256(b"[")
    _hash_json_list(digest, as_texts(texts))
    digest.update(b", ")
    if contexts is None:
        digest.update(b"null")
    else:
        _hash_json_list(digest, as_texts(contexts))
    digest.update(b"]")
    return digest.hexdigest()


def _hash_json_list(digest, texts: Texts) -> None:
    """Feed ``digest`` the bytes of ``json.dumps(list(texts), ensure_ascii=False)``, a batch of texts at a time."""
    digest.update(b"[")
    first = True
    for batch in texts.batches(FINGERPRINT_CHUNK):
        if batch:
            digest.update((b"" if first else b", ") + json.dumps(batch, ensure_ascii=False)[1:-1].encode())
            first = False
    digest.update(b"]")


def as_texts(texts: list[str] | Texts) -> Texts:
    """``texts`` to read a batch at a time or by rows: a plain list becomes a ``TextList``."""
    return texts if isinstance(texts, TextList | TextColumn) else TextList(texts)


@dataclass(frozen=True)
class Block:
    """The texts of one (language, queries | candidates) block of a dataset, and their rows in its table."""

    lang: str
    kind: TextKind
    rows: np.ndarray
    texts: Texts
    contexts: Texts | None  # paragraphs, in paragraph mode


@dataclass(frozen=True)
class EmbeddingJob:
    """One cache file that ``embed_dataset`` would encode and write: a whole block, or one shard of a block. Run on
    its own (``run_embedding_job``, e.g. as a task on a Dask cluster), it fills the cache that ``embed_dataset``
    then reads."""

    path: Path | None  # None: not cached
    texts: Texts  # read when the job runs (a shard of a ``TextColumn``: only its rows, by whoever runs it)
    kind: TextKind
    contexts: Texts | None
    label: str
    # what encodes it (TextEncoder.backend, part of its cache key): a Dask worker loads this one, not model.backend
    # auto resolved again on its own CPU
    backend: str
    lengths: list[int] | None = None  # the texts' token counts, when known (a shard's)


def dataset_blocks(tables: DatasetTables, candidates: CandidateMode = "sentence") -> Iterator[Block]:
    """The non-empty blocks of ``tables``, language by language, queries before candidates; a table loaded without
    its candidate texts (``load_tables(..., texts=False)``) gives blocks whose candidate texts are read from its
    folder when needed (``tasks.tables.TextColumn``)."""
    for lang in tables.languages:
        query_rows = np.flatnonzero((tables.queries["lang"] == lang).to_numpy())
        if len(query_rows):
            yield Block(lang, "query", query_rows, TextList(tables.queries["text"].iloc[query_rows].tolist()), None)
        rows = np.flatnonzero((tables.candidates["lang"] == lang).to_numpy())
        if len(rows):
            contexts = tables.text_column("context", lang) if candidates == "paragraph" else None
            yield Block(lang, "passage", rows, tables.text_column("text", lang), contexts)


def embed_dataset(
    encoder: TextEncoder,
    model_fp: str,
    tables: DatasetTables,
    candidates: CandidateMode = "sentence",
    batch_size: int = 64,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
    shard_size: int | None = None,
    into: Path | None = None,
) -> DatasetEmbeddings:
    """Embed every query and candidate of ``tables`` language by language, reusing blocks (and shards of blocks
    larger than ``shard_size`` texts) cached in ``cache_dir`` (``embeddings_cache_dir()``, i.e.
    ``$HBIR_CACHE_DIR/embeddings``, for the default; None: no cache). With ``into`` (a folder) the candidates'
    vectors are written to ``into/candidates.npy`` a shard at a time and never held whole, the queries' to
    ``into/queries.npy`` (``load_vectors``); without it, all are returned in memory."""
    queries, cands = tables.queries, tables.candidates
    log(f"embedding {tables.name}: {len(queries)} queries, {len(cands)} candidates ({candidates})")
    shape = (len(cands), encoder.hidden_size)
    vectors = {
        "query": np.empty((len(queries), encoder.hidden_size), dtype=np.float32),
        "passage": np.empty(shape, dtype=np.float32) if into is None else VectorFile.create(into / CANDIDATES, shape),
    }
    done, total, languages = 0, len(queries) + len(cands), tables.languages
    for block in dataset_blocks(tables, candidates):
        pieces = embedded_pieces(
            encoder, model_fp, block.texts, block.kind, block.contexts, batch_size, cache_dir, block.lang, shard_size
        )
        for rows, piece in pieces:
            vectors[block.kind][block.rows[rows]] = piece
            del piece  # not held while the next shard is encoded
        done += len(block.rows)
        language_rows = (queries["lang"] == block.lang).sum() + (cands["lang"] == block.lang).sum()
        if block.kind == "passage" or language_rows == len(block.rows):  # the language's last block
            # a line per language: in a log (a Prefect worker, no terminal) the bars show nothing for minutes
            counted = f"{languages.index(block.lang) + 1}/{len(languages)} languages"
            log(f"embedded {tables.name} {block.lang} ({counted}, {done}/{total} texts)")
    if into is not None:
        _save_npy(into / QUERIES, vectors["query"])
    return DatasetEmbeddings(vectors["query"], vectors["passage"])


def embedding_jobs(
    encoder: TextEncoder,
    model_fp: str,
    tables: DatasetTables,
    candidates: CandidateMode,
    batch_size: int,
    cache_dir: Path,
    shard_size: int | None = None,
) -> list[EmbeddingJob]:
    """The cache files ``embed_dataset`` would encode for ``tables`` that ``cache_dir`` does not hold yet: the
    missing jobs of ``block_jobs``, so the cache they fill gives ``embed_dataset``'s vectors."""
    jobs = []
    for block in dataset_blocks(tables, candidates):
        name = block_name(encoder, model_fp, block.texts, block.kind, block.contexts)
        if not (Path(cache_dir) / f"{name}.npy").exists():
            label = f"{tables.name} {block.lang}"
            pieces = block_jobs(encoder, name, block.texts, block.kind, block.contexts, batch_size, cache_dir, label,
                                shard_size)  # fmt: skip
            jobs += [job for _, job in pieces if not job.path.exists()]
    return jobs


def block_jobs(
    encoder: TextEncoder,
    name: str,
    texts: Texts,
    kind: TextKind,
    contexts: Texts | None,
    batch_size: int,
    cache_dir: Path | None,
    label: str,
    shard_size: int | None,
) -> list[tuple[np.ndarray | slice, EmbeddingJob]]:
    """The pieces a block named ``name`` is embedded in, each with its rows in the block: the whole block when it
    has at most ``shard_size`` texts, else its shards (``shard_rows``), each its own cache file (None without a
    cache)."""
    if shard_size is None or len(texts) <= shard_size:
        path = None if cache_dir is None else Path(cache_dir) / f"{name}.npy"
        return [(slice(None), EmbeddingJob(path, texts, kind, contexts, label, encoder.backend))]
    lengths = block_token_lengths(encoder, texts, kind, contexts)
    shards = shard_rows(lengths, batch_size, shard_size)
    pieces = []
    for number, rows in enumerate(shards):
        path = None if cache_dir is None else shard_path(cache_dir, name, batch_size, shards, number)
        part = None if contexts is None else contexts.subset(rows)
        shard_label = f"{label} shard {number + 1}/{len(shards)}".strip()
        job = EmbeddingJob(
            path, texts.subset(rows), kind, part, shard_label, encoder.backend, [lengths[i] for i in rows]
        )  # fmt: skip
        pieces.append((rows, job))
    return pieces


def block_token_lengths(encoder: TextEncoder, texts: Texts, kind: TextKind, contexts: Texts | None) -> list[int]:
    """``encoder.token_lengths`` of a block's texts, read and tokenized a batch at a time."""
    lengths: list[int] = []
    pairs = None if contexts is None else contexts.batches()  # the same batches as the texts'
    for batch in texts.batches():
        lengths += encoder.token_lengths(batch, kind, None if pairs is None else next(pairs))
    if len(lengths) != len(texts):
        raise ValueError(f"{len(lengths)} token counts for a block of {len(texts)} texts")  # unequal text batches
    return lengths


def run_embedding_job(encoder: TextEncoder, job: EmbeddingJob, batch_size: int) -> np.ndarray:
    """Encode a job's texts and write its cache file (whole or not at all; none without a path): (N, H)."""
    text_limit, context_limit = encoder.char_limits(pairs=job.contexts is not None)  # no more reaches the encoder
    contexts = None if job.contexts is None else job.contexts.read(context_limit)
    texts = job.texts.read(text_limit)
    vectors = encoder.embed(
        texts, job.kind, batch_size, contexts, show_progress=None, label=job.label, lengths=job.lengths
    ).numpy()
    if job.path is not None:
        write_file(job.path, lambda tmp: _save_npy(tmp, vectors))
    return vectors


def block_name(
    encoder: TextEncoder, model_fp: str, texts: list[str] | Texts, kind: TextKind, contexts: list[str] | Texts | None
) -> str:
    """The cache name of a block: the SHA-256 of what its vectors depend on (module doc)."""
    key = {
        "model": model_fp,
        "backend": encoder.encoding,
        "texts": texts_fingerprint(texts, contexts),
        "kind": kind,
        "prefix": encoder.prefixes[kind],
        "max_length": encoder.max_length,
        "candidates": "paragraph" if contexts is not None else "sentence",
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def shard_path(cache_dir: Path, name: str, batch_size: int, shards: list[np.ndarray], number: int) -> Path:
    """The cache file of shard ``number`` of block ``name``, cut into ``shards`` at ``batch_size``."""
    return Path(cache_dir) / f"{name}-b{batch_size}-s{len(shards[0])}-{number:05d}of{len(shards):05d}.npy"


def embed_texts(
    encoder: TextEncoder,
    model_fp: str,
    texts: list[str],
    kind: TextKind,
    contexts: list[str] | None = None,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    label: str = "",
    shard_size: int | None = None,
) -> np.ndarray:
    """Embeddings (N, H) of ``texts``: the pieces of ``embedded_pieces`` put together."""
    vectors = np.empty((len(texts), encoder.hidden_size), dtype=np.float32)
    contexts = None if contexts is None else as_texts(contexts)
    for rows, piece in embedded_pieces(encoder, model_fp, as_texts(texts), kind, contexts, batch_size, cache_dir,
                                       label, shard_size):  # fmt: skip
        vectors[rows] = piece
        del piece  # not held while the next shard is encoded
    return vectors


def embedded_pieces(
    encoder: TextEncoder,
    model_fp: str,
    texts: Texts,
    kind: TextKind,
    contexts: Texts | None,
    batch_size: int,
    cache_dir: Path | None,
    label: str,
    shard_size: int | None,
) -> Iterator[tuple[np.ndarray | slice, np.ndarray]]:
    """The embeddings of ``texts`` a piece at a time, (rows of ``texts``, their vectors): the whole block when
    ``cache_dir`` holds this exact block, else its shards of about ``shard_size`` texts (the block when it has no
    more), each read from the cache when it is there and encoded (and cached) when not (module doc)."""
    name = block_name(encoder, model_fp, texts, kind, contexts)
    if cache_dir is not None and (Path(cache_dir) / f"{name}.npy").exists():
        yield slice(None), np.load(Path(cache_dir) / f"{name}.npy")
        return
    for rows, job in block_jobs(encoder, name, texts, kind, contexts, batch_size, cache_dir, label, shard_size):
        cached = job.path is not None and job.path.exists()
        yield rows, np.load(job.path) if cached else run_embedding_job(encoder, job, batch_size)


def shard_rows(lengths: list[int], batch_size: int, shard_size: int) -> list[np.ndarray]:
    """The row numbers of each shard: rows in ``BiEncoder.embed``'s order (by token count, stable), cut every
    ``shard_size`` rounded up to whole batches, so each shard's batches are the one-shot path's."""
    order = np.array(sorted(range(len(lengths)), key=lengths.__getitem__), dtype=np.int64)
    step = -(-shard_size // batch_size) * batch_size
    return [order[start : start + step] for start in range(0, len(order), step)]


def _save_npy(path: Path, vectors: np.ndarray) -> None:
    with open(path, "wb") as stream:  # a handle: np.save would add ".npy" to the temporary name
        np.save(stream, vectors)


def load_vectors(folder: str | Path) -> DatasetEmbeddings:
    """The embeddings ``embed_dataset(..., into=folder)`` wrote: the queries' in memory, the candidates' as a
    ``VectorFile`` (read a block at a time by indexing and evaluation)."""
    return DatasetEmbeddings(np.load(Path(folder) / QUERIES), VectorFile(Path(folder) / CANDIDATES))
