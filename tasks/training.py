"""Fine-tune the bi-encoder with InfoNCE on sampled batches (mono, cross or hybrid), resumable from checkpoints.

    result = fine_tune(model_dir, pairs, config.train, config.model, run_dir, step_log, log)

CUDA when there is a GPU (bf16 autocast, fused AdamW), else float32 on the CPU. AdamW with linear warm-up and decay,
gradient clipping. Every ``train.checkpoint_every`` steps a checkpoint goes to ``<run_dir>/checkpoints``; called again
with the same ``run_dir`` it continues from the newest one, and ``step_log`` forgets the steps after it, so each step
is logged exactly once. The trained model is saved to ``<run_dir>/model``.

With a dev evaluation (``dev_eval``, every ``train.eval_every`` steps and at the last one) each evaluated step is also
a checkpoint and its dev metrics go to ``step_log.write_dev``; ``train.select=best`` keeps the checkpoint with the
best ``dev_score`` from pruning and saves its weights as the model. Evaluating changes nothing in the training
itself (inference mode, no random numbers drawn), so the last weights are those of a run without it.

On several ranks (``ranks``, under torchrun: tasks/distributed.py) every rank draws the same global batch from
(seed, step), encodes its slice, and scores the gathered embeddings of all ranks, so the loss is that of the whole
batch; the gradients are summed over ranks. ``train.micro_batch_size`` encodes a rank's slice in micro-batches with
gradient caching (models/grad_cache.py). Either way losses and weights are those of one process with the whole
batch. Rank 0 alone writes: the step log, checkpoints, the dev evaluation and the model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from hbir.core.config import ModelConfig, TrainConfig
from hbir.core.errors import HbirError
from hbir.core.files import replace_dir
from models.encoder import BiEncoder
from models.grad_cache import backward_through_encoder, embed_without_graph
from models.losses import info_nce
from tasks.batching import Batch, BatchSampler
from tasks.checkpoints import (
    PREFIX,
    TrainerState,
    checkpoint_path,
    checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from tasks.dev import dev_score
from tasks.distributed import SINGLE, Ranks, barrier, gather, rank_slice, sum_gradients

FLUSH_EVERY_S = 30.0  # how stale the train_steps table (and the log) may get while a run is going


class StepLog(Protocol):
    """Where step rows go (the ``train_steps`` and ``dev_metrics`` tables): rows are appended, and forgotten after a
    resumed step."""

    def write(self, rows: pd.DataFrame) -> None: ...

    def write_dev(self, step: int, rows: pd.DataFrame) -> None: ...

    def dev_curve(self) -> pd.DataFrame: ...

    def truncate_after(self, step: int) -> None: ...


DevEvaluation = Callable[[BiEncoder], pd.DataFrame]  # encoder -> dev setting means (dataset, setting, metric, value)


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    steps: int  # configured = done
    resumed_from: int  # 0 for a fresh run
    seconds: float  # of this process's training
    selected_step: int | None = None  # the step whose weights the model has (select=best: the best dev score)


def pick_device(setting: str = "auto") -> torch.device:
    """CUDA when asked for or when ``auto`` finds a GPU, else the CPU."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def fine_tune(
    model_dir: Path,
    pairs: pd.DataFrame,
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    run_dir: Path,
    step_log: StepLog,
    log: Callable[[str], None] = lambda line: None,
    dev_eval: DevEvaluation | None = None,
    ranks: Ranks = SINGLE,
) -> TrainResult:
    """Train ``train_cfg.steps`` steps (or those left after the last checkpoint) and save the model (module doc).

    On ranks other than 0 nothing is written and ``step_log``, ``log`` and ``dev_eval`` are not used."""
    if not ranks.is_main:
        step_log, log, dev_eval = _NO_STEP_LOG, lambda line: None, None
    rank_slice(train_cfg.batch_size, ranks)  # a batch that does not divide into the ranks fails before anything
    device = pick_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    encoder = load_encoder(model_dir, model_cfg, train_cfg.freeze_word_embeddings).to(device)
    sampler = BatchSampler(
        pairs,
        train_cfg.batch_size,
        train_cfg.mono_share,
        train_cfg.seed,
        train_cfg.mono_languages,
        train_cfg.cross_same_language,
    )
    optimizer = build_optimizer(encoder, train_cfg.lr, train_cfg.weight_decay, fused=device.type == "cuda")
    warmup = math.ceil(train_cfg.warmup_ratio * train_cfg.steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, train_cfg.steps)
    start = resume(run_dir / "checkpoints", encoder, optimizer, scheduler, sampler)
    if ranks.is_main:
        step_log.truncate_after(start)
        RankBatchLog.truncate_all(run_dir / "ranks", start, ranks.world_size)
    barrier(ranks)  # the rank logs are cut before any rank appends
    rank_log = RankBatchLog(run_dir / "ranks" / f"rank-{ranks.rank}.jsonl") if ranks.world_size > 1 else None
    if ranks.world_size > 1:  # dropout: each rank its own masks (one process keeps the checkpoint's generator)
        torch.manual_seed(train_cfg.seed * 1_000_003 + start * 1_009 + ranks.rank)
    if start:
        log(f"continuing from the checkpoint of step {start}")

    began = time.perf_counter()
    best = best_dev_step(step_log.dev_curve()) if dev_eval else None  # a resumed run's best so far
    buffer, flushed_at = [], time.monotonic()
    bar = tqdm(total=train_cfg.steps, initial=start, desc="train", unit="step", disable=None if ranks.is_main else True)
    for batch in sampler:
        if batch.step > train_cfg.steps:
            break
        row = train_step(encoder, batch, optimizer, scheduler, train_cfg, ranks)
        if rank_log is not None:
            rank_log.write(batch, rank_slice(len(batch.queries), ranks))
        if not math.isfinite(row["loss"]):  # the same loss on every rank: all stop here
            step_log.write(pd.DataFrame(buffer))  # the steps before it were fine
            raise diverged(row, run_dir / "checkpoints")
        if not ranks.is_main:
            continue
        buffer.append(row)
        bar.update()
        bar.set_postfix(loss=f"{buffer[-1]['loss']:.3f}", kind=batch.kind)
        last = batch.step == train_cfg.steps
        evaluating = dev_eval is not None and train_cfg.eval_every > 0
        evaluate_now = evaluating and (batch.step % train_cfg.eval_every == 0 or last)
        checkpoint_due = batch.step % train_cfg.checkpoint_every == 0 or last or evaluate_now
        if checkpoint_due or time.monotonic() - flushed_at > FLUSH_EVERY_S:
            if bar.disable:  # a log, not a terminal: a line instead of the bar
                log(progress_line(buffer, train_cfg.steps))
            step_log.write(pd.DataFrame(buffer))  # before the checkpoint: a checkpoint's steps are all logged
            buffer, flushed_at = [], time.monotonic()
        if evaluate_now:
            best = evaluate_dev_now(dev_eval, encoder, batch.step, step_log, log)
        if checkpoint_due:  # the best dev step's checkpoint is kept for select=best
            state = TrainerState(batch.step, sampler.state_dict())
            keep, protect = train_cfg.keep_checkpoints, best if train_cfg.select == "best" else None
            save_checkpoint(run_dir / "checkpoints", state, encoder, optimizer, scheduler, keep, protect)
    bar.close()
    selected = train_cfg.steps
    if not ranks.is_main:
        return TrainResult(run_dir / "model", train_cfg.steps, start, time.perf_counter() - began)
    if train_cfg.select == "best" and best is not None and best != train_cfg.steps:
        load_weights(checkpoint_path(run_dir / "checkpoints", best), encoder)
        selected = best
        log(f"select=best: the model is the checkpoint of step {best}, the best dev score")
    model_out = save_model(encoder, run_dir / "model")
    return TrainResult(model_out, train_cfg.steps, start, time.perf_counter() - began, selected)


