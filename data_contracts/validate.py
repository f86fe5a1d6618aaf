"""Run the data contracts on ingested datasets with an ephemeral Great Expectations context, and say what failed.

results = check_contracts(config.data, datasets)         # one ContractResult per expectation and table
failed = [r for r in results if not r.success]
raise ContractError(contract_failure_message(failed))    # names the dataset, table, expectation and examples
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pandas as pd

from data_contracts import suites
from hbir.core.config import DataConfig
from hbir.core.errors import shorten
from tasks.tables import CANDIDATE_COLUMNS, DatasetTables, positions_in

EXAMPLES_SHOWN = 3
FAILURES_SHOWN = 5
CANDIDATE_BATCH = 25_000  # candidates whose row rules are checked together (100k: +0.5 GiB peak at 1M, no faster)
CANDIDATE_CHARS = 20_000_000  # and their texts and contexts at most this long together (25k of the 1M pool's rows)
READ_ROWS = 2_500  # candidates read at a time to make those batches


@dataclass(frozen=True)
class ContractResult:
    """One expectation on one table: a row of the ``validations`` table."""

    dataset: str
    table_name: str
    expectation: str
    success: bool
    details: str


def check_contracts(data_cfg: DataConfig, datasets: list[DatasetTables]) -> list[ContractResult]:
    """``validate_datasets`` with the settings of the ``data`` config section."""
    return validate_datasets(
        datasets,
        data_cfg.train,
        data_cfg.languages,
        data_cfg.fully_parallel,
        data_cfg.max_query_chars,
        data_cfg.max_candidate_chars,
        data_cfg.max_context_chars,
    )


def contract_failure_message(failed: list[ContractResult]) -> str:
    """The failed contracts as an error message: dataset/table, expectation and offending examples, the first few."""
    lines = [f"{len(failed)} data contract(s) failed:"]
    for result in failed[:FAILURES_SHOWN]:
        lines.append(f"  {result.dataset}/{result.table_name}: {result.expectation}\n    {result.details}")
    if len(failed) > FAILURES_SHOWN:
        lines.append(f"  ... and {len(failed) - FAILURES_SHOWN} more (see the validations table)")
    return "\n".join(lines)


def validate_datasets(
    datasets: list[DatasetTables],
    train: list[str],
    languages: list[str],
    fully_parallel: list[str],
    max_query_chars: int,
    max_candidate_chars: int,
    max_context_chars: int,
) -> list[ContractResult]:
    """Check every table of every dataset, plus parallelism and train/eval leakage; return all outcomes. The
    candidates' row rules are checked a batch at a time (``bounded_batches``: their texts need not fit in memory
    together), their uniqueness on the whole id column."""
    training_texts = {
        _normalise(text)
        for d in datasets
        if d.name in train
        for column in (d.queries["text"], d.candidate_texts("text"))
        for text in column
        if isinstance(text, str)
    }
    runner = _Runner()
    results: list[ContractResult] = []
    for tables in datasets:
        (index_columns, row_rules), table_rules = suites.candidates_suite(
            languages, max_candidate_chars, max_context_chars
        )
        checks = [
            ("queries", [_queries_checked(tables)], suites.queries_suite(languages, max_query_chars)),
            ("candidates", _candidate_batches(tables), (index_columns, row_rules)),
            ("candidates", [_tag(tables.candidates[["cid", "lang"]], tables)], (index_columns, table_rules)),
            ("qrels", [_qrels_checked(tables)], suites.qrels_suite()),
        ]
        if tables.name in fully_parallel:
            checks.append(("queries", [_languages_per_qid(tables)], suites.parallel_suite(len(tables.languages))))
        if tables.name not in train and training_texts:
            checks.append(
                ("queries", [_leakage_checked(tables.queries, tables, training_texts)], suites.leakage_suite())
            )
            relevant = _relevant_candidates(tables)
            leaked = _leakage_checked(relevant, tables, training_texts)
            checks.append(("candidates", [leaked], suites.candidate_leakage_suite()))
        for table_name, frames, (index_columns, expectations) in checks:
            results += runner.run(tables, table_name, frames, index_columns, expectations)
    return results


def check_split(
    datasets: list[DatasetTables], train_pairs: pd.DataFrame, dev_qids: dict[str, list[str]]
) -> list[ContractResult]:
    """Check that the dev split's questions (``dev_qids`` per training dataset) are absent from ``train_pairs`` in
    every language: the two sides are disjoint by translation group."""
    runner = _Runner()
    results: list[ContractResult] = []
    for tables in datasets:
        trained = set(train_pairs.loc[train_pairs["dataset"] == tables.name, "qid"])
        held_out = tables.queries[tables.queries["qid"].isin(dev_qids.get(tables.name, []))]
        df = held_out[["qid", "lang"]].assign(on_both_sides=held_out["qid"].isin(trained))
        index_columns, expectations = suites.split_suite()
        results += runner.run(tables, "queries", [_tag(df, tables)], index_columns, expectations)
    return results


class _Runner:
    """One ephemeral Great Expectations context; each check is a dataframe asset with its own suite, run on each of
    its batches (one dataframe, or a table's rows in parts) and the outcomes summed."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._source = self._context.data_sources.add_pandas("hbir")
        self._count = 0

    def run(
        self,
        tables: DatasetTables,
        table_name: str,
        frames: Iterable[pd.DataFrame],
        index_columns: list[str],
        expectations: list,
    ) -> list[ContractResult]:
        gx, self._count = self._gx, self._count + 1
        name = f"{tables.name}-{table_name}-{self._count}"
        batch = self._source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = self._context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        outcomes = []
        for df in frames:
            outcome = definition.run(
                batch_parameters={"dataframe": df},
                result_format={
                    "result_format": "SUMMARY",
                    "unexpected_index_column_names": index_columns,
                    "partial_unexpected_count": EXAMPLES_SHOWN,
                },
            )
            outcomes.append(outcome.results)
        return [_result(tables, table_name, items) for items in zip(*outcomes, strict=True)]


def _result(tables: DatasetTables, table_name: str, items: tuple) -> ContractResult:
    """One expectation's outcome over the batches it ran on: its outcomes on each (``items``) summed."""
    config = items[0].expectation_config
    column = config.kwargs.get("column") or ",".join(config.kwargs.get("column_list", []))
    expectation = f"{config.type}({column}): {config.description}" if column else f"{config.type}: {config.description}"
    failed = [item for item in items if not item.success]
    raised = [item for item in failed if (item.exception_info or {}).get("raised_exception")]
    if not failed:
        details = ""
    elif raised:
        details = f"could not be evaluated: {raised[0].exception_info.get('exception_message')}"
    else:
        details = _failure_details(tables, table_name, [item.result for item in items], failed[0].result)
    return ContractResult(tables.name, table_name, expectation, not failed, details)


def _failure_details(tables: DatasetTables, table_name: str, results: list[dict], first_failed: dict) -> str:
    """The rows that fail, counted over every batch's ``results``, with examples from the first failing one."""
    examples = first_failed.get("partial_unexpected_index_list") or []
    langs = {str(example.get("lang")) for example in examples if example.get("lang") is not None}
    files = ", ".join(sorted({tables.source_of(table_name, lang) for lang in langs or {None}}))
    shown = "; ".join(", ".join(f"{key}={shorten(value)}" for key, value in example.items()) for example in examples)
    counts = [result.get("unexpected_count") for result in results]
    total = sum(result.get("element_count") or 0 for result in results)
    head = f"{sum(counts)} of {total} rows" if None not in counts else "the table"
    observed = f" (observed {first_failed['observed_value']})" if "observed_value" in first_failed else ""
    return f"{head} fail{observed}, e.g. {shown or 'n/a'} [file {files}]"


def _candidate_batches(tables: DatasetTables) -> Iterator[pd.DataFrame]:
    """The candidates with ``text_visible``, in batches of ``bounded_batches`` (an empty table: one empty batch,
    so that every rule reports)."""
    empty = True
    for df in bounded_batches(tables):
        empty = False
        yield _with_visibility(df, tables)
    if empty:
        yield _with_visibility(pd.DataFrame(columns=CANDIDATE_COLUMNS), tables)


def bounded_batches(tables: DatasetTables) -> Iterator[pd.DataFrame]:
    """The candidates in table order, in batches of at most ``CANDIDATE_BATCH`` rows whose texts and contexts hold
    at most ``CANDIDATE_CHARS`` characters (or one read of ``READ_ROWS``): Great Expectations' memory follows the
    texts, and 25k rows of 60k Hindi documents of 5,000 characters peaked at 3.0 GB (2,500: ~1.4 GB)."""
    pending: list[pd.DataFrame] = []
    rows = chars = 0
    for df in tables.candidate_batches(CANDIDATE_COLUMNS, min(READ_ROWS, CANDIDATE_BATCH)):
        size = _chars(df)
        if pending and (rows + len(df) > CANDIDATE_BATCH or chars + size > CANDIDATE_CHARS):
            yield pd.concat(pending)
            pending, rows, chars = [], 0, 0
        pending.append(df)
        rows, chars = rows + len(df), chars + size
    if pending:
        yield pd.concat(pending)


def _chars(df: pd.DataFrame) -> int:
    return int(sum(df[column].str.len().sum() for column in ("text", "context")))


def _relevant_candidates(tables: DatasetTables) -> pd.DataFrame:
    """The candidates some query is relevant to, with their texts."""
    relevant = tables.qrels["cid"].unique()
    parts = [df[df["cid"].isin(relevant)] for df in bounded_batches(tables)]
    return pd.concat(parts) if parts else tables.candidates.iloc[:0]


def _queries_checked(tables: DatasetTables) -> pd.DataFrame:
    rows = positions_in(tables.qrels["cid"], tables.candidates["cid"])  # a cid's first row; -1: unknown cid
    langs = tables.candidates["lang"].to_numpy()
    relevant = {(qid, langs[row]) for qid, row in zip(tables.qrels["qid"], rows, strict=True) if row >= 0}
    df = tables.queries.assign(
        has_relevant_in_own_lang=[
            (qid, lang) in relevant for qid, lang in zip(tables.queries["qid"], tables.queries["lang"], strict=True)
        ]
    )
    return _with_visibility(df, tables)


def _with_visibility(df: pd.DataFrame, tables: DatasetTables) -> pd.DataFrame:
    """``df`` with ``text_visible``: whether its text has a character that is not whitespace, zero-width or a
    control (a missing or empty text is the not-null or length rule's to report)."""
    visible = [not isinstance(text, str) or not text or _has_visible(text) for text in df["text"]]
    return _tag(df.assign(text_visible=visible), tables)


def _qrels_checked(tables: DatasetTables) -> pd.DataFrame:
    df = tables.qrels.assign(
        qid_known=tables.qrels["qid"].isin(tables.queries["qid"]),
        cid_known=positions_in(tables.qrels["cid"], tables.candidates["cid"]) >= 0,
    )
    return _tag(df, tables)


def _languages_per_qid(tables: DatasetTables) -> pd.DataFrame:
    """One row per (qid, lang) of the dataset's languages, saying whether that translation exists.

    A row per language, not a count per qid, so that a failure names the language file that lacks the question.
    """
    grid = pd.MultiIndex.from_product([sorted(set(tables.queries["qid"])), tables.languages], names=["qid", "lang"])
    present = pd.MultiIndex.from_frame(tables.queries[["qid", "lang"]])
    return _tag(pd.DataFrame({"present": grid.isin(present)}, index=grid).reset_index(), tables)


def _leakage_checked(df: pd.DataFrame, tables: DatasetTables, training_texts: set[str]) -> pd.DataFrame:
    df = df.assign(
        text_in_training_data=[
            _normalise(text) in training_texts if isinstance(text, str) else False for text in df["text"]
        ]
    )
    return _tag(df, tables)


def _tag(df: pd.DataFrame, tables: DatasetTables) -> pd.DataFrame:
    df.attrs["dataset"] = tables.name
    return df


INVISIBLE = ("Zs", "Zl", "Zp", "Cc", "Cf")  # spaces, line and paragraph separators, controls, zero-width / bidi


def _has_visible(text: str) -> bool:
    """Whether ``text`` has a character a reader can see (not of the ``INVISIBLE`` categories); stops at the first
    (a text's first character, almost always: a million passages checked in a second, not a minute)."""
    return any(unicodedata.category(char) not in INVISIBLE for char in text)


def _normalise(text: str) -> str:
    """How texts are compared for leakage: NFKC, case-folded, invisible characters dropped, runs of whitespace as
    one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(char for char in text if char.isspace() or unicodedata.category(char) not in ("Cc", "Cf"))
    return " ".join(kept.split())
