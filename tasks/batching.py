"""Training batches for in-batch-negative contrastive learning: monolingual, cross-lingual, or a mix of both.

    pairs = pd.concat([training_pairs(tables) for tables in train_sets], ignore_index=True)
    sampler = BatchSampler(pairs, batch_size=32, mono_share=0.5, seed=0)   # hybrid, alpha = 0.5
    for batch in sampler: ...                                               # batch.kind in {'mono', 'cross'}

The rules (README, "Training"; arXiv 2408.10536):
- a *group* is one question (``qid``) with, per language, the question and its relevant sentence;
- each batch comes from one training dataset, chosen with probability proportional to its number of groups;
- **mono**: one language L (uniform over the languages with enough groups, or weighted by their number of groups),
  then ``batch_size`` distinct groups that have L, pairs (q_L, p_L);
- **cross**: ``batch_size`` distinct groups with two languages or more; per pair a query language X and a passage
  language Y != X, uniform over that group's languages (``cross_same_language`` lets X == Y happen, as in LAReQA's
  original X-Y, and then groups in one language take part too);
- **hybrid**: mono with probability ``mono_share`` (alpha), else cross;
- the other passages of a batch are its negatives, so a batch never holds two pairs of one group (a translation of
  the positive would be a false negative) nor the same passage text twice: a drawn group whose passage text is
  already in the batch is skipped and another one drawn.

Batch ``step`` (1, 2, ...) is a pure function of ``(seed, step)``, so the sampler's whole state is the next step.
Everything a batch needs is indexed once in ``__init__``; a batch of 32 then costs a few numpy calls, not a pass
over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from hbir.core.errors import HbirError, shorten
from tasks.tables import DatasetTables

PAIR_COLUMNS = ["dataset", "qid", "lang", "query", "passage"]
BatchKind = Literal["mono", "cross"]
# Picks one row per drawn unit: (query pair indices, passage pair indices), both (n,), into a dataset's pairs.
Expand = Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]


def training_pairs(tables: DatasetTables) -> pd.DataFrame:
    """The (question, relevant sentence) pairs of a dataset, one per (qid, lang) where both exist.

    Returns columns ``dataset, qid, lang, query, passage``, sorted by ``qid, lang``. Where a question has several
    relevant sentences in one language (MLQA-R contexts cut per language), the one with the smallest ``cid`` is its
    passage, so the choice does not depend on row order.
    """
    relevant = tables.qrels[["qid", "cid"]].merge(tables.candidates[["cid", "lang", "text"]], on="cid")
    relevant = relevant.sort_values("cid", kind="stable").drop_duplicates(["qid", "lang"])
    queries = tables.queries[["dataset", "qid", "lang", "text"]].rename(columns={"text": "query"})
    pairs = queries.merge(relevant.rename(columns={"text": "passage"})[["qid", "lang", "passage"]], on=["qid", "lang"])
    return pairs[PAIR_COLUMNS].sort_values(["qid", "lang"], ignore_index=True)


@dataclass(frozen=True)
class Batch:
    """One training step's pairs: ``queries[i]`` is relevant to ``passages[i]``, every other passage a negative."""

    step: int
    kind: BatchKind
    dataset: str
    qids: list[str]
    queries: list[str]
    passages: list[str]
    query_langs: list[str]  # per pair
    passage_langs: list[str]  # per pair


@dataclass(frozen=True)
class _Dataset:
    """One dataset's pairs, sorted by (qid, lang), and the index arrays that make sampling a batch cheap.

    P pairs, G groups, L languages; a group's pairs are contiguous: ``starts[g] : starts[g] + sizes[g]``.
    """

    name: str
    qids: np.ndarray  # (P,) str
    langs: np.ndarray  # (P,) index into languages
    queries: np.ndarray  # (P,) str
    passages: np.ndarray  # (P,) str
    passage_ids: np.ndarray  # (P,) equal ids <=> equal passage texts
    languages: np.ndarray  # (L,) str, sorted
    starts: np.ndarray  # (G,) first pair of each group
    sizes: np.ndarray  # (G,) languages of each group
    pairs_in: list[np.ndarray]  # (L,) pairs in each language, one per group that has it
    distinct_in: np.ndarray  # (L,) distinct passage texts in each language: the largest mono batch it can fill
    mono_langs: np.ndarray  # languages a mono batch may use
    mono_cdf: np.ndarray  # cumulative weights of mono_langs
    cross_groups: np.ndarray  # groups a cross batch may use
    cross_distinct: int  # distinct passage texts in those groups: a bound on any cross batch

    @property
    def n_groups(self) -> int:
        return len(self.starts)


