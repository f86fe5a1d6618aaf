"""InfoNCE over in-batch negatives."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.losses import info_nce


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # scores / T=1: [[1, 0], [0, 1]]; each row: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1) = 0.31326
    assert math.isclose(info_nce(q, p, temperature=1.0).item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    # T=0.5 doubles the scores: log(1 + e^-2) = 0.12693
    assert math.isclose(info_nce(q, p, temperature=0.5).item(), math.log(1 + math.exp(-2)), rel_tol=1e-6)


def test_info_nce_of_indistinguishable_embeddings_is_log_batch_size():
    same = F.normalize(torch.ones(8, 4), dim=-1)
    assert math.isclose(info_nce(same, same, temperature=0.05).item(), math.log(8), rel_tol=1e-6)


def test_info_nce_treats_the_other_passages_as_negatives():
    """Swapping two passages makes each query's positive a negative: the loss must rise."""
    q = F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    aligned = info_nce(q, q, temperature=0.05)
    swapped = info_nce(q, q[[1, 0, 2, 3]], temperature=0.05)
    assert swapped > aligned + 1.0
