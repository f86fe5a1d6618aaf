"""The expectations, table by table (README, "Data").

Each function returns ``(index_columns, expectations)``: the columns that identify an offending row in a
failure message, and the Great Expectations expectations the table must meet. Cross-table rules (qrels point
at existing rows, every query has a relevant candidate in its own language, parallelism, train/eval leakage, the
dev split's sides) and visible text are checked on boolean or count columns that ``data_contracts.validate``
derives before validation.
"""

from __future__ import annotations

import great_expectations as gx

E = gx.expectations


def queries_suite(languages: list[str], max_chars: int) -> tuple[list[str], list]:
    return ["qid", "lang"], [
        *_not_null(["qid", "lang", "text"]),
        _length("text", "question text", max_chars),
        _holds("text_visible", "question text has a visible character (not only spaces, zero-width or controls)"),
        _known_language(languages),
        E.ExpectCompoundColumnsToBeUnique(
            column_list=["dataset", "qid", "lang"], description="(dataset, qid, lang) is unique"
        ),
        _holds("has_relevant_in_own_lang", "the query has a relevant candidate in its own language"),
    ]


def candidates_suite(languages: list[str], max_chars: int, max_context_chars: int) -> tuple[tuple, list]:
    """Two parts: ``(index_columns, rules of each row)``, checked a batch of rows at a time, and the rules of the
    whole table (on its ``cid`` and ``lang`` columns)."""
    row_rules = [
        *_not_null(["cid", "lang", "doc_id", "text", "context"]),
        _length("text", "candidate text", max_chars),
        _holds("text_visible", "candidate text has a visible character (not only spaces, zero-width or controls)"),
        _length("context", "context", max_context_chars),
        _known_language(languages),
    ]
    whole_table = [E.ExpectColumnValuesToBeUnique(column="cid", description="cid is unique within the dataset")]
    return (["cid", "lang"], row_rules), whole_table


def qrels_suite() -> tuple[list[str], list]:
    return ["qid", "cid"], [
        E.ExpectTableRowCountToBeBetween(min_value=1, description="the dataset has relevance judgements"),
        E.ExpectCompoundColumnsToBeUnique(column_list=["qid", "cid"], description="(qid, cid) is unique"),
        _holds("qid_known", "qrels.qid points at an existing query"),
        _holds("cid_known", "qrels.cid points at an existing candidate"),
    ]


def parallel_suite(n_languages: int) -> tuple[list[str], list]:
    """For fully parallel datasets (XQuAD-R): each question exists in every language of the dataset."""
    return ["qid", "lang"], [_holds("present", f"each qid exists in all {n_languages} languages")]


def leakage_suite() -> tuple[list[str], list]:
    """For evaluation datasets: no question text also appears in the training data (as a question or a
    candidate; compared normalised: Unicode NFKC, case, whitespace and invisible characters ignored)."""
    return ["qid", "lang"], [
        _holds("text_in_training_data", "no evaluation question text appears in the training data", value=False)
    ]


def candidate_leakage_suite() -> tuple[list[str], list]:
    """For evaluation datasets: no relevant candidate's text also appears in the training data (idem)."""
    return ["cid", "lang"], [
        _holds("text_in_training_data", "no relevant evaluation candidate text appears in the training data", False)
    ]


def split_suite() -> tuple[list[str], list]:
    """For training datasets with a dev split: no question, in any language, is both trained on and held out."""
    return ["qid", "lang"], [
        _holds("on_both_sides", "no question or its translation is on both sides of the dev split", value=False)
    ]


def _not_null(columns: list[str]) -> list:
    return [
        E.ExpectColumnValuesToNotBeNull(column=column, description=f"{column} is present (not null)")
        for column in columns
    ]


def _length(column: str, what: str, max_chars: int):
    return E.ExpectColumnValueLengthsToBeBetween(
        column=column, min_value=1, max_value=max_chars, description=f"{what} has 1 to {max_chars} characters"
    )


def _known_language(languages: list[str]):
    return E.ExpectColumnValuesToBeInSet(
        column="lang", value_set=languages, description="language code is in data.languages"
    )


def _holds(column: str, description: str, value: bool = True):
    """A cross-table rule, checked on the boolean ``column`` derived for it: every row must be ``value``."""
    return E.ExpectColumnValuesToBeInSet(column=column, value_set=[value], description=description)
