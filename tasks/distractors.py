"""A large pool to evaluate on: a dataset's candidates plus N distractor passages, written in the BEIR layout.

The distractors are windows of consecutive sentences of one paragraph of another dataset (by default 3, MLQA-R's
paragraphs in all its languages), drawn at random without repeats: as many as the source has windows (MLQA-R:
13,517). For pools larger than that (a scale benchmark), ``draw="random"`` makes each distractor of ``window``
sentences of one language drawn at random from the whole source, no two alike: any number, but not natural text.
They are unjudged: no query has a qrel to one, so a distractor that happens to answer a question counts as
non-relevant. With 0 distractors the folder reads back as the base dataset's own tables (the same queries,
candidates, qrels and translation groups). The corpus is written language by language (each language's base
candidates, then its distractors), the order evaluation ranks the pool in, so that it needs no reordered copy of the
pool's vectors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from hbir.core.errors import HbirError
from tasks.tables import DatasetTables


def distractor_windows(source: DatasetTables, window: int = 3) -> pd.DataFrame:
    """Every window of ``window`` consecutive sentences of one paragraph of ``source``: columns source_cid (the
    window's first sentence), lang, text (the sentences joined by a space)."""
    sentences = source.candidates.assign(
        paragraph=source.candidates["cid"].str.rsplit("-", n=1).str[0],
        index=source.candidates["cid"].str.rsplit("-", n=1).str[1].astype(int),
    ).sort_values(["paragraph", "index"])
    rows = []
    for _, paragraph in sentences.groupby("paragraph", sort=True):
        texts, cids, lang = paragraph["text"].tolist(), paragraph["cid"].tolist(), paragraph["lang"].iloc[0]
        for start in range(len(texts) - window + 1):
            rows.append({"source_cid": cids[start], "lang": lang, "text": " ".join(texts[start : start + window])})
    return pd.DataFrame(rows, columns=["source_cid", "lang", "text"])


def window_passages(source: DatasetTables, n: int, window: int = 3, seed: int = 0) -> pd.DataFrame:
    """``n`` of ``source``'s windows (``distractor_windows``) drawn at random without repeats, in window order."""
    windows = distractor_windows(source, window)
    if n > len(windows):
        raise HbirError(
            f"{n} distractors asked for, and {source.name} has {len(windows)} windows of {window} consecutive "
            f"sentences: give --n {len(windows)} or less, a shorter --window, or --draw random"
        )
    return windows.iloc[np.sort(np.random.default_rng(seed).choice(len(windows), size=n, replace=False))]


def random_passages(source: DatasetTables, n: int, window: int = 3, seed: int = 0) -> pd.DataFrame:
    """``n`` passages of ``window`` sentences of one language of ``source``, each drawn at random from all that
    language's sentences (languages in proportion to their sentences), no two passages alike: columns source_cid
    (``random-<i>``), lang, text (the sentences joined by a space)."""
    sentences = source.candidates.sort_values("cid", kind="stable")
    by_lang = {lang: group["text"].to_numpy() for lang, group in sentences.groupby("lang", sort=True)}
    langs, sizes = list(by_lang), np.array([len(texts) for texts in by_lang.values()])
    possible = sum(math.perm(int(size), window) for size in sizes)  # ordered draws of distinct sentences
    if n > possible // 2:  # past half of them, redrawing repeats would take long
        raise HbirError(
            f"{n} random distractors asked for, and {source.name}'s sentences make {possible} passages of {window}: "
            f"give --n {possible // 2} or less, or a longer --window"
        )
    rng = np.random.default_rng(seed)
    lang_of = rng.choice(len(langs), size=n, p=sizes / sizes.sum())
    picks = np.floor(rng.random((n, window)) * sizes[lang_of][:, None]).astype(np.int64)
    seen, texts = set(), []
    for i in range(n):
        key = (int(lang_of[i]), *picks[i].tolist())
        while key in seen or len(set(key[1:])) < window:  # redraw a repeated passage or sentence
            key = (key[0], *rng.integers(0, sizes[key[0]], size=window).tolist())
        seen.add(key)
        pool = by_lang[langs[key[0]]]
        texts.append(" ".join(pool[j] for j in key[1:]))
    return pd.DataFrame(
        {"source_cid": [f"random-{i}" for i in range(n)], "lang": [langs[k] for k in lang_of], "text": texts}
    )


def beir_with_distractors(
    base: DatasetTables,
    source: DatasetTables,
    n: int,
    window: int = 3,
    seed: int = 0,
    draw: Literal["windows", "random"] = "windows",
) -> dict[str, pd.DataFrame]:
    """The BEIR tables (corpus, queries, qrels) of ``base`` with ``n`` distractors drawn from ``source``: windows
    of a paragraph, or ``random`` sentences of one language (module docstring)."""
    drawn = (random_passages if draw == "random" else window_passages)(source, n, window, seed)
    candidates = base.candidates
    corpus = pd.concat(
        [
            pd.DataFrame(
                {
                    "_id": candidates["cid"],
                    "text": candidates["text"],
                    "lang": candidates["lang"],
                    "doc_id": candidates["doc_id"],
                    "context": candidates["context"],
                }
            ),  # fmt: skip
            pd.DataFrame(
                {
                    "_id": "distractor-" + drawn["source_cid"],
                    "text": drawn["text"],
                    "lang": drawn["lang"],
                    "doc_id": "distractor-" + drawn["source_cid"],
                    "context": drawn["text"],
                }
            ),  # fmt: skip
        ],
        ignore_index=True,
    ).sort_values("lang", kind="stable", ignore_index=True)  # language by language: pool order, no copy to evaluate
    queries = pd.DataFrame({"_id": base.queries["qid"], "text": base.queries["text"], "lang": base.queries["lang"]})
    qrels = pd.DataFrame({"query-id": base.qrels["qid"], "corpus-id": base.qrels["cid"], "score": 1})
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def write_beir(tables: dict[str, pd.DataFrame], folder: Path) -> None:
    """``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv`` in ``folder``."""
    for name in ("corpus", "queries"):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as out:
            for row in tables[name].to_dict("records"):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    (folder / "qrels").mkdir()
    tables["qrels"].to_csv(folder / "qrels" / "test.tsv", sep="\t", index=False)
