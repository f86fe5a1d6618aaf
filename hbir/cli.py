"""The ``hbir`` command line: validate data, train, list runs, query the results database.

hbir validate --set 'data.train=[mlqa-r]' --set 'data.eval=[xquad-r]'
hbir train --profile smoke --set train.strategy=cross
hbir eval --set 'data.eval=[xquad-r]'
hbir merge --run my-run --weight 0.5
hbir run --profile smoke
hbir retrain
hbir study --profile smoke
hbir compare --study hybrid-vs-pure
hbir runs
hbir query "SELECT dataset, lang, n_queries FROM dataset_versions" --format csv
hbir migrate
hbir distractors --base xquad-r --source mlqa-r --n 10000 --out data/xquad-r-10k
hbir export-study --study hybrid-vs-pure --out docs/results/data/hybrid-vs-pure
hbir import-study docs/results/data/hybrid-vs-pure
hbir gc --dry-run
hbir export --run my-run --dataset xquad-r --setting multi --format trec
hbir search --model-run my-run "Where is the Eiffel tower?" --k 10
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import unicodedata

import click
import pandas as pd

from hbir.core.config import PROFILES, Config, load_config
from hbir.core.errors import HbirError
from hbir.core.torchrun import under_torchrun

FORMATS = click.Choice(["table", "csv", "json"])


class UserError(click.ClickException):
    """A ``HbirError`` shown as one message on stderr, with its exit code and no traceback."""

    def __init__(self, error: HbirError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code


class Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HbirError as error:
            raise UserError(error) from None


class MergeWeight(click.ParamType):
    """A merge weight: a number from 0 to 1, or ``auto``."""

    name = "WEIGHT|auto"

    def convert(self, value, param, ctx):
        if value == "auto":
            return value
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not 0.0 <= weight <= 1.0:
            self.fail(f"{value!r}: expected a number from 0 (the base model) to 1 (the fine-tuned one), or auto")
        return weight


class NoTracebackForUserErrors(logging.Filter):
    """Log a bad-input error (HbirError) as its message only: it is the user's to fix, not a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HbirError):
            record.exc_info, record.exc_text = None, None
        return True


