"""The results database's schema: the migrations that build it, one version each, and ``migrate``."""

from __future__ import annotations

import duckdb

from hbir.core.errors import HbirError

# Each migration moves the schema from version i to i + 1; never edit one that has shipped, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,              -- validate | train | eval | train-eval | ...
        status VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
        error VARCHAR,
        strategy VARCHAR,
        alpha DOUBLE,                       -- share of monolingual batches (mono 1, cross 0)
        model_source VARCHAR,
        seed BIGINT,
        config JSON NOT NULL,
        git_revision VARCHAR,
        device VARCHAR,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP
    );
    CREATE TABLE dataset_versions (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        lang VARCHAR NOT NULL,
        fingerprint VARCHAR NOT NULL,
        n_queries BIGINT NOT NULL,
        n_candidates BIGINT NOT NULL,
        n_qrels BIGINT NOT NULL,
        PRIMARY KEY (run_id, dataset, lang)
    );
    CREATE TABLE validations (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        table_name VARCHAR NOT NULL,
        expectation VARCHAR NOT NULL,
        success BOOLEAN NOT NULL,
        details VARCHAR
    );
    """,
    """
    CREATE TABLE train_steps (
        run_id VARCHAR NOT NULL,
        step INTEGER NOT NULL,              -- 1 .. train.steps; each step once, also across resumes
        loss DOUBLE NOT NULL,
        lr DOUBLE NOT NULL,                 -- the learning rate this step's update used
        batch_kind VARCHAR NOT NULL CHECK (batch_kind IN ('mono', 'cross')),
        dataset VARCHAR NOT NULL,
        query_langs VARCHAR[] NOT NULL,     -- per pair of the batch, in batch order
        passage_langs VARCHAR[] NOT NULL,
        examples_per_s DOUBLE NOT NULL,     -- pairs per second of this step (tokenize + forward + backward + update)
        PRIMARY KEY (run_id, step)
    );
    CREATE TABLE artifacts (
        run_id VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,              -- model | index | report | plot ...
        path VARCHAR NOT NULL,
        sha256 VARCHAR                      -- of the file, or of a model directory's weights file
    );
    """,
    """
    CREATE TABLE metrics (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        setting VARCHAR NOT NULL CHECK (setting IN ('mono', 'cross', 'multi')),
        query_lang VARCHAR NOT NULL,
        corpus_lang VARCHAR NOT NULL,       -- 'all' for multi: the pool of every language
        metric VARCHAR NOT NULL,            -- map | mrr@10 | recall@1 | recall@10 | recall@100 | ndcg@10
        value DOUBLE NOT NULL,              -- mean over the queries that have a relevant candidate in the corpus
        n_queries BIGINT NOT NULL,
        PRIMARY KEY (run_id, dataset, setting, query_lang, corpus_lang, metric)
    );
    CREATE TABLE per_query (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        setting VARCHAR NOT NULL,
        query_lang VARCHAR NOT NULL,
        corpus_lang VARCHAR NOT NULL,
        qid VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        value DOUBLE NOT NULL
    );
    CREATE TABLE language_bias (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        query_lang VARCHAR NOT NULL,
        rank_distance DOUBLE,               -- mean over queries of max - min rank of their relevant candidates
        same_lang_first_rate DOUBLE NOT NULL,  -- share of queries whose best-ranked relevant is in their language
        n_queries BIGINT NOT NULL,
        PRIMARY KEY (run_id, dataset, query_lang)
    );
    -- a setting's summary: the mean over its language pairs (XQuAD-R: 11 mono, 110 cross, 11 multi)
    CREATE VIEW run_summary AS
        SELECT run_id, dataset, setting, metric, avg(value) AS value, count(*) AS n_pairs
        FROM metrics GROUP BY run_id, dataset, setting, metric;
    """,
    """
    -- runs: status 'skipped' (a scheduled retrain that found nothing new), the fingerprint of what a training run
    -- learns from, and a note; DuckDB cannot alter a CHECK constraint, so the table is rebuilt
    CREATE TABLE runs_v4 (
        run_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        status VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'skipped')),
        error VARCHAR,
        strategy VARCHAR,
        alpha DOUBLE,
        model_source VARCHAR,
        seed BIGINT,
        config JSON NOT NULL,
        git_revision VARCHAR,
        device VARCHAR,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        inputs_fingerprint VARCHAR,         -- SHA-256 of the training data's files and the settings (not paths)
        note VARCHAR,                       -- why a run was skipped, what a retrain decided
        study_id VARCHAR                    -- the study the run belongs to (hbir study)
    );
    INSERT INTO runs_v4 BY NAME SELECT * FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_v4 RENAME TO runs;
    -- the models scheduled retraining trained, scored on the evaluation data against the champion of the moment
    CREATE TABLE models (
        run_id VARCHAR PRIMARY KEY,         -- the run that trained it
        path VARCHAR NOT NULL,
        sha256 VARCHAR NOT NULL,            -- of its weights file
        eval_datasets VARCHAR[] NOT NULL,
        multi_map DOUBLE NOT NULL,          -- multilingual mAP, mean over eval_datasets
        rival_run_id VARCHAR,               -- the champion it was compared with (NULL: there was none)
        rival_multi_map DOUBLE,             -- that champion's multilingual mAP on the same data
        champion BOOLEAN NOT NULL,          -- the current champion: one row at most
        created_at TIMESTAMP NOT NULL,
        promoted_at TIMESTAMP               -- when it became champion (NULL: it did not beat the champion)
    );
    """,
    """
    -- the dev split's metrics during training (train.eval_every): the learning curves
    CREATE TABLE dev_metrics (
        run_id VARCHAR NOT NULL,
        step INTEGER NOT NULL,              -- the training step after which the dev split was evaluated
        dataset VARCHAR NOT NULL,           -- the training dataset the dev questions were held out from
        setting VARCHAR NOT NULL CHECK (setting IN ('mono', 'cross', 'multi')),
        metric VARCHAR NOT NULL,
        value DOUBLE NOT NULL,              -- mean over the setting's language pairs, as run_summary
        PRIMARY KEY (run_id, step, dataset, setting, metric)
    );
    -- the step whose weights a training run saved as its model (train.select: the last, or the best dev score)
    ALTER TABLE runs ADD COLUMN selected_step INTEGER;
    -- a model merged with its base model (train.merge, hbir merge): the weight of the fine-tuned model; and the run
    -- whose trained model a run used (hbir eval --model-run, hbir merge)
    ALTER TABLE runs ADD COLUMN merge_weight DOUBLE;
    ALTER TABLE runs ADD COLUMN parent_run_id VARCHAR;
    """,
    """
    -- who is running a run: its process (host, pid) and when it last wrote (start, every flush of its training
    -- steps); a 'running' run whose process is gone is stale (hbir runs shows it, --fail-stale marks it failed)
    ALTER TABLE runs ADD COLUMN host VARCHAR;
    ALTER TABLE runs ADD COLUMN pid INTEGER;
    ALTER TABLE runs ADD COLUMN heartbeat_at TIMESTAMP;
    """,
    """
    -- how a training run was spread: its number of ranks (train.nproc_per_node x train.nnodes) and the micro-batch
    -- of gradient caching (train.micro_batch_size; NULL: none), as of its last start
    ALTER TABLE runs ADD COLUMN world_size INTEGER;
    ALTER TABLE runs ADD COLUMN micro_batch_size INTEGER;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# The tables a run's outcome fills, written together by ``runs.finish_run`` (train_steps are written during training).
