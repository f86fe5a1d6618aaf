"""InfoNCE over in-batch negatives: query i's positive is passage i, every other passage of the batch a negative.

Two layers, as in sentence-transformers' MultipleNegativesRankingLoss: ``InfoNCELoss`` encodes, ``info_nce`` is a pure
function of the embeddings. Convention: scores are cosine similarities divided by ``temperature``
(``scale = 1 / temperature``; temperature 0.05 is sentence-transformers' scale 20).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.encoder import BiEncoder


def info_nce(query_embeddings: torch.Tensor, passage_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean cross-entropy of each query against all passages, its own passage being the right answer.

    Both inputs are (B, H), L2-normalised. Returns a scalar tensor: ``log(B)`` when all embeddings are equal.
    """
    scores = query_embeddings @ passage_embeddings.T / temperature  # (B, B)
    labels = torch.arange(len(scores), device=scores.device)  # (B,) the diagonal
    return F.cross_entropy(scores.float(), labels)


class InfoNCELoss(nn.Module):
    def __init__(self, encoder: BiEncoder, temperature: float = 0.05) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature

    def forward(self, queries: dict[str, torch.Tensor], passages: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one batch, from its tokenized queries and passages (pair i = queries[i], passages[i])."""
        return info_nce(self.encoder(queries), self.encoder(passages), self.temperature)
