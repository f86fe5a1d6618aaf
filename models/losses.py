"""InfoNCE over in-batch negatives: query i's positive is passage i, every other passage of the batch a negative.

``info_nce`` is a pure function of the embeddings (the trainer encodes, gathers the embeddings of every rank and
caches gradients around it: tasks/training.py). Convention: scores are cosine similarities divided by ``temperature``
(``scale = 1 / temperature``; temperature 0.05 is sentence-transformers' scale 20).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(query_embeddings: torch.Tensor, passage_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean cross-entropy of each query against all passages, its own passage being the right answer.

    Both inputs are (B, H), L2-normalised. Returns a scalar tensor: ``log(B)`` when all embeddings are equal.
    """
    scores = query_embeddings @ passage_embeddings.T / temperature  # (B, B)
    labels = torch.arange(len(scores), device=scores.device)  # (B,) the diagonal
    return F.cross_entropy(scores.float(), labels)