def _check_run_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ``--run-id`` is checked before anything starts (it names a folder under output.dir)."""
    from hbir.core.run_ids import check_run_id

    if value is None:
        return None
    try:
        return check_run_id(value, "")
    except HbirError as error:
        raise click.BadParameter(str(error).strip(), ctx, param) from None


RUN_ID_HELP = "letters, digits, '.', '_', '-'"


def run_id_option(help: str):
    return click.option("--run-id", callback=_check_run_id, help=f"{help} ({RUN_ID_HELP}).")


def config_options(command):
    """--profile, --config and --set, turned into one validated ``Config`` passed as ``config``."""

    @click.option(
        "--profile",
        type=click.Choice(PROFILES),
        default="cpu",
        show_default=True,
        help="Built-in settings: smoke (tiny, tests), cpu (real model and data), paper (GPU).",
    )
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of settings.")
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override one setting; VALUE is YAML, e.g. --set train.alpha=0.5 --set 'data.eval=[xquad-r]'.",
    )
    @functools.wraps(command)
    def wrapper(profile: str, config_file: str | None, overrides: tuple[str, ...], **kwargs):
        return command(config=load_config(profile, config_file, list(overrides)), **kwargs)

    return wrapper


@click.group(cls=Group)
@click.version_option(package_name="hbir")
def cli() -> None:
    """Hybrid-batch multilingual dense retrieval: data validation, training, evaluation, results in DuckDB."""


@cli.command()
@config_options
@run_id_option("Name the run (default: validate-<time>-<random>)")
def validate(config: Config, run_id: str | None) -> None:
    """Ingest and validate every dataset in data.train and data.eval; exit 0 only if all pass."""
    from hbir.app.pipeline import validate_run

    if not config.data.train and not config.data.eval:
        click.echo("nothing to validate: data.train and data.eval are both empty", err=True)
    run_id, versions = validate_run(config, run_id, log=_stderr)
    if len(versions):
        click.echo(versions.assign(fingerprint=versions["fingerprint"].str[:12]).to_string(index=False))
    click.echo(f"all data contracts passed; run {run_id} recorded in {config.db.path}")


@cli.command()
@config_options
@run_id_option("Name the run; the id of a killed or failed train run continues it from its checkpoint")
def train(config: Config, run_id: str | None) -> None:
    """Ingest, validate, then fine-tune model.source on data.train with train.strategy batches; save the model."""
    from transformers.utils import logging as transformers_logging

    from hbir.app.pipeline import train_run
    from hbir.app.summaries import train_summary

    transformers_logging.disable_progress_bar()  # "Loading weights" bars; training has its own
    run_id, result = train_run(config, run_id, log=_stderr)
    click.echo(train_summary(config, run_id, result))


def flow_options(command):
    """--profile, --config and --set as the flows take them: the profile name, the file and a dict of settings."""

    @click.option("--profile", type=click.Choice(PROFILES), default="cpu", show_default=True, help="Built-in settings.")
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of settings.")
    @click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one setting (VALUE is YAML)."
    )
    @functools.wraps(command)
    def wrapper(profile: str, config_file: str | None, overrides: tuple[str, ...], **kwargs):
        from hbir.core.config import parse_assignment

        settings = dict(parse_assignment(item) for item in overrides)
        config = load_config(profile, config_file, settings)  # a mistake is reported before Prefect starts
        _prepare_prefect()
        return command(
            config=config, flow_args={"profile": profile, "config_path": config_file, "overrides": settings}, **kwargs
        )

    return wrapper


def _prepare_prefect() -> None:
    """Prefect in this process (ephemeral mode): no telemetry, time to start on 2 busy cores, no tracebacks for
    user errors in its logs."""
    from transformers.utils import logging as transformers_logging

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network: nothing to send telemetry to
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # 20 s is short on 2 busy cores
    transformers_logging.disable_progress_bar()
    for name in ("prefect.flow_runs", "prefect.task_runs"):  # Prefect logs a failed run with its traceback
        logging.getLogger(name).addFilter(NoTracebackForUserErrors())


@cli.command()
@flow_options
@run_id_option("Name the run (default: train-eval-<time>-<random>)")
def run(config: Config, flow_args: dict, run_id: str | None) -> None:
    """Run the train-eval flow here, without a Prefect server: validate, train, evaluate, report, store."""
    from flows.train_eval import train_eval
    from hbir.app.summaries import run_summary_text

    run_id = train_eval(**flow_args, run_id=run_id)
    click.echo(run_summary_text(config, run_id))


@cli.command()
@flow_options
def retrain(config: Config, flow_args: dict) -> None:
    """Run the scheduled-retrain flow here: retrain if the training data or settings changed since the last
    retrained model (else record a skipped run), and make the new model champion if it beats the current one."""
    from flows.scheduled_retrain import scheduled_retrain
    from hbir.store.runs import run_info

    run_id = scheduled_retrain(**flow_args)
    found = run_info(config.db.path, run_id, config.db.lock_timeout_s)
    click.echo(f"run {run_id} {found['status']}: {found['note']}")


@cli.command()
@click.option(
    "--config",
    "study_file",
    type=click.Path(dir_okay=False),
    help="Study file (YAML); default: the built-in hybrid-vs-pure study.",
)
@click.option("--profile", type=click.Choice(PROFILES), help="Replace the study's profile, for every run.")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Add a setting to every run (VALUE is YAML)."
)
@click.option("--dry-run", is_flag=True, help="List the study's runs and which completed before; run nothing.")
def study(study_file: str | None, profile: str | None, overrides: tuple[str, ...], dry_run: bool) -> None:
    """Run a study: every grid point of the study file as a train-eval run, tied by the study id; runs that
    completed before with the same settings are skipped."""
    from hbir.app import study as studies
    from hbir.core.config import parse_assignment

    settings = dict(parse_assignment(item) for item in overrides)
    plan = studies.plan(study_file, profile, settings)  # a mistake in the file is reported before Prefect starts
    if dry_run:
        for point in plan.points:
            click.echo(f"{'done' if point.done else 'to run':7} {point.run_id}")
        return
    _prepare_prefect()
    from flows.study import study as study_flow

    study_id = study_flow(study_path=study_file, profile=profile, overrides=settings)
    click.echo(
        f"study {study_id}: {len(plan.points)} runs completed; compare them with `hbir compare --study {study_id}`"
    )


@cli.command()
@config_options
@click.option("--study", "study_id", help="Compare the completed runs of this study.")
@click.option("--runs", "run_list", help="Or compare these runs (comma-separated ids).")
@click.option(
    "--metric", "metrics", multiple=True, default=("map",), show_default=True, help="Metrics to test (repeat)."
)
@click.option("--permutations", default=10_000, show_default=True, help="Random sign flips per paired test.")
@click.option("--bootstrap", default=1000, show_default=True, help="Resamples per bootstrap interval (0: none).")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def compare(
    config: Config,
    study_id: str | None,
    run_list: str | None,
    metrics: tuple[str, ...],
    permutations: int,
    bootstrap: int,
    fmt: str,
) -> None:
    """Per dataset and setting: each arm's mean and std over seeds, paired randomisation tests between arms on the
    per-query values (p-values, Holm-corrected over the dataset's comparisons, and bootstrap intervals), and language
    bias side by side (--metric rank_distance tests it per query)."""
    from hbir.app.compare import compare_runs

    run_ids = [r.strip() for r in run_list.split(",") if r.strip()] if run_list else None
    result = compare_runs(
        config.db.path,
        study_id,
        run_ids,
        metrics,
        permutations,
        lock_timeout_s=config.db.lock_timeout_s,
        bootstrap=bootstrap,
    )
    tables = {"runs": result.runs, "arms": result.arms, "differences": result.differences, "bias": result.bias}
    if fmt == "json":
        click.echo(
            json.dumps(
                {name: json.loads(df.to_json(orient="records", double_precision=15)) for name, df in tables.items()}
            )
        )
    elif fmt == "csv":
        click.echo(pd.concat([df.assign(table=name) for name, df in tables.items()]).to_csv(index=False), nl=False)
    else:
        for name, df in tables.items():
            click.echo(f"\n## {name}\n")
            click.echo(df.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(df) else "(no rows)")


@cli.command()
@config_options
@click.option(
    "--study",
    "study_ids",
    required=True,
    multiple=True,
    help="Write the results of this study; give it again for one document of several studies side by side.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="docs/results.md",
    show_default=True,
    help="The markdown document; its plots go in the folder of the same name (docs/results/).",
)
@click.option("--permutations", default=10_000, show_default=True, help="Random sign flips per paired test.")
@click.option("--latex", is_flag=True, help="Also write the tables as LaTeX (booktabs) next to the document (.tex).")
def report(config: Config, study_ids: tuple[str, ...], out: str, permutations: int, latex: bool) -> None:
    """Write a study's results document (markdown, PNG and SVG plots) from the results database alone: setup, mAP
    per arm and setting, differences with p-values, language bias, loss and dev curves and a verdict on each claim
    of the paper. Several studies (the same questions at different budgets): one document, side by side first."""
    from pathlib import Path

    from hbir.app.compare import compare_runs
    from hbir.app.study_report import load_study
    from tasks.report.budgets import write_studies_report
    from tasks.report.study import write_study_report

    db, timeout = config.db.path, config.db.lock_timeout_s
    metrics = ("map", "rank_distance")  # the claims test mAP differences and the language bias
    studies = []
    for study_id in dict.fromkeys(study_ids):
        comparison = compare_runs(
            db, study_id=study_id, metrics=metrics, permutations=permutations, lock_timeout_s=timeout
        )
        studies.append(load_study(db, comparison, study_id, timeout))
    if len(studies) == 1:
        files = write_study_report(Path(out), studies[0], latex=latex)
    else:
        files = write_studies_report(Path(out), studies, latex=latex)
    for file in files[1:]:
        click.echo(f"{file.kind:6} {file.path}")
    plots = sum(file.kind == "plot" for file in files)
    click.echo(f"report {files[0].path} ({plots} plots{', LaTeX tables' if latex else ''})")


@cli.command(name="export-study")
@config_options
@click.option("--study", "study_id", required=True, help="Export the completed runs of this study.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the Parquet files (replaced).")
@click.option(
    "--per-query",
    type=click.Choice(["report", "all"]),
    default="report",
    show_default=True,
    help="Per-query rows: those `hbir report --study` and `hbir compare` test on (map, rank_distance), or all.",
)
def export_study(config: Config, study_id: str, out: str, per_query: str) -> None:
    """Write a study's completed runs (their rows in every table) to a folder of Parquet files with a manifest,
    to continue or report the study from another results database (`hbir import-study`)."""
    from pathlib import Path

    from hbir.store.transfer import REPORT_METRICS
    from hbir.store.transfer import export_study as export

    metrics = REPORT_METRICS if per_query == "report" else None
    manifest = export(config.db.path, study_id, Path(out), metrics, config.db.lock_timeout_s)
    rows = ", ".join(f"{table} {entry['rows']}" for table, entry in manifest["tables"].items())
    click.echo(f"study {study_id}: {len(manifest['runs'])} completed runs exported to {out} ({rows} rows)")


@cli.command(name="import-study")
@config_options
@click.argument("folder", type=click.Path(file_okay=False))
def import_study(config: Config, folder: str) -> None:
    """Add the runs of a study export (`hbir export-study`) to the results database, in one transaction; runs
    already there are skipped. `hbir study` then continues the study, `hbir report --study` reports it."""
    from pathlib import Path

    from hbir.store.transfer import import_study as load

    imported, present = load(config.db.path, Path(folder), config.db.lock_timeout_s)
    click.echo(f"{config.db.path}: {len(imported)} runs imported from {folder}, {len(present)} there already")


@cli.command()
@config_options
@click.option("--base", required=True, help="The dataset whose queries and candidates are kept, e.g. xquad-r.")
@click.option("--source", required=True, help="The dataset whose paragraphs give the distractors, e.g. mlqa-r.")
@click.option("--n", "n", required=True, type=click.IntRange(min=0), help="How many distractor passages.")
@click.option("--window", default=3, show_default=True, type=click.IntRange(min=1), help="Sentences per distractor.")
@click.option("--seed", default=0, show_default=True, help="Which windows are drawn.")
@click.option(
    "--draw",
    type=click.Choice(["windows", "random"]),
    default="windows",
    show_default=True,
    help="windows: consecutive sentences of one paragraph (as many as SOURCE has); random: WINDOW sentences of one "
    "language drawn at random, any number, not natural text (for scale tests).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The new BEIR folder.")
def distractors(config: Config, base: str, source: str, n: int, window: int, seed: int, draw: str, out: str) -> None:
    """Write a BEIR dataset: BASE's queries, candidates and qrels plus N unjudged distractor passages (WINDOW
    consecutive sentences of one paragraph of SOURCE, all its languages, or with --draw random any WINDOW sentences
    of one language). Evaluate on it with data.dir set to the folder above OUT and data.eval to OUT's name."""
    from pathlib import Path

    from hbir.app.distractors import build_distractor_dataset

    rows = build_distractor_dataset(config, base, source, n, Path(out), window, seed, draw)
    click.echo(
        f"{out}: {rows['corpus']} passages ({n} distractors from {source}), {rows['queries']} queries, "
        f"{rows['qrels']} qrels"
    )


