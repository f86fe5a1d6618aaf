"""Training batches for in-batch-negative contrastive learning: monolingual, cross-lingual, or a mix of both.

    sampler = BatchSampler(pairs, batch_size=32, mono_share=0.5, seed=0)   # hybrid, alpha = 0.5
    for batch in sampler: ...                                               # batch.kind in {'mono', 'cross'}

The rules (DESIGN.md, "Batches"; arXiv 2408.10536):
- a *group* is one question (``qid``) with, per language, the question and its relevant sentence;
- each batch comes from one training dataset, chosen with probability proportional to its number of groups;
- **mono**: one language L (uniform over the languages with enough groups, or weighted by their number of groups),
  then ``batch_size`` distinct groups that have L, pairs (q_L, p_L);
- **cross**: ``batch_size`` distinct groups; per pair a query language X and a passage language Y != X from that
  group's languages (``cross_same_language`` lets X == Y happen, as in LAReQA's original X-Y);
- **hybrid**: mono with probability ``mono_share`` (alpha), else cross;
- the other passages of a batch are its negatives, so a batch never holds two pairs of one group (a translation of
  the positive would be a false negative) nor the same passage text twice.
Batch ``step`` is a pure function of ``(seed, step)``, so the sampler's whole state is the next step number.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from hbir.errors import HbirError
from tasks.tables import DatasetTables

PAIR_COLUMNS = ["dataset", "qid", "lang", "query", "passage"]


def training_pairs(tables: DatasetTables) -> pd.DataFrame:
    """The (question, relevant sentence) pairs of a dataset, one per (qid, lang) where both exist.

    Columns ``dataset, qid, lang, query, passage``. Where a question has several relevant sentences in one language,
    the one with the smallest ``cid`` is its passage.
    """
    relevant = tables.qrels[["qid", "cid"]].merge(tables.candidates[["cid", "lang", "text"]], on="cid")
    relevant = relevant.sort_values("cid").drop_duplicates(["qid", "lang"]).rename(columns={"text": "passage"})
    queries = tables.queries[["dataset", "qid", "lang", "text"]].rename(columns={"text": "query"})
    pairs = queries.merge(relevant[["qid", "lang", "passage"]], on=["qid", "lang"])
    return pairs[PAIR_COLUMNS].sort_values(["qid", "lang"], ignore_index=True)


@dataclass(frozen=True)
class Batch:
    step: int
    kind: Literal["mono", "cross"]
    dataset: str
    qids: list[str]
    queries: list[str]
    passages: list[str]
    query_langs: list[str]  # per pair
    passage_langs: list[str]  # per pair


class _Groups:
    """One dataset's pairs as (group x language) tables, with the index arrays sampling needs."""

    def __init__(self, name: str, pairs: pd.DataFrame, batch_size: int, cross_same_language: bool) -> None:
        self.name = name
        self.qids, group = np.unique(pairs["qid"].to_numpy(), return_inverse=True)
        self.languages, lang = np.unique(pairs["lang"].to_numpy(), return_inverse=True)
        shape = (len(self.qids), len(self.languages))
        self.queries, self.passages = np.full(shape, None, dtype=object), np.full(shape, None, dtype=object)
        self.queries[group, lang] = pairs["query"].to_numpy()
        self.passages[group, lang] = pairs["passage"].to_numpy()
        self.has = self.passages != None  # noqa: E711 (elementwise)
        self.langs_of = [np.flatnonzero(row) for row in self.has]  # (G,) language indices per group
        self.groups_with = [np.flatnonzero(self.has[:, j]) for j in range(shape[1])]  # (L,) group indices
        self.mono_langs = np.array([j for j in range(shape[1]) if len(self.groups_with[j]) >= batch_size], dtype=int)
        fewest = 1 if cross_same_language else 2
        self.cross_groups = np.flatnonzero(self.has.sum(axis=1) >= fewest)
        self.mono_p = np.ones(len(self.mono_langs)) / max(1, len(self.mono_langs))  # set by the sampler

    def __len__(self) -> int:
        return len(self.qids)


