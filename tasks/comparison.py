"""Compare runs: per dataset and setting, each arm's mean and standard deviation over seeds, paired randomisation
tests between arms on the per-query values, and language bias side by side.

An arm is what a run was trained with: strategy, alpha (hybrid) and training data; its runs differ in seed. A
setting's value is ``run_summary``'s: the mean over language pairs of the mean over queries. The difference between
two arms is that value's difference (per query, the arm's runs averaged), and its p-value comes from a two-sided
paired randomisation test with the query as the unit: each query's contribution to the difference (its values over
the setting's language pairs, weighted as in the mean) has its sign flipped at random, ``permutations`` times.
The p-values are also given Holm-corrected over the family of comparisons of a dataset, and each difference with a
95% paired bootstrap interval (the queries resampled). The language bias is tested the same way, on the per-query
rank distances of the multi setting (metric ``rank_distance``).

    runs = with_arms(runs)                                       # the runs table's rows, each with its arm
    comparison = compare(runs, summary, per_query, bias)         # rows of run_summary, per_query, language_bias
    comparison.arms, comparison.differences, comparison.bias     # DataFrames

Plain functions over the rows of the compared runs; ``hbir/app/compare.py`` reads them from the results database.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hbir.core.names import SETTINGS


@dataclass(frozen=True)
class Comparison:
    runs: pd.DataFrame  # run_id, arm, strategy, alpha, seed, train
    arms: pd.DataFrame  # dataset, setting, metric, arm, mean, std, n_runs
    # dataset, setting, metric, arm, other, difference, p_value, p_holm, ci_low, ci_high, n_queries, permutations
    differences: pd.DataFrame
    bias: pd.DataFrame  # dataset, arm, query_lang, rank_distance, same_lang_first_rate, n_runs


def compare(
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    per_query: pd.DataFrame,
    bias_rows: pd.DataFrame,
    permutations: int = 10_000,
    seed: int = 0,
    bootstrap: int = 1000,
) -> Comparison:
    """Compare ``runs`` (``with_arms``) from their ``run_summary``, ``per_query`` (the metrics to test) and
    ``language_bias`` rows."""
    arms = (
        summary.merge(runs)
        .groupby(["dataset", "setting", "metric", "arm"], sort=False)["value"]
        .agg(mean="mean", std="std", n_runs="count")
        .reset_index()
        .sort_values(["dataset", "setting", "metric", "mean"], ascending=[True, True, True, False], key=_setting_order)
        .reset_index(drop=True)
    )
    differences = paired_differences(per_query, runs, permutations, seed, bootstrap)
    bias = (
        bias_rows.merge(runs)
        .groupby(["dataset", "arm", "query_lang"])
        .agg(
            rank_distance=("rank_distance", "mean"),
            same_lang_first_rate=("same_lang_first_rate", "mean"),
            n_runs=("run_id", "count"),
        )
        .reset_index()
    )
    return Comparison(runs, arms, differences, bias)


def with_arms(runs: pd.DataFrame) -> pd.DataFrame:
    """The ``runs`` rows (run_id, strategy, alpha, seed, config; merge_weight for ``hbir merge`` runs) with their
    training data, merge and arm: strategy and alpha, the merge with the base model, and the training data when the
    trained runs differ in it."""
    configs = runs["config"].map(json.loads)
    recorded = runs["merge_weight"] if "merge_weight" in runs else pd.Series([None] * len(runs), index=runs.index)
    runs = runs.assign(
        train=configs.map(lambda config: "+".join(config["data"]["train"])),
        merge=[merge_label(config, weight) for config, weight in zip(configs, recorded, strict=True)],
    )
    several_trains = runs.loc[runs["strategy"] != "zero-shot", "train"].nunique() > 1
    runs["arm"] = [
        arm_name(row.strategy, row.alpha, row.train if several_trains else None, row.merge) for row in runs.itertuples()
    ]
    columns = ["run_id", "arm", "strategy", "alpha", "seed", "train", "merge"]
    return runs[columns].sort_values("run_id").reset_index(drop=True)


def merge_label(config: dict, merge_weight: float | None) -> str | None:
    """How a run's model was merged with its base model: its ``train.merge`` setting (a weight, or ``auto``, whatever
    weight auto chose), else the weight of an ``hbir merge`` run; None when it was not."""
    setting = config.get("train", {}).get("merge")
    if setting is not None:
        return setting if isinstance(setting, str) else f"{setting:g}"
    return None if merge_weight is None or pd.isna(merge_weight) else f"{merge_weight:g}"


def arm_name(strategy: str, alpha: float | None, train: str | None = None, merge: str | None = None) -> str:
    """``mono``, ``cross``, ``zero-shot``, ``hybrid a=0.5`` (+ `` merged 0.5`` or `` merged auto`` for a model merged
    with its base, + `` on mlqa-r`` when runs trained on different data)."""
    name = f"hybrid a={alpha:g}" if strategy == "hybrid" else strategy
    merged = isinstance(merge, str) and strategy != "zero-shot"  # a column of labels and None reads None as NaN
    name = f"{name} merged {merge}" if merged else name
    return f"{name} on {train}" if train and strategy != "zero-shot" else name


def paired_differences(
    per_query: pd.DataFrame, runs: pd.DataFrame, permutations: int, seed: int, bootstrap: int = 1000
) -> pd.DataFrame:
    """Every pair of arms, per dataset, setting and metric of ``per_query``: difference of the setting values, its
    p-value, that p-value Holm-corrected over all the comparisons of the dataset (``p_holm``), and a 95% paired
    bootstrap interval of the difference (``ci_low``, ``ci_high``; ``bootstrap`` resamples of the queries)."""
    per_query = per_query.merge(runs[["run_id", "arm"]])
    keys = ["dataset", "setting", "metric", "query_lang", "corpus_lang", "qid"]
    by_arm = per_query.groupby([*keys, "arm"], observed=True)["value"].mean().unstack("arm")  # arm runs averaged
    rng, resample_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])  # p-values as without CIs
    rows = []
    for (dataset, setting, metric), block in by_arm.groupby(level=["dataset", "setting", "metric"], observed=True):
        block = block.droplevel(["dataset", "setting", "metric"])
        weights = _mean_weights(block.index)
        units = pd.factorize(
            pd.MultiIndex.from_arrays([block.index.get_level_values(k) for k in ("query_lang", "qid")])
        )[0]
        present = [arm for arm in block.columns if block[arm].notna().all()]
        for arm, other in itertools.combinations(present, 2):
            contributions = np.bincount(units, weights=weights * (block[arm] - block[other]).to_numpy())
            low, high = bootstrap_interval(contributions, bootstrap, resample_rng)
            rows.append(
                {
                    "dataset": dataset,
                    "setting": setting,
                    "metric": metric,
                    "arm": arm,
                    "other": other,
                    "difference": float(contributions.sum()),
                    "p_value": sign_flip_p_value(contributions, permutations, rng),
                    "ci_low": low,
                    "ci_high": high,
                    "n_queries": len(contributions),
                    "permutations": permutations,
                }
            )
    columns = [
        "dataset", "setting", "metric", "arm", "other", "difference", "p_value", "p_holm", "ci_low", "ci_high",
        "n_queries", "permutations",
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=[c for c in columns if c != "p_holm"])
    table.insert(7, "p_holm", table.groupby("dataset")["p_value"].transform(lambda p: holm(p.to_numpy())))
    return table[columns].sort_values(["dataset", "setting", "metric"], key=_setting_order)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down correction of a family of p-values: the i-th smallest becomes the largest of
    min(1, (m - j + 1) * p_(j)) over j <= i (m tests); it controls the family-wise error rate."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p_values[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def bootstrap_interval(
    contributions: np.ndarray, resamples: int, rng: np.random.Generator, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of ``sum(contributions)`` over ``resamples`` resamples of the units with replacement
    (a paired bootstrap: each unit keeps both arms' values); (nan, nan) without resamples."""
    n = len(contributions)
    if resamples <= 0 or n == 0:
        return float("nan"), float("nan")
    sums, chunk = [], max(1, 10_000_000 // n)
    for start in range(0, resamples, chunk):
        picks = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        sums.append(contributions[picks].sum(axis=1))
    low, high = np.quantile(np.concatenate(sums), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _mean_weights(index: pd.MultiIndex) -> np.ndarray:
    """Weights that turn a sum over per-query rows into the mean over language pairs of the mean over queries."""
    pair = pd.MultiIndex.from_arrays([index.get_level_values("query_lang"), index.get_level_values("corpus_lang")])
    codes, uniques = pd.factorize(pair)
    per_pair = np.bincount(codes)
    return 1.0 / (len(uniques) * per_pair[codes])


def sign_flip_p_value(contributions: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of ``sum(contributions)`` under random sign flips of the units (paired randomisation
    test): (1 + #{|flipped sum| >= |observed|}) / (1 + permutations)."""
    observed = abs(contributions.sum())
    tolerance = 1e-12 * max(1.0, float(np.abs(contributions).sum()))
    at_least, chunk = 0, max(1, 20_000_000 // max(1, len(contributions)))
    for start in range(0, permutations, chunk):
        signs = rng.integers(0, 2, size=(min(chunk, permutations - start), len(contributions)), dtype=np.int8)
        flipped = (2.0 * signs - 1.0) @ contributions
        at_least += int((np.abs(flipped) >= observed - tolerance).sum())
    return (1 + at_least) / (1 + permutations)


def _setting_order(column: pd.Series) -> pd.Series:
    return column.map({s: i for i, s in enumerate(SETTINGS)}) if column.name == "setting" else column
