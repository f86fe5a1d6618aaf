"""Embedding in shards: the vectors of the one-shot path, bit for bit, and a run stopped mid-embedding embeds only the
shards that are missing when started again."""

import numpy as np
import pytest

from hbir.core.config import DEFAULT_LANGUAGES
from models.encoder import BiEncoder
from tasks.embedding import embed_dataset, embed_texts, load_vectors, shard_rows
from tasks.ingest import ingest_dataset
from tasks.tables import DatasetTables, load_tables, save_tables
from tasks.vector_file import VectorFile

BATCH = 16


@pytest.fixture(scope="module")
def german(lareqa_dir):
    """XQuAD-R's German sentences (1,189 real texts of many lengths)."""
    tables = ingest_dataset(lareqa_dir, "xquad-r", DEFAULT_LANGUAGES)
    return tables.candidates[tables.candidates["lang"] == "de"]["text"].tolist()


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return BiEncoder.from_dir(tiny_model_dir, passage_prefix="passage: ", max_length=32)


def test_shards_cover_every_row_once_in_whole_batches():
    lengths = [5, 3, 9, 1, 3, 7, 2, 8, 6, 4, 1]
    shards = shard_rows(lengths, batch_size=2, shard_size=3)  # 3 rounds up to 4: two whole batches
    assert [len(rows) for rows in shards] == [4, 4, 3]
    flat = np.concatenate(shards)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_sharded_vectors_are_identical_to_the_one_shot_path(encoder, german, tmp_path):
    one_shot = embed_texts(encoder, "tiny", german, "passage", None, BATCH, cache_dir=None)
    sharded = embed_texts(encoder, "tiny", german, "passage", None, BATCH, cache_dir=tmp_path, shard_size=100)
    assert np.array_equal(sharded, one_shot)
    assert len(list(tmp_path.glob("*of*.npy"))) == len(shard_rows([0] * len(german), BATCH, 100)) == 12


def test_a_stopped_embedding_started_again_embeds_only_the_missing_shards(encoder, german, tmp_path, monkeypatch):
    whole = embed_texts(encoder, "tiny", german, "passage", None, BATCH, cache_dir=None)
    real_embed, calls, dying = BiEncoder.embed, [], [True]

    def dies_at_the_fifth_shard(self, texts, *args, **kwargs):
        calls.append(len(texts))
        if dying[0] and len(calls) == 5:
            raise RuntimeError("stopped")  # as a kill would, mid-way
        return real_embed(self, texts, *args, **kwargs)

    monkeypatch.setattr(BiEncoder, "embed", dies_at_the_fifth_shard)
    with pytest.raises(RuntimeError, match="stopped"):
        embed_texts(encoder, "tiny", german, "passage", None, BATCH, cache_dir=tmp_path, shard_size=100)
    assert len(list(tmp_path.glob("*of*.npy"))) == 4
    dying[0] = False
    calls.clear()
    again = embed_texts(encoder, "tiny", german, "passage", None, BATCH, cache_dir=tmp_path, shard_size=100)
    assert len(calls) == 12 - 4 and np.array_equal(again, whole)
    calls.clear()
    embed_texts(encoder, "tiny", german, "passage", None, BATCH, cache_dir=tmp_path, shard_size=100)
    assert calls == []  # all cached


def test_a_dataset_embedded_in_shards_equals_one_embedded_at_once(encoder, lareqa_dir, tmp_path):
    full = ingest_dataset(lareqa_dir, "xquad-r", DEFAULT_LANGUAGES)
    two = lambda frame: frame[frame["lang"].isin(["de", "th"])].reset_index(drop=True)  # noqa: E731
    tables = DatasetTables(full.name, two(full.queries), two(full.candidates), full.qrels)
    quiet = lambda line: None  # noqa: E731
    at_once = embed_dataset(encoder, "tiny", tables, "sentence", BATCH, None, quiet)
    sharded = embed_dataset(encoder, "tiny", tables, "sentence", BATCH, tmp_path, quiet, shard_size=250)
    assert np.array_equal(at_once.queries, sharded.queries)
    assert np.array_equal(at_once.candidates, sharded.candidates)
    # written to a folder shard by shard (the stages' way), read back: the same vectors, the candidates on disk
    (tmp_path / "vectors").mkdir()
    embed_dataset(
        encoder, "tiny", tables, "sentence", BATCH, tmp_path, quiet, shard_size=250, into=tmp_path / "vectors"
    )
    on_disk = load_vectors(tmp_path / "vectors")
    assert isinstance(on_disk.candidates, VectorFile) and on_disk.candidates.shape == at_once.candidates.shape
    assert np.array_equal(on_disk.queries, at_once.queries)
    assert np.array_equal(np.asarray(on_disk.candidates), at_once.candidates)