class BatchSampler:
    """Deterministic stream of mono / cross batches over one or several datasets' ``training_pairs``."""

    def __init__(
        self,
        pairs: pd.DataFrame,
        batch_size: int,
        mono_share: float,
        seed: int = 0,
        mono_languages: Literal["uniform", "groups"] = "uniform",
        cross_same_language: bool = False,
    ) -> None:
        if not len(pairs):
            raise HbirError("no training pairs: data.train has no question with a relevant sentence in its language")
        self.batch_size, self.mono_share, self.seed = batch_size, mono_share, seed
        self.cross_same_language = cross_same_language
        self.datasets = [
            _Groups(name, part, batch_size, cross_same_language) for name, part in pairs.groupby("dataset", sort=True)
        ]
        sizes = np.array([len(d) for d in self.datasets], dtype=float)
        self.dataset_p = sizes / sizes.sum()
        for d in self.datasets:
            d.mono_p = self._mono_weights(d, mono_languages)
            self._check_enough(d)
        self.next_step = 1

    def _mono_weights(self, d: _Groups, mono_languages: str) -> np.ndarray:
        counts = np.array([len(d.groups_with[j]) for j in d.mono_langs], dtype=float)
        weights = counts if mono_languages == "groups" else np.ones_like(counts)
        return weights / weights.sum() if len(weights) else weights

    def _check_enough(self, d: _Groups) -> None:
        hint = f"lower train.batch_size (now {self.batch_size})"
        if self.mono_share > 0 and not len(d.mono_langs):
            most = max(len(groups) for groups in d.groups_with)
            raise HbirError(
                f"training data {d.name}: mono batches need {self.batch_size} questions in one language, but its "
                f"best-covered language has {most}: {hint}"
            )
        if self.mono_share < 1 and len(d.cross_groups) < self.batch_size:
            raise HbirError(
                f"training data {d.name}: cross batches need {self.batch_size} questions that exist in two "
                f"languages, it has {len(d.cross_groups)}: {hint}, or train on mono batches"
            )

    def batch(self, step: int) -> Batch:
        """Batch number ``step`` (1, 2, ...): the same for the same seed and step, whatever came before."""
        rng = np.random.default_rng([self.seed, step])
        d = self.datasets[rng.choice(len(self.datasets), p=self.dataset_p)]
        if rng.random() < self.mono_share:
            return self._mono(rng, d, step)
        return self._cross(rng, d, step)

    def _mono(self, rng: np.random.Generator, d: _Groups, step: int) -> Batch:
        lang = rng.choice(d.mono_langs, p=d.mono_p)

        def languages(g: int, seen: set[str]) -> tuple[int, int] | None:
            return None if d.passages[g, lang] in seen else (lang, lang)

        return _make_batch(step, "mono", d, _fill(rng, d.groups_with[lang], self.batch_size, languages, d))

    def _cross(self, rng: np.random.Generator, d: _Groups, step: int) -> Batch:
        def languages(g: int, seen: set[str]) -> tuple[int, int] | None:
            """Y uniform among the group's languages whose passage is not in the batch yet, then X (!= Y)."""
            own = d.langs_of[g]
            fresh = [y for y in own if d.passages[g, y] not in seen]
            if not fresh or (len(own) < 2 and not self.cross_same_language):
                return None
            y = fresh[rng.integers(len(fresh))]
            queries = own if self.cross_same_language else own[own != y]
            return queries[rng.integers(len(queries))], y

        return _make_batch(step, "cross", d, _fill(rng, d.cross_groups, self.batch_size, languages, d))

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self.batch(self.next_step)
            self.next_step += 1
            yield batch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "next_step": self.next_step}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise HbirError(f"checkpoint was sampled with seed {state['seed']}, this run has train.seed={self.seed}")
        self.next_step = int(state["next_step"])


def _fill(rng, candidates: np.ndarray, size: int, languages, d: _Groups) -> list[tuple[int, int, int]]:
    """``size`` (group, query lang, passage lang) triples over distinct groups whose passage texts all differ.

    ``languages(group, seen)`` gives a group's (X, Y) or None if it cannot add a new passage. Draws twice the
    needed candidates first (enough unless passages repeat a lot), then goes through the rest.
    """
    first = rng.choice(len(candidates), size=min(len(candidates), 2 * size), replace=False)

    def rest() -> np.ndarray:  # only computed when the first draw falls short
        return rng.permutation(np.setdiff1d(np.arange(len(candidates)), first))

    chosen, seen = [], set()
    for order in (lambda: first, rest):
        for g in candidates[order()]:
            if (drawn := languages(g, seen)) is not None:
                seen.add(d.passages[g, drawn[1]])
                chosen.append((g, *drawn))
                if len(chosen) == size:
                    return chosen
    raise HbirError(
        f"training data {d.name}: cannot fill a batch of {size} pairs with distinct passages ({len(chosen)} "
        f"distinct among {len(candidates)} questions): lower train.batch_size"
    )


def _make_batch(step: int, kind: Literal["mono", "cross"], d: _Groups, chosen: list[tuple[int, int, int]]) -> Batch:
    return Batch(
        step=step,
        kind=kind,
        dataset=d.name,
        qids=[str(d.qids[g]) for g, _, _ in chosen],
        queries=[d.queries[g, x] for g, x, _ in chosen],
        passages=[d.passages[g, y] for g, _, y in chosen],
        query_langs=[str(d.languages[x]) for _, x, _ in chosen],
        passage_langs=[str(d.languages[y]) for _, _, y in chosen],
    )