def _index_dataset(
    name: str, pairs: pd.DataFrame, batch_size: int, mono_languages: str, cross_same_language: bool
) -> _Dataset:
    """Sort one dataset's pairs by group and build its per-language and per-group index arrays."""
    pairs = pairs.sort_values(["qid", "lang"], kind="stable", ignore_index=True)
    qids = pairs["qid"].astype(str).to_numpy(dtype=object)
    languages, langs = np.unique(pairs["lang"].astype(str).to_numpy(dtype=object), return_inverse=True)
    passage_ids = pd.factorize(pairs["passage"])[0]
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
    sizes = np.diff(np.r_[starts, len(qids)])
    by_lang = np.argsort(langs, kind="stable")
    pairs_in = np.split(by_lang, np.cumsum(np.bincount(langs, minlength=len(languages)))[:-1])
    distinct_in = np.array([len(np.unique(passage_ids[members])) for members in pairs_in])
    mono_langs = np.flatnonzero(distinct_in >= batch_size)
    weights = np.array([len(pairs_in[j]) for j in mono_langs]) if mono_languages == "groups" else None
    cross = sizes >= (1 if cross_same_language else 2)  # (G,)
    return _Dataset(
        name=name,
        qids=qids,
        langs=langs,
        queries=pairs["query"].to_numpy(dtype=object),
        passages=pairs["passage"].to_numpy(dtype=object),
        passage_ids=passage_ids,
        languages=languages,
        starts=starts,
        sizes=sizes,
        pairs_in=pairs_in,
        distinct_in=distinct_in,
        mono_langs=mono_langs,
        mono_cdf=np.cumsum(weights if weights is not None else np.ones(len(mono_langs))),
        cross_groups=np.flatnonzero(cross),
        cross_distinct=len(np.unique(passage_ids[np.repeat(cross, sizes)])),
    )


