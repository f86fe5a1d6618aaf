"""What the pipeline itself holds at each stage, for XQuAD-R + N distractors: peak RSS per stage, each stage in a
fresh process, the model left out (an encoder of random unit vectors that tokenizes nothing), so that what grows
with N shows without a model's constant share or the minutes of encoding.

    python benchmarks/stage_memory.py                       # N = 100k and 1M: ~15 min on 2 cores
    python benchmarks/stage_memory.py --n 20000 100000      # a quick run
    python benchmarks/stage_memory.py --dim 384 --n 1000000 --memory-limit-mib 2048   # e5-small's width, each
                                                            # stage in a memory cgroup of 2 GiB (as root)

The issue's goal (15): peak RSS flat in N from 100k to 1M. ``distractor_scale.py`` measures the same stages end to
end with a real (tiny or e5-small) model, in one process; this one isolates each stage:
  load          ``load_tables(folder, texts=False)``: the ids of queries, candidates and qrels
  contracts     ``check_contracts``: Great Expectations on the candidates in batches, ids whole
  fingerprints  ``dataset_versions``: each language's rows sorted by DuckDB and hashed a batch at a time
  embed         ``embed_dataset`` with the random encoder (``--dim``), in shards of ``eval.shard_size``, no cache:
                each language's texts read, fingerprinted for the cache key, cut into shards, the vectors written
                to the dataset's vectors folder a shard at a time (as ``stages.embed_tables``)
  evaluate      ``evaluate`` with the exact index on that folder's vectors: every query against the whole pool,
                read a block at a time (random vectors: the relevant candidates sit mid-pool, the hardest case for
                ranking)
Each row: the stage's peak RSS (``VmHWM`` of its own process: imports, tables and the stage), and the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from variants import peak_rss_mib

from models.encoder import TextEncoder

STAGES = ("load", "contracts", "fingerprints", "embed", "evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/lareqa"))
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="distractors")
    parser.add_argument("--dim", type=int, default=32, help="the random vectors' width (the tiny model's: 32)")
    parser.add_argument("--shard-size", type=int, default=50_000, help="eval.shard_size")
    parser.add_argument("--workdir", type=Path, help="keep the folders here (default: a temporary one)")
    parser.add_argument(
        "--memory-limit-mib", type=int, help="run each stage in a memory cgroup capped here (RSS and page cache; root)"
    )
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage
    parser.add_argument("--tables", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args)))
        return
    with tempfile.TemporaryDirectory(prefix="stage-memory-") as scratch:
        workdir = (args.workdir or Path(scratch)).resolve()
        results = {n: measure(args, n, workdir) for n in args.n}
    print_table(args, results)


def measure(args: argparse.Namespace, n: int, workdir: Path) -> dict[str, dict]:
    """Build and ingest the folder for ``n`` distractors, then run each stage in a process of its own."""
    from hbir.app import stages
    from hbir.app.distractors import build_distractor_dataset
    from hbir.core.config import load_config

    pools = workdir / "pools"
    if not (pools / f"xquad-r-{n}" / "corpus.jsonl").exists():
        config = load_config("cpu", overrides={"data.dir": str(args.data_dir.resolve())})
        build_distractor_dataset(
            config, "xquad-r", "mlqa-r", n, pools / f"xquad-r-{n}", window=3, seed=0, draw="random"
        )
    os.environ["HBIR_CACHE_DIR"] = str(workdir / "cache")
    config = load_config("cpu", overrides={"data.dir": str(pools), "data.train": [], "data.eval": [f"xquad-r-{n}"]})
    tables = stages.ingest_tables(config, log=lambda _: None)[f"xquad-r-{n}"]
    vectors = workdir / f"vectors-{n}-{args.dim}"
    limit = memory_cgroup(args.memory_limit_mib) if args.memory_limit_mib else None
    join = (lambda: (limit / "cgroup.procs").write_text(str(os.getpid()))) if limit else None
    results = {}
    for stage in STAGES:
        command = [sys.executable, __file__, *sys.argv[1:], "--stage", stage, "--tables", str(tables)]
        command += ["--vectors", str(vectors)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, preexec_fn=join)
        if done.returncode != 0:
            killed = f", killed at the {args.memory_limit_mib} MiB limit" if done.returncode == -9 and limit else ""
            sys.exit(f"N={n} {stage} failed (its error above{killed})")
        results[stage] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"N={n:,} {stage}: {results[stage]['peak_rss_mib']:,.0f} MiB, {results[stage]['s']:.0f} s", flush=True)
    if limit:
        limit.rmdir()  # empty again: its processes have ended
    return results


def memory_cgroup(limit_mib: int) -> Path:
    """A new memory cgroup (v2, else v1) capped at ``limit_mib``: what the process maps and the page cache it
    fills count, and the kernel reclaims file pages (a memory-mapped index, the vectors file) before it kills."""
    unified = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    group = Path("/sys/fs/cgroup" if unified else "/sys/fs/cgroup/memory") / f"hbir-stage-memory-{os.getpid()}"
    group.mkdir(exist_ok=True)
    (group / ("memory.max" if unified else "memory.limit_in_bytes")).write_text(str(limit_mib * 2**20))
    return group


def run_stage(args: argparse.Namespace) -> dict:
    from data_contracts.validate import check_contracts
    from hbir.core.config import load_config
    from hbir.core.files import replace_dir
    from tasks.embedding import embed_dataset, load_vectors
    from tasks.evaluation import evaluate
    from tasks.ingest import dataset_versions
    from tasks.tables import load_tables

    config = load_config("cpu", overrides={"data.train": [], "eval.shard_size": args.shard_size})
    began = time.perf_counter()
    tables = load_tables(args.tables, texts=False)
    if args.stage == "contracts":
        failed = [result for result in check_contracts(config.data, [tables]) if not result.success]
        assert not failed, failed
    elif args.stage == "fingerprints":
        dataset_versions(tables)
    elif args.stage == "embed":
        encoder, shard_size = RandomEncoder(args.dim), config.eval.shard_size

        def write(folder: Path) -> None:
            embed_dataset(encoder, "random", tables, "sentence", 64, None, lambda _: None, shard_size, into=folder)

        replace_dir(args.vectors, write)
    elif args.stage == "evaluate":
        evaluate(tables, load_vectors(args.vectors), config.eval.model_copy(update={"index": "flat"}))
    return {"s": time.perf_counter() - began, "peak_rss_mib": peak_rss_mib()}


class RandomEncoder(TextEncoder):
    """Random unit vectors, no tokenizer and no model; a text's length in characters stands for its token count."""

    backend = "random"

    def __init__(self, dim: int) -> None:
        self.set_text_settings(None, "query: ", "passage: ", 128)
        self.dim = dim

    @property
    def hidden_size(self) -> int:
        return self.dim

    def token_lengths(self, texts, kind, contexts=None) -> list[int]:
        return [len(text) for text in texts]

    def embed(self, texts, kind, batch_size=64, contexts=None, show_progress=False, label="", lengths=None):
        vectors = torch.randn(len(texts), self.dim, generator=torch.Generator().manual_seed(len(texts)))
        return torch.nn.functional.normalize(vectors, dim=-1)


def print_table(args: argparse.Namespace, results: dict[int, dict[str, dict]]) -> None:
    sizes = list(results)
    print(f"\nXQuAD-R + N distractors, random {args.dim}-d vectors, shards {args.shard_size}: peak RSS (MiB) / seconds")
    print(f"{'stage':14}" + "".join(f"{'N=' + format(n, ','):>20}" for n in sizes) + f"{'last / first':>14}")
    for stage in STAGES:
        cells = [f"{results[n][stage]['peak_rss_mib']:>9,.0f} / {results[n][stage]['s']:>5.0f} s" for n in sizes]
        ratio = results[sizes[-1]][stage]["peak_rss_mib"] / results[sizes[0]][stage]["peak_rss_mib"]
        print(f"{stage:14}" + "".join(f"{cell:>20}" for cell in cells) + f"{ratio:>13.2f}x")
    peaks = [max(result["peak_rss_mib"] for result in results[n].values()) for n in sizes]
    print("highest stage: " + ", ".join(f"N={n:,} {peak:,.0f} MiB" for n, peak in zip(sizes, peaks, strict=True)))


if __name__ == "__main__":
    main()