RESULT_TABLES = ("dataset_versions", "validations", "metrics", "per_query", "language_bias", "artifacts")


def schema_version(connection: duckdb.DuckDBPyConnection) -> int:
    """The schema version of an hbir database (0: an empty one); HbirError for a database that is not hbir's (it has
    tables and no ``schema_version``) or was written by a newer hbir."""
    tables = sorted(
        name
        for (name,) in connection.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "UNION SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND NOT internal"
        ).fetchall()
    )
    if "schema_version" not in tables:
        if tables:
            raise HbirError(
                f"results database {_file(connection)} is not hbir's: it holds {', '.join(tables[:5])}"
                f"{' ...' if len(tables) > 5 else ''} and no schema_version table; nothing was changed. Set db.path "
                "(HBIR_DB) to a new file or to an hbir results database"
            )
        return 0
    found = connection.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
    if found > SCHEMA_VERSION:
        raise HbirError(
            f"results database {_file(connection)} was written by a newer hbir (schema version {found}; this hbir "
            f"knows up to {SCHEMA_VERSION}): upgrade hbir to read it"
        )
    return found


def _file(connection: duckdb.DuckDBPyConnection) -> str:
    sql = "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    return connection.execute(sql).fetchone()[0]


def migrate(connection: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema of an hbir (or empty) database up to ``SCHEMA_VERSION``; return the version found before."""
    found = schema_version(connection)
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    for version in range(found, SCHEMA_VERSION):
        connection.execute("BEGIN TRANSACTION")
        connection.execute(MIGRATIONS[version])
        connection.execute("INSERT INTO schema_version VALUES (?)", [version + 1])
        connection.execute("COMMIT")
    return found