@cli.command(name="eval")
@config_options
@run_id_option("Name the run (default: eval-<time>-<random>)")
@click.option("--model-run", help="Evaluate the model trained by this run instead of model.source.")
def evaluate(config: Config, run_id: str | None, model_run: str | None) -> None:
    """Evaluate model.source (zero-shot) or a trained run's model on data.eval: mono, cross and multi settings."""
    from transformers.utils import logging as transformers_logging

    from hbir.app.pipeline import eval_run
    from hbir.app.summaries import eval_summary

    transformers_logging.disable_progress_bar()
    run_id, rows = eval_run(config, run_id, model_run, log=_stderr)
    click.echo(eval_summary(config, run_id, rows))


@cli.command()
@config_options
@click.option("--run", "parent_run", required=True, help="The training run whose model to merge with its base model.")
@click.option(
    "--weight",
    type=MergeWeight(),
    required=True,
    help="Weight of the fine-tuned model, from 0 (the base) to 1, or auto (the best dev score of the run's dev split).",
)
@run_id_option("Name the run (default: merge-<time>-<random>)")
def merge(config: Config, parent_run: str, weight: float | str, run_id: str | None) -> None:
    """Merge a trained run's model with the model it was trained from, (1 - weight) * base + weight * fine-tuned
    (WiSE-FT), and evaluate the merged model on data.eval, as `hbir eval` does."""
    from transformers.utils import logging as transformers_logging

    from hbir.app.pipeline import merge_run
    from hbir.app.summaries import eval_summary

    transformers_logging.disable_progress_bar()
    run_id, rows = merge_run(config, parent_run, weight, run_id, log=_stderr)
    click.echo(eval_summary(config, run_id, rows))


