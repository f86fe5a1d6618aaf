"""The dev split: training questions held out with all their translations, and their evaluation during training.

    train_pairs, dev_qids = split_pairs(pairs, fraction=0.1, seed=0)     # disjoint by translation group (qid)
    dev = dev_tables(tables, dev_qids[tables.name])                      # the LAReQA protocol on the dev groups
    scores = evaluate_dev(encoder, {"mlqa-r": dev}, eval_cfg)            # setting means per metric
    weight, _ = choose_merge_weight(encoder, base, {"mlqa-r": dev}, eval_cfg, grid=(0.5, 1.0))   # WiSE-FT on dev

A question and its translations share a ``qid``, so holding out whole qids keeps every translation of a dev question
out of training. The dev tables keep the dev questions, their qrels and every candidate sentence of the paragraphs
their answers are in (in all languages), so dev mAP is measured as LAReQA measures the evaluation sets. The split is
a function of the pairs' qids and the seed alone. Evaluation datasets are never used here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from hbir.core.config import EvalConfig
from models.encoder import BiEncoder
from models.merge import merge_state
from tasks.embedding import embed_dataset
from tasks.evaluation import evaluate
from tasks.tables import DatasetTables

DEV_BATCH_SIZE = 64  # texts per forward pass when embedding the dev split


def split_pairs(pairs: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The training pairs without the dev groups, and the dev qids per dataset: ``round(fraction * groups)`` of each
    dataset's qids (at least one when ``fraction`` > 0), drawn with ``seed``."""
    dev: dict[str, list[str]] = {}
    for dataset, part in pairs.groupby("dataset", sort=True):
        qids = np.array(sorted(part["qid"].unique()))
        n_dev = max(1, round(fraction * len(qids))) if fraction > 0 else 0
        order = np.random.default_rng([seed, len(qids)]).permutation(len(qids))
        dev[str(dataset)] = sorted(qids[order[:n_dev]].tolist())
    held_out = pd.MultiIndex.from_tuples([(d, q) for d, qids in dev.items() for q in qids], names=["dataset", "qid"])
    keys = pd.MultiIndex.from_frame(pairs[["dataset", "qid"]])
    return pairs[~keys.isin(held_out)].reset_index(drop=True), dev


def dev_tables(tables: DatasetTables, qids: list[str]) -> DatasetTables:
    """The dev questions of ``tables`` with their qrels and every candidate of the paragraphs (``doc_id``) their
    relevant candidates are in."""
    queries = tables.queries[tables.queries["qid"].isin(qids)].reset_index(drop=True)
    qrels = tables.qrels[tables.qrels["qid"].isin(qids)].reset_index(drop=True)
    docs = tables.candidates.loc[tables.candidates["cid"].isin(qrels["cid"]), "doc_id"].unique()
    candidates = tables.candidates[tables.candidates["doc_id"].isin(docs)].reset_index(drop=True)
    return DatasetTables(tables.name, queries, candidates, qrels, tables.sources)


def evaluate_dev(encoder: BiEncoder, dev: dict[str, DatasetTables], eval_cfg: EvalConfig) -> pd.DataFrame:
    """Dev metrics of ``encoder`` now: per dataset, setting and metric the mean over language pairs (as the
    ``run_summary`` view). Columns dataset, setting, metric, value. Sentence candidates, exact search."""
    exact = eval_cfg.model_copy(update={"index": "flat"})
    frames = []
    for tables in dev.values():
        vectors = embed_dataset(encoder, "", tables, "sentence", DEV_BATCH_SIZE, cache_dir=None, log=_quiet)
        metrics = evaluate(tables, vectors, exact).metrics
        means = metrics.groupby(["dataset", "setting", "metric"], observed=True)["value"].mean().reset_index()
        frames.append(means)
    return pd.concat(frames, ignore_index=True)


def dev_score(rows: pd.DataFrame) -> float:
    """What checkpoint selection maximises: the mean of the dev mAP over the mono, cross and multi settings (and
    over dev datasets), so that no one setting is bought at the others' expense."""
    return float(rows.loc[rows["metric"] == "map"].groupby("setting")["value"].mean().mean())


def choose_merge_weight(
    encoder: BiEncoder,
    base: dict[str, torch.Tensor],
    dev: dict[str, DatasetTables],
    eval_cfg: EvalConfig,
    grid: tuple[float, ...],
) -> tuple[float, dict[float, float]]:
    """The merge weight of ``grid`` whose merge of ``base`` and the encoder's (fine-tuned) weights has the best
    ``dev_score`` (the largest weight on a tie: the most fine-tuning for the same dev score), and every weight's
    score. The encoder is left with the chosen merge."""
    tuned = {name: tensor.clone() for name, tensor in encoder.model.state_dict().items()}
    scores = {}
    for weight in grid:
        encoder.model.load_state_dict(merge_state(base, tuned, weight))
        scores[weight] = dev_score(evaluate_dev(encoder, dev, eval_cfg))
    chosen = max(grid, key=lambda weight: (scores[weight], weight))
    encoder.model.load_state_dict(merge_state(base, tuned, chosen))
    return chosen, scores


def _quiet(line: str) -> None:
    pass