class BatchSampler:
    """Deterministic stream of mono / cross batches over one or several datasets' ``training_pairs``.

    ``mono_share`` is alpha: 1 gives only mono batches (X-X-mono), 0 only cross ones (X-Y). ``mono_languages``:
    ``"uniform"`` picks a mono batch's language uniformly (the paper), ``"groups"`` in proportion to its groups.
    Raises ``HbirError`` when the data cannot fill the batches asked for.
    """

    def __init__(
        self,
        pairs: pd.DataFrame,
        batch_size: int,
        mono_share: float,
        seed: int = 0,
        mono_languages: Literal["uniform", "groups"] = "uniform",
        cross_same_language: bool = False,
    ) -> None:
        self.batch_size, self.mono_share, self.seed = batch_size, mono_share, seed
        self.mono_languages, self.cross_same_language = mono_languages, cross_same_language
        self.datasets = check_batch_rules(pairs, batch_size, mono_share, seed, mono_languages, cross_same_language)
        # datasets in proportion to their number of groups: cumulative counts, searched with one uniform draw
        self.dataset_cdf = np.cumsum([d.n_groups for d in self.datasets])
        self.next_step = 1

    def batch(self, step: int) -> Batch:
        """Batch number ``step`` (1, 2, ...): the same for the same seed and step, whatever was drawn before."""
        rng = np.random.default_rng([self.seed, step])
        d = self.datasets[_draw(rng, self.dataset_cdf)]
        if rng.random() < self.mono_share:
            return self._mono(rng, d, step)
        return self._cross(rng, d, step)

    def _mono(self, rng: np.random.Generator, d: _Dataset, step: int) -> Batch:
        lang = d.mono_langs[_draw(rng, d.mono_cdf)]
        # units are pairs in language L, one per group: query and passage come from the same pair
        queries, passages = _fill(rng, d.pairs_in[lang], self.batch_size, lambda _, units: (units, units), d)
        return _make_batch(step, "mono", d, queries, passages)

    def _cross(self, rng: np.random.Generator, d: _Dataset, step: int) -> Batch:
        def languages(rng: np.random.Generator, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Per group a query language x and a passage language y, uniform over its own (y != x unless allowed)."""
            sizes = d.sizes[groups]
            x = rng.integers(0, sizes)
            if self.cross_same_language:
                y = rng.integers(0, sizes)
            else:
                y = rng.integers(0, sizes - 1)
                y += y >= x  # uniform over the sizes - 1 languages other than x
            return d.starts[groups] + x, d.starts[groups] + y

        queries, passages = _fill(rng, d.cross_groups, self.batch_size, languages, d)
        return _make_batch(step, "cross", d, queries, passages)

    def __iter__(self) -> Iterator[Batch]:
        """Batches from ``next_step`` on; ``next_step`` moves past a batch as it is handed out (endless)."""
        while True:
            batch = self.batch(self.next_step)
            self.next_step += 1
            yield batch

    def state_dict(self) -> dict:
        """What a checkpoint keeps (plain JSON): the seed and the step of the next batch."""
        return {"seed": self.seed, "next_step": self.next_step}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict``; refuse one sampled with another seed (its batches would not continue)."""
        if state["seed"] != self.seed:
            raise HbirError(f"checkpoint was sampled with seed {state['seed']}, this run has train.seed={self.seed}")
        if int(state["next_step"]) < 1:
            raise HbirError(f"checkpoint sampler state has next_step={state['next_step']}, expected a step >= 1")
        self.next_step = int(state["next_step"])

    def coverage(self) -> pd.DataFrame:
        """Per dataset and language: groups, distinct passages, and whether mono batches use it (for logs)."""
        rows = [
            {
                "dataset": d.name,
                "lang": lang,
                "groups": len(d.pairs_in[j]),
                "distinct_passages": int(d.distinct_in[j]),
                "mono": bool(self.mono_share > 0 and j in d.mono_langs),
            }
            for d in self.datasets
            for j, lang in enumerate(d.languages)
        ]
        return pd.DataFrame(rows)


def check_batch_rules(
    pairs: pd.DataFrame,
    batch_size: int,
    mono_share: float,
    seed: int = 0,
    mono_languages: Literal["uniform", "groups"] = "uniform",
    cross_same_language: bool = False,
) -> list[_Dataset]:
    """Check, before training, that ``pairs`` can fill the batches asked for: the arguments are valid and every
    dataset has enough groups and distinct passages for the batch kinds ``mono_share`` draws. Returns the indexed
    datasets; raises ``HbirError`` saying what to change."""
    _check_arguments(pairs, batch_size, mono_share, seed, mono_languages)
    datasets = [
        _index_dataset(str(name), part, batch_size, mono_languages, cross_same_language)
        for name, part in pairs.groupby("dataset", sort=True)
    ]
    for d in datasets:
        _check_enough(d, batch_size, mono_share, cross_same_language)
    return datasets


def _check_enough(d: _Dataset, batch_size: int, mono_share: float, cross_same_language: bool) -> None:
    """Refuse, before training starts, a dataset that cannot fill a batch of the kinds ``mono_share`` asks for."""
    hint = f"lower train.batch_size (now {batch_size})"
    if mono_share > 0 and not len(d.mono_langs):
        counts = ", ".join(f"{lang}: {n}" for lang, n in zip(d.languages, d.distinct_in, strict=True))
        raise HbirError(
            f"training data {d.name}: mono batches need {batch_size} questions in one language, but its "
            f"best-covered language has {d.distinct_in.max()} (questions with distinct relevant sentences per "
            f"language: "
            f"{counts}): {hint}, or train on cross batches only (train.strategy=cross)"
        )
    if mono_share < 1 and min(len(d.cross_groups), d.cross_distinct) < batch_size:
        fewest = "one language" if cross_same_language else "two languages"
        raise HbirError(
            f"training data {d.name}: cross batches need {batch_size} questions that exist in {fewest} "
            f"or more, with distinct relevant sentences; it has {len(d.cross_groups)} such questions, "
            f"{d.cross_distinct} distinct sentences among them ({d.n_groups} questions in all): {hint}, or train "
            f"on mono batches only (train.strategy=mono)"
        )


def _check_arguments(pairs: pd.DataFrame, batch_size: int, mono_share: float, seed: int, mono_languages: str) -> None:
    """Refuse arguments no batch can come from, with what to change."""
    missing = [column for column in PAIR_COLUMNS if column not in pairs.columns]
    if missing:
        raise HbirError(f"training pairs lack columns {missing}; expected {PAIR_COLUMNS} (see training_pairs)")
    if not len(pairs):
        raise HbirError("no training pairs: data.train has no question with a relevant sentence in its language")
    if batch_size < 1 or not 0 <= mono_share <= 1 or mono_languages not in ("uniform", "groups"):
        raise HbirError(
            f"batch sampler: need batch_size >= 1, 0 <= mono_share <= 1, mono_languages 'uniform' or 'groups'; got "
            f"{batch_size}, {mono_share}, {mono_languages!r}"
        )
    if seed < 0:
        raise HbirError(f"train.seed must be >= 0 (numpy seeds the batch sampler with it), got {seed}")
    repeated = pairs[pairs.duplicated(["dataset", "qid", "lang"], keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        raise HbirError(
            f"training data {first['dataset']}: {len(repeated)} pairs repeat a (qid, lang), e.g. qid "
            f"{shorten(first['qid'])} in {first['lang']}; a group holds one pair per language"
        )


def _draw(rng: np.random.Generator, cdf: np.ndarray) -> int:
    """An index drawn with probability proportional to its weight, from the cumulative weights ``cdf``."""
    # min: u * total may round up to total when u is within 2**-53 of 1
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)


def _fill(rng: np.random.Generator, units: np.ndarray, size: int, expand: Expand, d: _Dataset) -> tuple:
    """``size`` (query pair, passage pair) index pairs from distinct ``units``, whose passage texts all differ.

    Units are drawn in a uniformly random order without replacement; one whose passage text is already in the batch
    is skipped. The first ``2 * size`` units are nearly always enough; only if texts repeat a lot are all the other
    units visited. Returns two (size,) arrays; raises ``HbirError`` if even all units cannot fill the batch.
    """
    first = rng.choice(len(units), size=min(len(units), 2 * size), replace=False)  # Floyd / partial shuffle
    queries, passages = expand(rng, units[first])
    keep = _first_of_each(d.passage_ids[passages])
    if len(keep) < size and len(first) < len(units):
        rest = rng.permutation(np.setdiff1d(np.arange(len(units)), first))
        more_queries, more_passages = expand(rng, units[rest])
        queries, passages = np.r_[queries, more_queries], np.r_[passages, more_passages]
        keep = _first_of_each(d.passage_ids[passages])
    if len(keep) < size:
        raise HbirError(
            f"training data {d.name}: cannot fill a batch of {size} pairs with distinct passages: {len(units)} "
            f"questions to draw from gave {len(keep)} distinct passage texts this time: lower train.batch_size"
        )
    keep = keep[:size]
    return queries[keep], passages[keep]


def _first_of_each(ids: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each id, in order: what skipping a repeated passage keeps."""
    return np.sort(np.unique(ids, return_index=True)[1])


def _make_batch(step: int, kind: BatchKind, d: _Dataset, queries: np.ndarray, passages: np.ndarray) -> Batch:
    return Batch(
        step=step,
        kind=kind,
        dataset=d.name,
        qids=d.qids[queries].tolist(),
        queries=d.queries[queries].tolist(),
        passages=d.passages[passages].tolist(),
        query_langs=d.languages[d.langs[queries]].tolist(),
        passage_langs=d.languages[d.langs[passages]].tolist(),
    )