@cli.command()
@config_options
@click.option("--limit", default=20, show_default=True, help="How many of the latest runs to show.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--fail-stale", is_flag=True, help="Mark failed every running run whose process is gone (status stale).")
def runs(config: Config, limit: int, fmt: str, fail_stale: bool) -> None:
    """List the latest runs, newest first. A run shown as stale was left running by a process that is gone (killed,
    machine restarted): --fail-stale marks it failed; starting its id again does so too."""
    from hbir.store.runs import fail_stale_runs, list_runs

    if fail_stale:
        failed = fail_stale_runs(config.db.path, config.db.lock_timeout_s)
        click.echo(f"marked failed: {', '.join(failed)}" if failed else "no stale runs", err=True)
    _print(list_runs(config.db.path, limit, config.db.lock_timeout_s), fmt)


@cli.command()
@config_options
@click.argument("sql")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, help="Seconds before the query is stopped.")
@click.option("--memory-limit", default="4GB", show_default=True, help="Memory the query may use (DuckDB's).")
def query(config: Config, sql: str, fmt: str, timeout_s: float, memory_limit: str) -> None:
    """Answer SQL over the results database, read-only (statements that would write are refused), on a snapshot of
    the file: a query never holds up a run that is writing. Ctrl-C stops it."""
    from hbir.store.query import read_only_query

    _print(read_only_query(config.db.path, sql, config.db.lock_timeout_s, timeout_s, memory_limit), fmt)