def diverged(row: dict, checkpoint_dir: Path) -> HbirError:
    """The error of a run whose loss stopped being a number: at which step and lr, and what is kept."""
    kept = checkpoints(checkpoint_dir)
    resume = f"the checkpoint of step {int(kept[-1].name.removeprefix(PREFIX))} is kept" if kept else "no checkpoint"
    return HbirError(
        f"the loss became {row['loss']} at step {row['step']} (lr {row['lr']:.3g}): training stopped, {resume}; "
        "lower train.lr (or raise train.temperature) and start a new run"
    )


def evaluate_dev_now(dev_eval: DevEvaluation, encoder: BiEncoder, step: int, step_log: StepLog, log) -> int | None:
    """Evaluate the dev split at ``step``, log its rows and a line; returns the best dev step so far."""
    rows = dev_eval(encoder)
    step_log.write_dev(step, rows)
    maps = rows[rows["metric"] == "map"].groupby("setting")["value"].mean()
    log(f"step {step}: dev mAP " + ", ".join(f"{setting} {maps[setting]:.3f}" for setting in maps.index))
    return best_dev_step(step_log.dev_curve())


def best_dev_step(curve: pd.DataFrame) -> int | None:
    """The step with the highest ``dev_score`` in ``curve`` (rows with a step column), the earliest on a tie; None
    when there is none."""
    if curve.empty:
        return None
    scores = {int(step): dev_score(rows) for step, rows in curve.groupby("step", sort=True)}
    return max(scores, key=lambda step: (scores[step], -step))


