"""Training on several processes (ranks, started by ``torchrun``): the process group, each rank's slice of a global
batch, embeddings gathered from every rank, and gradients summed over ranks.

    ranks = join("cpu", timeout_s=900)                 # under torchrun: gloo on the CPU, NCCL on CUDA
    local = batch.queries[rank_slice(len(batch.queries), ranks)]
    scores = gather(query_embeddings, ranks) @ gather(passage_embeddings, ranks).T   # the whole global batch
    loss.backward(); sum_gradients(parameters, ranks)   # every rank now holds the full batch's gradient

Contrastive training needs the *global* batch as negatives: with plain data parallelism a rank would only score its
own slice (4 ranks x 25 pairs would be four batches of 25, not one of 100). So every rank computes the same loss over
the gathered embeddings of all ranks; its own slice is the only part with a graph, so after the backward pass rank r
holds the gradient through its slice's embeddings, and the sum over ranks is the gradient of the global loss. One
process is the case ``world_size == 1``, where every function here does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from hbir.core.errors import ConfigError
from hbir.core.torchrun import under_torchrun  # noqa: F401 (re-exported: tasks.distributed.under_torchrun)

GRADIENT_BUCKET = 16 * 1024 * 1024  # elements summed in one all-reduce (64 MiB of float32)


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes (train_steps, checkpoints, the model, the log)."""
        return self.rank == 0


SINGLE = Ranks(rank=0, world_size=1)


def join(device_type: str, timeout_s: float) -> Ranks:
    """Join the process group torchrun's environment describes: NCCL for CUDA, else gloo; a collective that waits
    longer than ``timeout_s`` (a rank died) fails instead of hanging."""
    if dist.is_initialized():
        return current()
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return current()


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> Ranks:
    if not dist.is_initialized():
        return SINGLE
    return Ranks(dist.get_rank(), dist.get_world_size())


def rank_slice(batch_size: int, ranks: Ranks) -> slice:
    """The rows of a global batch of ``batch_size`` that ``ranks.rank`` encodes: a contiguous ``1 / world_size``."""
    if batch_size % ranks.world_size:
        raise ConfigError(
            f"train.batch_size {batch_size} is not divisible by the {ranks.world_size} ranks: every rank encodes an "
            f"equal slice of each batch; e.g. train.batch_size={batch_size - batch_size % ranks.world_size}"
        )
    size = batch_size // ranks.world_size
    return slice(ranks.rank * size, (ranks.rank + 1) * size)


def gather(local: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Every rank's ``local`` (equal shapes), concatenated in rank order; this rank's part keeps its graph."""
    if ranks.world_size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(ranks.world_size)]
    dist.all_gather(parts, local.detach().contiguous())
    parts[ranks.rank] = local
    return torch.cat(parts)


def sum_gradients(
    parameters: list[torch.nn.Parameter], ranks: Ranks, rows: tuple[torch.nn.Parameter, torch.Tensor] | None = None
) -> None:
    """Replace each parameter's gradient by its sum over ranks (a missing gradient counts as zeros).

    ``rows`` = (a table, row indices): only those rows of that parameter's gradient can be non-zero on any rank, so
    only they are summed. For the token embedding table (250k x 384 for e5-small, 80% of the weights) these are the
    tokens of the global batch, a few thousand rows: summing them instead of the table is exact and cuts what the
    ranks exchange per step by ~80%."""
    if ranks.world_size == 1:
        return
    has_grad = torch.tensor(
        [parameter.grad is not None for parameter in parameters], dtype=torch.int32, device=parameters[0].device
    )
    dist.all_reduce(has_grad)  # a weight no rank used (an unused pooler) keeps no gradient, as in one process
    parameters = [parameter for parameter, used in zip(parameters, has_grad.tolist(), strict=True) if used]
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    if rows is not None:
        table, indices = rows
        part = table.grad.index_select(0, indices)
        dist.all_reduce(part)
        table.grad.index_copy_(0, indices, part)
        parameters = [parameter for parameter in parameters if parameter is not table]
    grads = [parameter.grad for parameter in parameters]
    for bucket in _buckets(grads):
        flat = torch.cat([grad.reshape(-1) for grad in bucket])
        dist.all_reduce(flat)
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def barrier(ranks: Ranks) -> None:
    """Wait until every rank is here."""
    if ranks.world_size > 1:
        dist.barrier()


def broadcast_object(value: object, ranks: Ranks) -> object:
    """Rank 0's ``value`` on every rank (anything picklable)."""
    if ranks.world_size == 1:
        return value
    box = [value if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    buckets, bucket, size = [], [], 0
    for grad in grads:
        if bucket and size + grad.numel() > GRADIENT_BUCKET:
            buckets.append(bucket)
            bucket, size = [], 0
        bucket.append(grad)
        size += grad.numel()
    return buckets + [bucket] if bucket else buckets