@cli.command()
@config_options
def migrate(config: Config) -> None:
    """Bring a results database written by an older hbir to this hbir's schema (adds tables and columns, keeps every
    row). Commands that write do this themselves; commands that only read ask for it."""
    from hbir.store.database import upgrade
    from hbir.store.schema import SCHEMA_VERSION

    found = upgrade(config.db.path, config.db.lock_timeout_s)
    if found == SCHEMA_VERSION:
        click.echo(f"{config.db.path} is at schema version {SCHEMA_VERSION} already: nothing to do")
    else:
        click.echo(f"{config.db.path}: migrated from schema version {found} to {SCHEMA_VERSION}")


@cli.command()
@config_options
@click.option("--run", "run_id", required=True, help="The run whose model ranks (trained, merged, or zero-shot).")
@click.option("--dataset", help="An evaluation dataset (default: the run's first).")
@click.option("--setting", type=click.Choice(["mono", "cross", "multi"]), required=True)
@click.option("--depth", default=1000, show_default=True, type=click.IntRange(min=1), help="Candidates per query.")
@click.option("--format", "fmt", type=click.Choice(["trec", "ranx", "parquet"]), default="trec", show_default=True)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Folder for the files (default <output.dir>/<run>/export)."
)
def export(config: Config, run_id: str, dataset: str | None, setting: str, depth: int, fmt: str, out: str | None):
    """Write a run's rankings of one setting to --depth, with their qrels, for trec_eval, ir_measures or ranx:
    query ids <qid>-<lang> (cross: <qid>-<query lang>-<corpus lang>), candidate ids as stored."""
    from pathlib import Path

    from hbir.app.rankings import export_rankings

    files = export_rankings(config, run_id, dataset, setting, depth, fmt, Path(out) if out else None, log=_stderr)
    for file in files:
        click.echo(str(file))