def progress_line(rows: list[dict], total: int) -> str:
    """``step 50/200: loss 0.912, 14.2 pairs/s`` (means over ``rows``, the steps since the last line)."""
    recent = pd.DataFrame(rows[-100:])
    return (
        f"step {rows[-1]['step']}/{total}: loss {recent['loss'].mean():.3f}, "
        f"{recent['examples_per_s'].mean():.1f} pairs/s"
    )


def load_encoder(model_dir: Path, model_cfg: ModelConfig, freeze_word_embeddings: bool) -> BiEncoder:
    encoder = BiEncoder.from_config(model_dir, model_cfg)
    if freeze_word_embeddings:
        encoder.freeze_word_embeddings()
    return encoder.train()


def build_optimizer(encoder: BiEncoder, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW over the trainable weights; biases and LayerNorm weights (1-d tensors) get no weight decay."""
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def resume(checkpoint_dir: Path, encoder, optimizer, scheduler, sampler: BatchSampler) -> int:
    """Load the newest checkpoint if there is one; returns the number of steps already done (0 if none)."""
    found = checkpoints(checkpoint_dir)
    if not found:
        return 0
    state = load_checkpoint(found[-1], encoder, optimizer, scheduler)
    sampler.load_state_dict(state.sampler)
    return state.step


def train_step(
    encoder: BiEncoder,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_cfg: TrainConfig,
    ranks: Ranks = SINGLE,
) -> dict:
    """One optimisation step on ``batch`` (the global batch; this rank encodes its slice); returns its
    ``train_steps`` row."""
    began = time.perf_counter()
    # the whole global batch, padded as one process pads it; this rank encodes its rows
    queries, passages = encoder.tokenize(batch.queries, "query"), encoder.tokenize(batch.passages, "passage")
    mine = rank_slice(len(batch.queries), ranks)
    loss = contrastive_backward(
        encoder,
        {name: value[mine] for name, value in queries.items()},
        {name: value[mine] for name, value in passages.items()},
        train_cfg.temperature,
        train_cfg.micro_batch_size,
        ranks,
    )
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    sum_gradients(trainable, ranks, batch_token_rows(encoder, queries, passages) if ranks.world_size > 1 else None)
    torch.nn.utils.clip_grad_norm_(trainable, train_cfg.max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    value = loss.item()  # waits for the GPU, so the time below is the step's
    return {
        "step": batch.step,
        "loss": value,
        "lr": lr,
        "batch_kind": batch.kind,
        "dataset": batch.dataset,
        "query_langs": list(batch.query_langs),
        "passage_langs": list(batch.passage_langs),
        "examples_per_s": len(batch.queries) / (time.perf_counter() - began),
    }


def batch_token_rows(
    encoder: BiEncoder, *features: dict[str, torch.Tensor]
) -> tuple[torch.nn.Parameter, torch.Tensor] | None:
    """The token embedding table and the ids of every token of the whole global batch (``features``: its tokenized
    queries and passages, the same on every rank, so all ranks agree without exchanging anything): the only rows of
    the table with a gradient on any rank. None when the table is frozen."""
    table = encoder.model.get_input_embeddings().weight
    if not table.requires_grad:
        return None
    ids = torch.cat([part["input_ids"].reshape(-1) for part in features])
    return table, torch.unique(ids).to(table.device)


def contrastive_backward(
    encoder: BiEncoder,
    queries: dict[str, torch.Tensor],
    passages: dict[str, torch.Tensor],
    temperature: float,
    micro_batch_size: int | None,
    ranks: Ranks = SINGLE,
) -> torch.Tensor:
    """Back-propagate into the weights the InfoNCE loss of the global batch (every rank's queries against every
    rank's passages), of which ``queries`` and ``passages`` are this rank's slice; in micro-batches of
    ``micro_batch_size`` with gradient caching when the slice is larger. Returns the loss, detached."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=encoder.device.type == "cuda"):
        if micro_batch_size is None or micro_batch_size >= len(queries["input_ids"]):
            loss = info_nce(gather(encoder(queries), ranks), gather(encoder(passages), ranks), temperature)
            loss.backward()
            return loss.detach()
        query_embeddings, query_states = embed_without_graph(encoder, queries, micro_batch_size)
        passage_embeddings, passage_states = embed_without_graph(encoder, passages, micro_batch_size)
        query_embeddings.requires_grad_()
        passage_embeddings.requires_grad_()
        loss = info_nce(gather(query_embeddings, ranks), gather(passage_embeddings, ranks), temperature)
        loss.backward()
        backward_through_encoder(encoder, queries, micro_batch_size, query_embeddings.grad, query_states)
        backward_through_encoder(encoder, passages, micro_batch_size, passage_embeddings.grad, passage_states)
    return loss.detach()


class RankBatchLog:
    """What one rank trained on, a JSON line per step (step, kind, dataset, its slice's query and passage
    languages), in ``<run_dir>/ranks/rank-<r>.jsonl``: the record that all ranks trained on one batch kind (and for
    mono one language) at every step. Lines after ``start`` (a resumed run's checkpoint) are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def truncate_all(folder: Path, start: int, world_size: int) -> None:
        """Before a (re)start: drop every rank's lines after ``start`` (and a half-written last line), and the files
        of ranks the run no longer has."""
        for path in sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []:
            if int(path.stem.removeprefix("rank-")) >= world_size:
                path.unlink()
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= start:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    pass  # cut off by a kill
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, batch: Batch, mine: slice) -> None:
        line = {"step": batch.step, "kind": batch.kind, "dataset": batch.dataset,
                "query_langs": batch.query_langs[mine], "passage_langs": batch.passage_langs[mine]}  # fmt: skip
        with self.path.open("a") as out:
            out.write(json.dumps(line) + "\n")


class _NoStepLog:
    """The step log of ranks other than 0: they write nothing."""

    def write(self, rows: pd.DataFrame) -> None:
        pass

    def write_dev(self, step: int, rows: pd.DataFrame) -> None:
        pass

    def dev_curve(self) -> pd.DataFrame:
        return pd.DataFrame()

    def truncate_after(self, step: int) -> None:
        pass


_NO_STEP_LOG = _NoStepLog()


def save_model(encoder: BiEncoder, out_dir: Path) -> Path:
    """Save the trained encoder to ``out_dir`` (replacing an older copy only once the new one is complete)."""
    return replace_dir(out_dir, encoder.save)
