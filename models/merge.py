"""Weight-space ensembling with the base model (WiSE-FT, Wortsman et al., CVPR 2022): the merged weights are
(1 - weight) * base + weight * fine-tuned, tensor by tensor. weight 0 is the base model, 1 the fine-tuned one.

    merged = merge_state(base.state_dict(), tuned.state_dict(), weight=0.5)     # plain tensors
    merge_models(base_dir, tuned_dir, weight=0.5, out_dir=run_dir / "model")    # model directories

An encoder already trained for retrieval (e5) keeps more of its monolingual strength merged, and most of what
fine-tuning adds; the merge costs no training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel

from hbir.core.config import ModelConfig
from hbir.core.errors import HbirError
from hbir.core.files import replace_dir
from models.encoder import BiEncoder


def merge_state(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], weight: float
) -> dict[str, torch.Tensor]:
    """``(1 - weight) * base + weight * tuned`` for every floating-point tensor (integer buffers, such as position
    ids, are the tuned model's). Both state dicts must have the same tensors."""
    if not 0.0 <= weight <= 1.0:
        raise HbirError(f"merge weight {weight}: expected a number from 0 (the base model) to 1 (the fine-tuned one)")
    if base.keys() != tuned.keys():
        differ = sorted(base.keys() ^ tuned.keys())
        raise HbirError(f"cannot merge: the models have different tensors ({', '.join(differ[:5])})")
    merged = {}
    for name, tensor in tuned.items():
        if tensor.is_floating_point():
            merged[name] = torch.lerp(base[name].to(tensor.dtype), tensor, weight)  # base + weight * (tuned - base)
        else:
            merged[name] = tensor
    return merged


def base_state(base_dir: str | Path) -> dict[str, torch.Tensor]:
    """The weights of the model in ``base_dir``, as a state dict."""
    return AutoModel.from_pretrained(base_dir).state_dict()


def merge_models(
    base_dir: str | Path, tuned_dir: str | Path, weight: float, out_dir: str | Path, model_cfg: ModelConfig
) -> Path:
    """Save the merge of two model directories to ``out_dir``: the fine-tuned model's tokenizer with merged weights,
    saved as ``BiEncoder.save`` does (with the prefixes and max_length of ``model_cfg``). Returns ``out_dir``."""
    tuned = BiEncoder.from_config(tuned_dir, model_cfg)
    tuned.model.load_state_dict(merge_state(base_state(base_dir), tuned.model.state_dict(), weight))
    return replace_dir(out_dir, tuned.save)
