"""The ``hbir`` command line: validate data, train, list runs, query the results database.

hbir validate --set 'data.train=[mlqa-r]' --set 'data.eval=[xquad-r]'
hbir train --profile smoke --set train.strategy=cross
hbir eval --set 'data.eval=[xquad-r]'
hbir run --profile smoke
hbir runs
hbir query "SELECT dataset, lang, n_queries FROM dataset_versions" --format csv
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import click
import pandas as pd

from hbir.config import PROFILES, Config, load_config
from hbir.errors import HbirError

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


class NoTracebackForUserErrors(logging.Filter):
    """Log a bad-input error (HbirError) as its message only: it is the user's to fix, not a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HbirError):
            record.exc_info, record.exc_text = None, None
        return True


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
@click.option("--run-id", help="Name the run (default: validate-<time>-<random>).")
def validate(config: Config, run_id: str | None) -> None:
    """Ingest and validate every dataset in data.train and data.eval; exit 0 only if all pass."""
    from hbir import jobs

    if not config.data.train and not config.data.eval:
        click.echo("nothing to validate: data.train and data.eval are both empty", err=True)
    run_id, versions = jobs.validate(config, run_id, progress=lambda line: click.echo(line, err=True))
    if len(versions):
        click.echo(versions.assign(fingerprint=versions["fingerprint"].str[:12]).to_string(index=False))
    click.echo(f"all data contracts passed; run {run_id} recorded in {config.db.path}")


@cli.command()
@config_options
@click.option("--run-id", help="Name the run; the id of a killed or failed train run continues it from its checkpoint.")
def train(config: Config, run_id: str | None) -> None:
    """Ingest, validate, then fine-tune model.source on data.train with train.strategy batches; save the model."""
    from transformers.utils import logging as transformers_logging

    from hbir import jobs

    transformers_logging.disable_progress_bar()  # "Loading weights" bars; training has its own
    run_id, result = jobs.train(config, run_id, progress=lambda line: click.echo(line, err=True))
    click.echo(jobs.train_summary(config, run_id, result))


@cli.command()
@click.option("--profile", type=click.Choice(PROFILES), default="cpu", show_default=True, help="Built-in settings.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of settings.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one setting (VALUE is YAML).")
@click.option("--run-id", help="Name the run (default: train-eval-<time>-<random>).")
def run(profile: str, config_file: str | None, overrides: tuple[str, ...], run_id: str | None) -> None:
    """Run the train-eval flow here, without a Prefect server: validate, train, evaluate, report, store."""
    from hbir.config import parse_assignment

    settings = dict(parse_assignment(item) for item in overrides)
    config = load_config(profile, config_file, settings)  # a mistake is reported before Prefect starts
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network: nothing to send telemetry to
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # 20 s is short on 2 busy cores
    from transformers.utils import logging as transformers_logging

    from flows.train_eval import train_eval
    from hbir import jobs

    transformers_logging.disable_progress_bar()
    for name in ("prefect.flow_runs", "prefect.task_runs"):  # Prefect logs a failed run with its traceback
        logging.getLogger(name).addFilter(NoTracebackForUserErrors())
    run_id = train_eval(profile=profile, config_path=config_file, overrides=settings, run_id=run_id)
    click.echo(jobs.run_summary_text(config, run_id))


@cli.command(name="eval")
@config_options
@click.option("--run-id", help="Name the run (default: eval-<time>-<random>).")
@click.option("--model-run", help="Evaluate the model trained by this run instead of model.source.")
def evaluate(config: Config, run_id: str | None, model_run: str | None) -> None:
    """Evaluate model.source (zero-shot) or a trained run's model on data.eval: mono, cross and multi settings."""
    from transformers.utils import logging as transformers_logging

    from hbir import jobs

    transformers_logging.disable_progress_bar()
    run_id, rows = jobs.evaluate(config, run_id, model_run, progress=lambda line: click.echo(line, err=True))
    click.echo(jobs.eval_summary(config, run_id, rows))


@cli.command()
@config_options
@click.option("--limit", default=20, show_default=True, help="How many of the latest runs to show.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def runs(config: Config, limit: int, fmt: str) -> None:
    """List the latest runs, newest first."""
    from tasks.store import read_only_query

    sql = (
        "SELECT run_id, kind, status, strategy, alpha, model_source, started_at, finished_at, "
        f"left(error, 80) AS error FROM runs ORDER BY started_at DESC LIMIT {int(limit)}"
    )
    _print(read_only_query(config.db.path, sql, config.db.lock_timeout_s), fmt)


@cli.command()
@config_options
@click.argument("sql")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def query(config: Config, sql: str, fmt: str) -> None:
    """Answer SQL over the results database, read-only (statements that would write are refused)."""
    from tasks.store import read_only_query

    _print(read_only_query(config.db.path, sql, config.db.lock_timeout_s), fmt)


def _print(df: pd.DataFrame, fmt: str) -> None:
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(df.to_json(orient="records", date_format="iso", force_ascii=False))
    else:
        click.echo(df.to_string(index=False) if len(df) else "(no rows)")


def main() -> None:
    cli(prog_name="hbir")


if __name__ == "__main__":
    sys.exit(main())
