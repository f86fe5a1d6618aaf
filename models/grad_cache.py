"""Gradient caching (GradCache, Gao et al. 2021): the contrastive loss of a batch larger than a device holds, with the
loss and the gradients of the whole batch in one pass.

    embeddings, states = embed_without_graph(encoder, features, micro_batch_size)      # pass 1: no graph kept
    embeddings.requires_grad_(); loss_of(embeddings).backward()                         # d loss / d embedding
    backward_through_encoder(encoder, features, micro_batch_size, embeddings.grad, states)   # pass 2

Pass 1 encodes the batch micro-batch by micro-batch without keeping activations; the loss over all embeddings gives
each embedding its gradient; pass 2 encodes each micro-batch again, with its graph, and back-propagates that cached
gradient, so the weights get the full batch's gradient while only one micro-batch's activations are alive. The random
state of each micro-batch in pass 1 is replayed in pass 2, so dropout draws the same masks. (Gradient accumulation
would instead shrink the in-batch negatives to the micro-batch.)
"""

from __future__ import annotations

import torch

from models.encoder import BiEncoder

Features = dict[str, torch.Tensor]
RandomState = tuple[torch.Tensor, torch.Tensor | None]  # (CPU, CUDA device)


def micro_batches(features: Features, size: int) -> list[Features]:
    """``features`` (tokenized, padded to one length) cut into consecutive row blocks of at most ``size``."""
    rows = len(features["input_ids"])
    return [{name: value[start : start + size] for name, value in features.items()} for start in range(0, rows, size)]


def embed_without_graph(encoder: BiEncoder, features: Features, size: int) -> tuple[torch.Tensor, list[RandomState]]:
    """The embeddings of all rows (no graph), and the random state before each micro-batch."""
    states, parts = [], []
    with torch.no_grad():
        for block in micro_batches(features, size):
            states.append(_random_state(encoder.device))
            parts.append(encoder(block))
    return torch.cat(parts), states


def backward_through_encoder(
    encoder: BiEncoder, features: Features, size: int, grads: torch.Tensor, states: list[RandomState]
) -> None:
    """Accumulate into the weights' ``.grad`` the gradient that ``grads`` (d loss / d embedding, one row per row of
    ``features``) implies, one micro-batch at a time; the random state afterwards is as it was before."""
    after = _random_state(encoder.device)
    for block, block_grads, state in zip(micro_batches(features, size), grads.split(size), states, strict=True):
        _set_random_state(state, encoder.device)
        encoder(block).backward(block_grads)
    _set_random_state(after, encoder.device)


def _random_state(device: torch.device) -> RandomState:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_random_state(state: RandomState, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
