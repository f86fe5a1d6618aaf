"""The bi-encoder: pooling, normalisation, prefixes, padding, and the saved directory other tools load."""

from __future__ import annotations

import pytest
import torch

from models.encoder import CHARS_PER_TOKEN, BiEncoder, mean_pool

TEXTS = ["Wer schrieb Faust?", "誰が『ファウスト』を書いたか", "Who wrote Faust, the tragedy in two parts, and when?"]


@pytest.fixture
def encoder(tiny_model_dir) -> BiEncoder:
    return BiEncoder.from_dir(tiny_model_dir, query_prefix="query: ", passage_prefix="passage: ", max_length=64)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2); the third token is padding
    mask = torch.tensor([[1, 1, 0]])
    # (1 + 3) / 2 = 2, (2 + 4) / 2 = 3: the padding's 100s must not count
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]


def test_embeddings_have_unit_length(encoder):
    embeddings = encoder.embed(TEXTS, "query")
    assert embeddings.shape == (3, encoder.model.config.hidden_size)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_a_text_embeds_the_same_alone_and_next_to_longer_ones(encoder):
    """Guards against pooling over padding: a short text padded to a long neighbour must not change."""
    alone = encoder.embed(TEXTS[:1], "query")
    in_batch = encoder.embed(TEXTS, "query")
    torch.testing.assert_close(in_batch[:1], alone, atol=1e-5, rtol=0)


def test_prefixes_are_prepended_by_kind(encoder, tiny_model_dir):
    plain = BiEncoder.from_dir(tiny_model_dir, max_length=64)
    torch.testing.assert_close(encoder.embed(TEXTS, "query"), plain.embed(["query: " + t for t in TEXTS], "query"))
    torch.testing.assert_close(encoder.embed(TEXTS, "passage"), plain.embed(["passage: " + t for t in TEXTS], "query"))
    assert not torch.allclose(encoder.embed(TEXTS, "query"), encoder.embed(TEXTS, "passage"))


def test_saved_directory_reloads_with_the_same_embeddings(encoder, tmp_path):
    with torch.no_grad():  # make it differ from the random:tiny source, so a reload of the source would fail
        encoder.model.embeddings.word_embeddings.weight.mul_(1.5)
    encoder.save(tmp_path / "model")
    reloaded = BiEncoder.from_dir(tmp_path / "model", query_prefix="query: ", passage_prefix="passage: ")
    torch.testing.assert_close(reloaded.embed(TEXTS, "query"), encoder.embed(TEXTS, "query"))


def test_sentence_transformers_loads_the_saved_model_with_its_prefixes(encoder, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    encoder.save(tmp_path / "model")
    st_model = sentence_transformers.SentenceTransformer(str(tmp_path / "model"), device="cpu")
    for kind in ("query", "passage"):
        theirs = st_model.encode(TEXTS, prompt_name=kind, convert_to_tensor=True)
        torch.testing.assert_close(theirs, encoder.embed(TEXTS, kind), atol=1e-5, rtol=1e-4)


def test_freezing_keeps_only_the_word_embeddings_fixed(encoder):
    encoder.freeze_word_embeddings()
    frozen = [name for name, p in encoder.named_parameters() if not p.requires_grad]
    assert frozen == ["model.embeddings.word_embeddings.weight"]


def test_long_paragraphs_encode_as_the_tokenizer_does_with_the_whole_paragraph(encoder, lareqa_dir):
    """Cutting contexts and texts before tokenizing (to spare the tokenizer whole paragraphs) changes nothing
    encoded."""
    import json

    sentences, paragraphs = [], []
    for lang in ("de", "zh", "th"):  # Latin, CJK and Thai script, paragraphs of up to ~4,000 characters
        data = json.loads((lareqa_dir / "xquad-r" / f"{lang}.json").read_text(encoding="utf-8"))["data"]
        for article in data[:3]:
            for paragraph in article["paragraphs"]:
                sentences.append(paragraph["sentences"][-1])
                paragraphs.append(paragraph["context"])
    assert max(map(len, paragraphs)) > CHARS_PER_TOKEN * encoder.max_length  # the cut does happen
    prefixed = ["passage: " + sentence for sentence in sentences]
    whole = encoder.tokenizer(prefixed, paragraphs, truncation="longest_first", max_length=encoder.max_length)
    cut = encoder.tokenize(sentences, "passage", paragraphs)
    for row, ids in enumerate(whole["input_ids"]):
        assert cut["input_ids"][row][: len(ids)].tolist() == ids
    assert encoder.token_lengths(sentences, "passage", paragraphs) == [len(ids) for ids in whole["input_ids"]]
    # long texts alone (a corpus of documents) are cut too: the same tokens as the whole text
    whole = encoder.tokenizer(["passage: " + paragraph for paragraph in paragraphs], truncation=True, max_length=64)
    cut = encoder.tokenize(paragraphs, "passage")
    for row, ids in enumerate(whole["input_ids"]):
        assert cut["input_ids"][row][: len(ids)].tolist() == ids
    assert encoder.token_lengths(paragraphs, "passage") == [len(ids) for ids in whole["input_ids"]]


def test_the_bf16_backend_computes_in_bfloat16_on_a_cpu_close_to_float32(encoder, tiny_model_dir):
    bf16 = BiEncoder.from_dir(tiny_model_dir, query_prefix="query: ", max_length=64, backend="torch-bf16")
    float32, rounded = encoder.embed(TEXTS, "query"), bf16.embed(TEXTS, "query")
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, float32)  # bfloat16 products, float32 out
    assert (rounded * float32).sum(dim=1).min() > 0.999
    assert bf16.encoding == "torch-bf16" != encoder.encoding  # its own embedding cache key
