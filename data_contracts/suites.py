"""The expectations, table by table (DESIGN.md, "Data contracts").

Each function returns ``(index_columns, expectations)``: the columns that identify an offending row in a
failure message, and the Great Expectations expectations the table must meet. Cross-table rules (qrels point
at existing rows, every query has a relevant candidate in its own language, parallelism, train/eval leakage)
are checked on boolean or count columns that ``data_contracts.validate`` derives before validation.
"""

from __future__ import annotations

import great_expectations as gx

E = gx.expectations


def queries_suite(languages: list[str], max_chars: int) -> tuple[list[str], list]:
    return ["qid", "lang"], [
        *_not_null(["qid", "lang", "text"]),
        E.ExpectColumnValueLengthsToBeBetween(
            column="text",
            min_value=1,
            max_value=max_chars,
            description=f"question text has 1 to {max_chars} characters",
        ),
        E.ExpectColumnValuesToBeInSet(
            column="lang", value_set=languages, description="language code is in data.languages"
        ),
        E.ExpectCompoundColumnsToBeUnique(
            column_list=["dataset", "qid", "lang"], description="(dataset, qid, lang) is unique"
        ),
        E.ExpectColumnValuesToBeInSet(
            column="has_relevant_in_own_lang",
            value_set=[True],
            description="the query has a relevant candidate in its own language",
        ),
    ]


def candidates_suite(languages: list[str], max_chars: int, max_context_chars: int) -> tuple[list[str], list]:
    return ["cid", "lang"], [
        *_not_null(["cid", "lang", "doc_id", "text", "context"]),
        E.ExpectColumnValueLengthsToBeBetween(
            column="text",
            min_value=1,
            max_value=max_chars,
            description=f"candidate text has 1 to {max_chars} characters",
        ),
        E.ExpectColumnValueLengthsToBeBetween(
            column="context",
            min_value=1,
            max_value=max_context_chars,
            description=f"context has 1 to {max_context_chars} characters",
        ),
        E.ExpectColumnValuesToBeInSet(
            column="lang", value_set=languages, description="language code is in data.languages"
        ),
        E.ExpectColumnValuesToBeUnique(column="cid", description="cid is unique within the dataset"),
    ]


def qrels_suite() -> tuple[list[str], list]:
    return ["qid", "cid"], [
        E.ExpectTableRowCountToBeBetween(min_value=1, description="the dataset has relevance judgements"),
        E.ExpectCompoundColumnsToBeUnique(column_list=["qid", "cid"], description="(qid, cid) is unique"),
        E.ExpectColumnValuesToBeInSet(
            column="qid_known", value_set=[True], description="qrels.qid points at an existing query"
        ),
        E.ExpectColumnValuesToBeInSet(
            column="cid_known", value_set=[True], description="qrels.cid points at an existing candidate"
        ),
    ]


def parallel_suite(n_languages: int) -> tuple[list[str], list]:
    """For fully parallel datasets (XQuAD-R): each question exists in every language of the dataset."""
    return ["qid", "lang"], [
        E.ExpectColumnValuesToBeInSet(
            column="present", value_set=[True], description=f"each qid exists in all {n_languages} languages"
        ),
    ]


def leakage_suite() -> tuple[list[str], list]:
    """For evaluation datasets: no question text also appears in the training data."""
    return ["qid", "lang"], [
        E.ExpectColumnValuesToBeInSet(
            column="text_in_training_data",
            value_set=[False],
            description="no evaluation question text appears in the training data",
        ),
    ]


def _not_null(columns: list[str]) -> list:
    return [
        E.ExpectColumnValuesToNotBeNull(column=column, description=f"{column} is present (not null)")
        for column in columns
    ]
