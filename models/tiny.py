"""The ``random:tiny`` model source: a small randomly initialised BERT with a byte-level tokenizer, built in code.

It needs no download and no model file, reads every language (any UTF-8 text is a sequence of byte tokens) and
trains a step in milliseconds, so tests and the ``smoke`` profile exercise the whole pipeline without real weights.
Its retrieval quality is that of random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from hbir.core.files import build_once
from hbir.core.paths import models_cache_dir

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Bump when the architecture or tokenizer below changes, so cached directories are not reused.
TINY_VERSION = 2
TINY_SHAPE = {  # 2 layers of width 32: ~0.1M weights
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
}


def byte_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A BPE tokenizer with the 256 byte symbols and no merges: one token per UTF-8 byte, BERT-style specials."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + alphabet)}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build_tiny_model(out_dir: Path, seed: int = 0) -> None:
    """Write a randomly initialised tiny BERT (weights fixed by ``seed``) and its tokenizer to ``out_dir``."""
    tokenizer = byte_tokenizer(TINY_SHAPE["max_position_embeddings"])
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_SHAPE)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = BertModel(config)
    finally:
        torch.random.set_rng_state(generator_state)  # building a model must not move the caller's RNG
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def tiny_model_dir(cache_dir: Path | None = None) -> Path:
    """The ``random:tiny`` model directory, built on first use (well under a second)."""
    out_dir = Path(cache_dir or models_cache_dir()) / f"random-tiny-v{TINY_VERSION}"
    return build_once(out_dir, build_tiny_model)