@cli.command()
@config_options
@click.argument("question")
@click.option("--model-run", "run_id", required=True, help="The run whose model answers (and whose index, if saved).")
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1), help="How many hits.")
@click.option("--lang", help="Search only the candidates of this language (default: the pool of all).")
@click.option("--dataset", help="The candidates of this dataset (default: the run's first evaluation dataset).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def search(config: Config, question: str, run_id: str, k: int, lang: str | None, dataset: str | None, fmt: str):
    """Type a question, see the candidates a run's model ranks first, their languages and scores."""
    from hbir.app.rankings import search as search_run

    hits = search_run(config, run_id, question, k, lang, dataset, log=_stderr)
    mix = hits["lang"].value_counts()
    languages = ", ".join(f"{name} {count}" for name, count in mix.items())
    if fmt == "json":
        payload = {"question": question, "hits": hits.to_dict(orient="records"), "languages": mix.to_dict()}
        click.echo(json.dumps(payload, ensure_ascii=False, default=float))
        return
    shown = hits.assign(
        score=hits["score"].round(4), text=hits["text"].map(lambda t: t if len(t) <= 90 else t[:87] + "...")
    )
    _print(shown, "table")
    click.echo(f"languages of the {len(hits)} hits: {languages}")


@cli.command()
@config_options
@click.option("--model-run", "run_id", required=True, help="The run whose model MTEB evaluates.")
@click.option("--tasks", required=True, help="MTEB task names, comma-separated, e.g. SciFact,MIRACLRetrieval.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def mteb(config: Config, run_id: str, tasks: str, fmt: str) -> None:
    """Run MTEB tasks on a run's model (needs `pip install mteb` and the tasks' data: the Hub or its cache)."""
    from hbir.app.mteb_eval import evaluate_on_mteb

    _print(evaluate_on_mteb(config, run_id, [name.strip() for name in tasks.split(",") if name.strip()]), fmt)


@cli.command()
@config_options
@click.option("--keep", multiple=True, metavar="RUN", help="Keep this run's model and checkpoints (repeat).")
@click.option("--dry-run", is_flag=True, help="List what would be removed, and its size; remove nothing.")
def gc(config: Config, keep: tuple[str, ...], dry_run: bool) -> None:
    """Free disk: remove the model and checkpoint folders of completed runs, except the champion's, those of --keep
    runs and a model another run is using now. Failed and running runs keep theirs; the database keeps every row."""
    from hbir.app import disk

    garbage = disk.collectable(config, keep)
    for item in garbage:
        click.echo(f"{item.bytes / 2**20:10.1f} MiB  {item.run_id:40}  {item.path}")
    if dry_run:
        total = sum(item.bytes for item in garbage) / 2**30
        click.echo(f"would free {total:.2f} GiB in {len(garbage)} folders (--dry-run: nothing removed)")
    else:
        click.echo(f"freed {disk.remove(garbage) / 2**30:.2f} GiB in {len(garbage)} folders")


def _stderr(line: str) -> None:
    """Progress lines go to stderr, so that stdout holds only the result."""
    click.echo(line, err=True)


def _printable(value: object) -> object:
    """Text with control and format characters (newlines, bidi overrides) shown as escapes, so that a value cannot
    rearrange or forge the lines of a listing."""
    if not isinstance(value, str):
        return value
    return "".join(f"\\u{ord(char):04x}" if unicodedata.category(char) in ("Cc", "Cf") else char for char in value)


def _print(df: pd.DataFrame, fmt: str) -> None:
    text = [name for name, column in df.items() if column.dtype == object or pd.api.types.is_string_dtype(column)]
    df = df.assign(**{name: df[name].map(_printable) for name in text})
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(df.to_json(orient="records", date_format="iso", force_ascii=False, double_precision=15))
    else:
        click.echo(df.to_string(index=False) if len(df) else "(no rows)")


def main() -> None:
    from hbir.app import train_ranks

    if under_torchrun() and os.environ["RANK"] != "0":  # started by an outside torchrun: rank 0 runs the command
        sys.exit(train_ranks.follow_rank_zero())
    try:
        cli(prog_name="hbir")
    finally:
        if under_torchrun():
            train_ranks.release_followers()


if __name__ == "__main__":
    sys.exit(main())
