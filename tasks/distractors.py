"""A large pool to evaluate on: a dataset's candidates plus N distractor passages, written in the BEIR layout.

The distractors are windows of consecutive sentences of one paragraph of another dataset (by default 3, MLQA-R's
paragraphs in all its languages), drawn at random without repeats. They are unjudged: no query has a qrel to
one, so a distractor that happens to answer a question counts as non-relevant. With 0 distractors the folder reads
back as the base dataset's own tables (the same queries, candidates, qrels and translation groups).
"""

from __future__ import annotations

import json
from pathlib import Path

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


def beir_with_distractors(
    base: DatasetTables, source: DatasetTables, n: int, window: int = 3, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """The BEIR tables (corpus, queries, qrels) of ``base`` with ``n`` distractors drawn from ``source``."""
    windows = distractor_windows(source, window)
    if n > len(windows):
        raise HbirError(
            f"{n} distractors asked for, and {source.name} has {len(windows)} windows of {window} consecutive "
            f"sentences: give --n {len(windows)} or less, or a shorter --window"
        )
    drawn = windows.iloc[np.sort(np.random.default_rng(seed).choice(len(windows), size=n, replace=False))]
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
    )
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