def test_tables_read_back_without_texts_embed_to_the_same_vectors(encoder, lareqa_dir, tmp_path):
    # the candidates' texts (and contexts, in paragraph mode) are read from the folder a language at a time
    full = ingest_dataset(lareqa_dir, "xquad-r", DEFAULT_LANGUAGES)
    keep = ["de", "el"]
    tables = DatasetTables(
        "xquad-r",
        full.queries[full.queries["lang"].isin(keep)].iloc[::40].reset_index(drop=True),
        full.candidates[full.candidates["lang"].isin(keep)].iloc[::-40].reset_index(drop=True),  # languages mixed
        full.qrels,
    )
    save_tables(tables, tmp_path / "tables")
    loaded = load_tables(tmp_path / "tables", texts=False)
    assert "text" not in loaded.candidates and "context" not in loaded.candidates
    for mode in ("sentence", "paragraph"):
        expected = embed_dataset(encoder, "tiny", tables, mode, BATCH, cache_dir=None, log=lambda _: None)
        got = embed_dataset(encoder, "tiny", loaded, mode, BATCH, cache_dir=None, log=lambda _: None)
        assert np.array_equal(got.candidates, expected.candidates) and np.array_equal(got.queries, expected.queries)


@pytest.mark.parametrize("chunk", [7, 10_000])
def test_a_blocks_fingerprint_is_that_of_its_whole_json_made_a_chunk_at_a_time(german, chunk, monkeypatch):
    # the cache key of earlier versions (the JSON made whole), so embeddings cached before are found again
    import hashlib
    import json

    from tasks import embedding

    monkeypatch.setattr(embedding, "FINGERPRINT_CHUNK", chunk)
    odd = ['a "quoted" text', "back\\slash", "tab\tnew\nline", "", "中文 ü \u200b", "\x00"]
    for texts, contexts in [(german, None), (german[:50], german[50:100]), ([], None), (odd, odd[::-1]), ([], [])]:
        whole = hashlib.sha256(json.dumps([texts, contexts], ensure_ascii=False).encode()).hexdigest()
        assert embedding.texts_fingerprint(texts, contexts) == whole


@pytest.mark.parametrize("mode", ["sentence", "paragraph"])
def test_candidates_left_in_the_folder_are_read_a_shard_at_a_time(encoder, lareqa_dir, tmp_path, monkeypatch, mode):
    from tasks.tables import TextColumn

    full = ingest_dataset(lareqa_dir, "xquad-r", DEFAULT_LANGUAGES)
    keep = lambda frame: frame[frame["lang"].isin(["de", "el"])].reset_index(drop=True)  # noqa: E731
    # every 10th sentence (paragraphs make the tiny model's byte tokenizer slow), languages as saved
    tables = DatasetTables("xquad-r", keep(full.queries).iloc[::20], keep(full.candidates).iloc[::10], full.qrels)
    save_tables(tables, tmp_path / "tables")
    loaded = load_tables(tmp_path / "tables", texts=False)
    one_shot = embed_dataset(encoder, "tiny", tables, mode, BATCH, cache_dir=None, log=lambda _: None)

    read, real_read = [], TextColumn.read
    monkeypatch.setattr(TextColumn, "read", lambda self, *cut: read.append(len(self)) or real_read(self, *cut))
    monkeypatch.setattr(type(loaded), "candidate_texts", lambda *args: pytest.fail("a language's texts read whole"))
    sharded = embed_dataset(encoder, "tiny", loaded, mode, BATCH, tmp_path / "cache", lambda _: None, shard_size=30)
    assert np.array_equal(sharded.candidates, one_shot.candidates)
    assert np.array_equal(sharded.queries, one_shot.queries)
    # each shard's texts (and paragraphs) read on their own: 119 German and 121 Greek sentences, shards of 32
    assert read and max(read) == 32
    assert sum(read) == (2 if mode == "paragraph" else 1) * len(tables.candidates)
