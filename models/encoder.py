"""The bi-encoder: one transformers ``AutoModel`` for queries and passages, mean pooling, L2 normalisation.

    encoder = BiEncoder.from_dir(model_dir, query_prefix="query: ", passage_prefix="passage: ", max_length=128)
    q = encoder.embed(["Who wrote Faust?"], "query")   # (1, H), unit length
    encoder.save(out_dir)  # a Hugging Face directory that SentenceTransformer(out_dir) also loads

Prefixes are part of the model's contract (e5 was trained with ``query: `` / ``passage: ``), so they are saved with
it as sentence-transformers prompts: ``SentenceTransformer(out_dir).encode(texts, prompt_name="query")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hbir.core.config import ModelConfig

TextKind = Literal["query", "passage"]
TorchBackend = Literal["torch", "torch-bf16"]
# token_lengths tokenizes this many texts at a time: fast tokenizers keep each whole pair (a paragraph of thousands of
# tokens) until they truncate it, and all of them at once took 16 GiB for 3 languages of XQuAD-R (paragraph mode)
LENGTH_CHUNK = 256
CHARS_PER_TOKEN = 16  # more characters than any token of a real vocabulary spans (see TextEncoder.cut)

# Read by sentence-transformers (2.x to 6.x): Transformer -> mean Pooling -> Normalize.
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors that are not padding: (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def text_settings(model_cfg: ModelConfig) -> dict[str, str | int]:
    """The encoder settings of the ``model`` config section: prefixes and maximum length."""
    return {
        "query_prefix": model_cfg.query_prefix,
        "passage_prefix": model_cfg.passage_prefix,
        "max_length": model_cfg.max_length,
    }


class TextEncoder:
    """What embedding needs of an encoder, whatever runs it: the prefixes, the tokenizer, and ``embed`` (texts ->
    unit vectors), in batches of similar token counts. A subclass encodes one tokenized batch (``encode_batch``):
    ``BiEncoder`` with PyTorch, ``models.onnx_encoder.OnnxEncoder`` with ONNX Runtime."""

    tokenizer: PreTrainedTokenizerBase
    prefixes: dict[str, str]
    max_length: int
    backend: str  # what encodes: "torch", "torch-bf16", "onnx", "onnx-int8"

    @property
    def encoding(self) -> str:
        """What besides the model, texts and settings makes the vectors what they are (the backend, and the
        version of an export): part of the embedding cache key."""
        return self.backend

    def set_text_settings(
        self, tokenizer: PreTrainedTokenizerBase, query_prefix: str, passage_prefix: str, max_length: int
    ) -> None:
        self.tokenizer = tokenizer
        self.prefixes = {"query": query_prefix, "passage": passage_prefix}
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def tokenize(self, texts: list[str], kind: TextKind, contexts: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Prefix, tokenize and pad to the longest text of this batch (not to max_length), on the model's device.

        With ``contexts``, each text is encoded with its context as a text pair (LAReQA's sentence + paragraph),
        the context truncated first.
        """
        texts, contexts = self.cut(texts, contexts)
        features = self.tokenizer(
            [self.prefixes[kind] + text for text in texts],
            contexts,
            padding=True,
            truncation="longest_first" if contexts is not None else True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {name: tensor.to(self.device) for name, tensor in features.items()}

    def cut(self, texts: list[str], contexts: list[str] | None) -> tuple[list[str], list[str] | None]:
        """Texts, or the contexts of text pairs, cut to CHARS_PER_TOKEN * max_length characters: more than the
        encoder can keep of them (a token spans fewer characters), so what is encoded is the same, and the tokenizer
        does not first encode (and split into overflowing windows) whole documents of thousands of tokens: 256
        Hindi passages of 5,000 characters took the tiny model's byte tokenizer 2.0 s, cut 0.9 s. Of a pair only
        the context is cut: a pair too long for the encoder is truncated by halves, and which half gets an odd
        token depends on which side is longer, which cutting both could turn around."""
        text_limit, context_limit = self.char_limits(pairs=contexts is not None)
        cut_contexts = None if contexts is None else [context[:context_limit] for context in contexts]
        return [text[:text_limit] for text in texts], cut_contexts

    def char_limits(self, pairs: bool) -> tuple[int | None, int | None]:
        """How many characters of a text, and of its context, ``cut`` keeps (None: all): a text alone and a pair's
        context are cut to CHARS_PER_TOKEN * max_length, a pair's text is not."""
        limit = CHARS_PER_TOKEN * self.max_length
        return (None, limit) if pairs else (limit, None)

    def token_lengths(self, texts: list[str], kind: TextKind, contexts: list[str] | None = None) -> list[int]:
        """Tokens per text as ``tokenize`` would encode it (truncated): sorting by this, not by characters, keeps the
        padding small across scripts (measured on XQuAD-R: 31% fewer padded positions than sorting by characters)."""
        truncation = "longest_first" if contexts is not None else True
        lengths = []
        for start in range(0, len(texts), LENGTH_CHUNK):  # a tokenizer holds every full pair before truncating it
            chunk, pairs = self.cut(
                texts[start : start + LENGTH_CHUNK],
                None if contexts is None else contexts[start : start + LENGTH_CHUNK],
            )
            prefixed = [self.prefixes[kind] + text for text in chunk]
            encoded = self.tokenizer(prefixed, pairs, truncation=truncation, max_length=self.max_length)
            lengths += [len(ids) for ids in encoded["input_ids"]]
        return lengths

    def encode_batch(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit-length float32 embeddings (B, H), on the CPU, of one batch ``tokenize`` made."""
        raise NotImplementedError

    @torch.inference_mode()
    def embed(
        self,
        texts: list[str],
        kind: TextKind,
        batch_size: int = 64,
        contexts: list[str] | None = None,
        show_progress: bool | None = False,
        label: str = "",
        lengths: list[int] | None = None,
    ) -> torch.Tensor:
        """Embeddings (N, H) in float32 on the CPU, computed in batches of similar token counts (little padding).

        ``contexts``: encode text pairs (see ``tokenize``). ``show_progress``: a progress bar (None: only on a
        terminal), described as "embedding <label> <kind>s". ``lengths``: the texts' ``token_lengths``, when the
        caller has them (a shard of a large block), so the texts are not tokenized once more to sort them.
        """
        if lengths is None:
            lengths = self.token_lengths(texts, kind, contexts)
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        out = torch.empty(len(texts), self.hidden_size)
        starts = range(0, len(texts), batch_size)
        bar_off = None if show_progress is None else not show_progress  # tqdm: None = only on a terminal
        for start in tqdm(
            starts, desc=" ".join(filter(None, ["embedding", label, f"{kind}s"])), unit="batch", disable=bar_off
        ):
            chunk = order[start : start + batch_size]
            pair = [contexts[i] for i in chunk] if contexts is not None else None
            out[chunk] = self.encode_batch(self.tokenize([texts[i] for i in chunk], kind, pair))
        return out


class BiEncoder(TextEncoder, nn.Module):
    """The trainable encoder: a transformers ``AutoModel`` in PyTorch, mean pooling, L2 normalisation."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        query_prefix: str = "",
        passage_prefix: str = "",
        max_length: int = 128,
        backend: TorchBackend = "torch",
    ) -> None:
        nn.Module.__init__(self)
        self.model = model
        self.set_text_settings(tokenizer, query_prefix, passage_prefix, max_length)
        self.backend = backend  # torch-bf16: bfloat16 products on a CPU too (on a GPU both are)

    @classmethod
    def from_dir(cls, model_dir: str | Path, **settings) -> BiEncoder:
        """Load a Hugging Face model directory, with PyTorch's fused (SDPA) attention."""
        model = AutoModel.from_pretrained(model_dir, attn_implementation="sdpa")
        return cls(model, AutoTokenizer.from_pretrained(model_dir), **settings)

    @classmethod
    def from_config(cls, model_dir: str | Path, model_cfg: ModelConfig, backend: TorchBackend = "torch") -> BiEncoder:
        """``from_dir`` with the prefixes and maximum length of the ``model`` config section."""
        return cls.from_dir(model_dir, **text_settings(model_cfg), backend=backend)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit-length embeddings (B, H) of tokenized texts."""
        hidden = self.model(**features).last_hidden_state  # (B, T, H)
        return F.normalize(mean_pool(hidden, features["attention_mask"]), dim=-1)

    def encode_batch(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        device = self.device.type
        bf16 = device == "cuda" or (device == "cpu" and self.backend == "torch-bf16")
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            return self(features).float().cpu()

    def embed(self, *args, **kwargs) -> torch.Tensor:
        """``TextEncoder.embed`` in eval mode (no dropout); a model that was training is left training."""
        was_training = self.training
        self.eval()
        try:
            return super().embed(*args, **kwargs)
        finally:
            self.train(was_training)

    def freeze_word_embeddings(self) -> None:
        """Keep the token embedding table fixed during training (position embeddings and the encoder still learn)."""
        self.model.get_input_embeddings().weight.requires_grad_(False)

    def save(self, out_dir: str | Path) -> Path:
        """Write a Hugging Face model directory plus the sentence-transformers files; returns ``out_dir``."""
        out_dir = Path(out_dir)
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        _write_json(out_dir / "modules.json", ST_MODULES)
        _write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": self.max_length, "do_lower_case": False})
        pooling = {"word_embedding_dimension": self.model.config.hidden_size, "pooling_mode_mean_tokens": True}
        _write_json(out_dir / "1_Pooling" / "config.json", pooling)
        (out_dir / "2_Normalize").mkdir(exist_ok=True)
        # sentence-transformers' encode_document and MTEB ask for "document"; "passage" is what hbir calls it
        named = {
            "query": self.prefixes["query"],
            "document": self.prefixes["passage"],
            "passage": self.prefixes["passage"],
        }
        prompts = {"prompts": named, "default_prompt_name": None, "similarity_fn_name": "cosine"}
        _write_json(out_dir / "config_sentence_transformers.json", prompts)
        return out_dir


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
