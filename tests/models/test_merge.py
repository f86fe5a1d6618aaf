"""Merging with the base model (WiSE-FT): weight 0 is the base model, 1 the fine-tuned one (identical vectors), and
0.5 the average of the weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hbir.core.config import ModelConfig
from hbir.core.errors import HbirError
from models.encoder import BiEncoder
from models.merge import merge_models, merge_state

MODEL = ModelConfig(source="random:tiny", query_prefix="q: ", passage_prefix="p: ", max_length=32)
TEXTS = ["Wo liegt Paris?", "Paris liegt in Frankreich.", "巴黎在法国。"]


@pytest.fixture(scope="module")
def tuned_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with every weight moved: a stand-in for a fine-tuned model of the same architecture."""
    encoder = BiEncoder.from_config(tiny_model_dir, MODEL)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in encoder.model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    return encoder.save(tmp_path_factory.mktemp("tuned"))


def embeddings(model_dir) -> torch.Tensor:
    return BiEncoder.from_config(model_dir, MODEL).embed(TEXTS, "query")


@pytest.mark.parametrize("weight, which", [(0.0, "base"), (1.0, "tuned")])
def test_the_ends_are_the_two_models_exactly(tiny_model_dir, tuned_dir, tmp_path, weight, which):
    merged = merge_models(tiny_model_dir, tuned_dir, weight, tmp_path / "merged", MODEL)
    expected = embeddings(tiny_model_dir if which == "base" else tuned_dir)
    assert torch.equal(embeddings(merged), expected)


def test_half_is_the_average_of_the_weights(tiny_model_dir, tuned_dir, tmp_path):
    merged = load_file(merge_models(tiny_model_dir, tuned_dir, 0.5, tmp_path / "merged", MODEL) / "model.safetensors")
    base = BiEncoder.from_dir(tiny_model_dir).model.state_dict()
    tuned = load_file(tuned_dir / "model.safetensors")
    for name, tensor in merged.items():
        assert torch.allclose(tensor, (base[name] + tuned[name]) / 2, atol=1e-7), name
    assert not torch.equal(merged["embeddings.word_embeddings.weight"], tuned["embeddings.word_embeddings.weight"])


def test_the_merged_model_keeps_its_prompts(tiny_model_dir, tuned_dir, tmp_path):
    merged = merge_models(tiny_model_dir, tuned_dir, 0.5, tmp_path / "merged", MODEL)
    assert '"query": "q: "' in (merged / "config_sentence_transformers.json").read_text()


def test_a_weight_outside_0_to_1_or_other_tensors_are_refused():
    base = {"w": torch.zeros(2)}
    with pytest.raises(HbirError, match="from 0"):
        merge_state(base, {"w": torch.ones(2)}, 1.5)
    with pytest.raises(HbirError, match="different tensors"):
        merge_state(base, {"v": torch.ones(2)}, 0.5)
    assert torch.equal(merge_state(base, {"w": torch.ones(2)}, 0.25)["w"], torch.full((2,), 0.25))
