"""``model.backend=auto`` on a CPU: the fastest backend within the quality bound, timed on this CPU.

    backend = fastest_cpu_backend(model_dir, model_cfg, model_fingerprint(model_dir), log=print)
    # "torch", "onnx", "onnx-int8", or "torch-bf16" on a CPU with bfloat16 instructions

The candidates keep XQuAD-R mAP within 0.005 of float32 PyTorch: PyTorch and ONNX Runtime in float32 (the same
vectors to ~1e-6), PyTorch in a bfloat16 autocast (e5-small: +0.0003 mAP mono, +0.0002 cross, +0.0005 multi), and
ONNX Runtime in int8 (e5-small -0.0007 / -0.0035 / -0.0020, the model ``hbir run`` fine-tunes from it +0.0026 /
+0.0030 / +0.0005, since the bias correction of ``models.smooth_quant``). How far int8 moves a model depends on its
weights (that fine-tuned model moved +0.012 cross before the bias correction, at cosine 0.981 to float32), so
``onnx-int8`` is taken only for a model whose int8 vectors keep a mean cosine of INT8_MIN_COSINE to its float32
ones on the timing batches (``int8_agreement``: e5-small 0.999, the ``hbir run`` model 0.997; checked once per
model); else the next fastest is. Which is fastest depends on the CPU: float32 ONNX was 1.55x PyTorch's texts/s on
an AMD EPYC with AVX-512, level on an AVX2-only one, 0.87x on an Intel Xeon with AMX, where bfloat16 was 2.23x. So
the choice is measured, once per CPU, library versions, thread count and model shape (not weights: a fine-tuned
model runs as fast as its base), by encoding the same random token batches with each, and kept in
``<cache>/models/backend/<key>.json``; int8's agreement, per model, beside it in ``int8-<fingerprint>-<max
length>-v<export version>.json``. Delete a file to measure again.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from hbir.core.config import ModelConfig
from hbir.core.files import write_text
from hbir.core.memory import give_back_freed_memory
from hbir.core.paths import models_cache_dir

BACKENDS = ("torch", "onnx", "onnx-int8")  # timed on every CPU
INT8_BACKEND = "onnx-int8"
# the least mean cosine of a model's int8 vectors to its float32 ones on the probe batches for auto to take int8:
# within the bound at 0.997 (the hbir run model) and 0.999 (e5-small), outside it at 0.979 (that model before the
# bias correction)
INT8_MIN_COSINE = 0.995
# bfloat16 products, within the quality bound too (README), timed on a CPU with bfloat16 instructions only (without
# them PyTorch converts in software)
BF16_BACKEND, BF16_FLAGS = "torch-bf16", ("avx512_bf16", "amx_bf16")
# an ONNX backend is chosen when it is at least this much faster than the fastest other: each new model (every
# trained one) is exported first (e5-small: ~30 s), which PyTorch does without
ONNX_MARGIN = 1.05
PROBE_LENGTHS = (16, 32, 64, 128)  # tokens per text of the timed batches (at most model.max_length)
PROBE_BATCH = 32  # texts per timed batch
PROBE_ROUNDS = 3  # timed passes per backend, alternating; the fastest counts
# what makes a model as fast as another of its shape (config.json)
SHAPE_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "vocab_size",
)  # fmt: skip
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def fastest_cpu_backend(
    model_dir: str | Path, model_cfg: ModelConfig, model_fp: str, log: Callable[[str], None] | None = None
) -> str:
    """The backend of ``timed_backends()`` that encodes the model of ``model_dir`` fastest on this CPU (``ranked``),
    ``onnx-int8`` only where ``int8_agreement`` allows: the speeds read from the cache, else timed (saying so to
    ``log``) and cached."""
    log = log or (lambda line: None)
    setup = machine_and_model(model_dir, model_cfg.max_length)
    key = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:16]
    path = models_cache_dir() / "backend" / f"{key}.json"
    if path.exists():
        timing = json.loads(path.read_text(encoding="utf-8"))
    else:
        log(f"model.backend auto: timing {', '.join(timed_backends())} on this CPU, once for this CPU and model shape")
        speeds = texts_per_second(model_dir, model_cfg, model_fp, log)
        give_back_freed_memory()  # the timed encoders' leftovers (e5-small: ~1 GiB) before the chosen one loads
        timing = {"texts_per_s": speeds, "measured": _now(), **setup}
        write_text(path, json.dumps(timing, indent=2))
    backend = next(  # int8's agreement measured only where it is the fastest left
        name
        for name in ranked(timing["texts_per_s"])
        if name != INT8_BACKEND or int8_agreement(model_dir, model_cfg, model_fp, log) >= INT8_MIN_COSINE
    )
    speeds = ", ".join(f"{name} {value:.1f}" for name, value in timing["texts_per_s"].items())
    log(f"model.backend auto is {backend} on this CPU (texts/s: {speeds}; {timing['measured']}, {path})")
    return backend


def ranked(speeds: dict[str, float]) -> list[str]:
    """The backends by these texts/s, fastest first, an ONNX one counted at its texts/s / ONNX_MARGIN."""
    return sorted(speeds, key=lambda name: speeds[name] / (ONNX_MARGIN if name.startswith("onnx") else 1), reverse=True)


def int8_agreement(
    model_dir: str | Path, model_cfg: ModelConfig, model_fp: str, log: Callable[[str], None] | None = None
) -> float:
    """The mean cosine of the model's ``onnx-int8`` vectors to its float32 PyTorch ones on ``probe_batches``: read
    from ``agreement_path`` (kept by ``texts_per_second`` for the model it timed), else measured (the int8 export
    made first, once per model, as ``onnx-int8`` needs it anyway) and kept; said to ``log`` either way. An export
    that fails counts as 0 (kept too, with its error: not tried again for this model)."""
    from models.encoder import BiEncoder

    path = agreement_path(model_fp, model_cfg.max_length)
    if not path.exists():
        int8 = int8_encoder(model_dir, model_cfg, model_fp, log)  # first: a failed export needs no PyTorch model
        if int8 is not None:
            plain = BiEncoder.from_config(model_dir, model_cfg).eval()
            with torch.inference_mode():
                batches = probe_batches(plain, model_cfg.max_length)
                keep_agreement(path, [plain.encode_batch(b) for b in batches], [int8.encode_batch(b) for b in batches])
            del plain, int8
            give_back_freed_memory()
    agreement = json.loads(path.read_text(encoding="utf-8"))
    mean = agreement["mean_cosine"]
    verdict = "kept" if mean >= INT8_MIN_COSINE else "too far: not taken"
    why = agreement.get("error", f"cosine {mean:.4f} to float32 on average")
    log(f"model.backend auto: onnx-int8's vectors of this model: {why} (at least {INT8_MIN_COSINE}: {verdict}; "
        f"{path})")  # fmt: skip
    return mean


def agreement_path(model_fp: str, max_length: int) -> Path:
    """Where a model's int8 agreement is kept: per model, maximum length and export version."""
    from models.onnx_encoder import EXPORT_VERSION

    return models_cache_dir() / "backend" / f"int8-{model_fp}-{max_length}-v{EXPORT_VERSION}.json"


def int8_encoder(model_dir: str | Path, model_cfg: ModelConfig, model_fp: str, log: Callable[[str], None]):
    """The model's ``onnx-int8`` encoder (exported once), or None where the export fails: said to ``log`` and kept
    as the model's agreement (0, with the error), so that it is not tried again."""
    from models.onnx_encoder import OnnxEncoder

    try:
        return OnnxEncoder.from_config(model_dir, model_cfg, INT8_BACKEND, models_cache_dir() / "onnx", model_fp, log)
    except Exception as error:  # noqa: BLE001 - any failure of the int8 export leaves int8 out, said here
        log(f"model.backend auto: onnx-int8 left out, the int8 export failed: {error}")
        agreement = {"mean_cosine": 0.0, "error": f"the int8 export failed: {error}", "measured": _now()}
        write_text(agreement_path(model_fp, model_cfg.max_length), json.dumps(agreement, indent=2))
        return None


def keep_agreement(path: Path, float32: list[torch.Tensor], int8: list[torch.Tensor]) -> None:
    """The cosines of the same batches' unit vectors in float32 and in int8, their mean and least, kept at ``path``."""
    cosines = torch.cat([(a * b).sum(dim=-1) for a, b in zip(float32, int8, strict=True)])
    agreement = {"mean_cosine": round(cosines.mean().item(), 5), "min_cosine": round(cosines.min().item(), 5),
                 "texts": len(cosines), "measured": _now()}  # fmt: skip
    write_text(path, json.dumps(agreement, indent=2))


def timed_backends() -> tuple[str, ...]:
    """The backends timed on this CPU: BACKENDS, and BF16_BACKEND where the CPU has bfloat16 instructions."""
    return BACKENDS + ((BF16_BACKEND,) if set(BF16_FLAGS) & cpu_flags() else ())


def texts_per_second(
    model_dir: str | Path, model_cfg: ModelConfig, model_fp: str, log: Callable[[str], None] | None = None
) -> dict[str, float]:
    """Texts/s of each of ``timed_backends()`` on the same random token batches (PROBE_LENGTHS x PROBE_BATCH texts
    a pass): a warm-up pass each, then PROBE_ROUNDS passes each, alternating; the fastest pass counts. Tokenizing is
    left out: every backend uses the same tokenizer. A failed int8 export leaves ``onnx-int8`` out (said to ``log``);
    else the warm-up pass's int8 and float32 vectors are kept as this model's agreement (``keep_agreement``)."""
    from models.encoder import BiEncoder
    from models.onnx_encoder import OnnxEncoder

    plain = BiEncoder.from_config(model_dir, model_cfg).eval()
    encoders = {
        "torch": plain,
        "onnx": OnnxEncoder.from_config(model_dir, model_cfg, "onnx", models_cache_dir() / "onnx", model_fp, log),
        INT8_BACKEND: int8_encoder(model_dir, model_cfg, model_fp, log),
        BF16_BACKEND: BiEncoder(plain.model, plain.tokenizer, max_length=model_cfg.max_length, backend=BF16_BACKEND),
    }
    names = [name for name in timed_backends() if encoders[name] is not None]
    batches = probe_batches(plain, model_cfg.max_length)
    texts = sum(len(batch["input_ids"]) for batch in batches)
    best = dict.fromkeys(names, float("inf"))
    warm_up = {}  # the vectors of round 0
    with torch.inference_mode():
        for round_ in range(PROBE_ROUNDS + 1):  # round 0 warms up
            for name in names:
                began = time.perf_counter()
                vectors = [encoders[name].encode_batch(batch) for batch in batches]
                if round_:
                    best[name] = min(best[name], time.perf_counter() - began)
                else:
                    warm_up[name] = vectors
    if INT8_BACKEND in warm_up:  # this model's int8 agreement, from the same batches (int8_agreement reads it)
        keep_agreement(agreement_path(model_fp, model_cfg.max_length), warm_up["torch"], warm_up[INT8_BACKEND])
    return {name: round(texts / best[name], 1) for name in names}


def probe_batches(encoder, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Random token ids in batches of PROBE_BATCH texts of each of PROBE_LENGTHS tokens (cut to ``max_length``),
    with the inputs the model's tokenizer makes, no padding; the same for every run."""
    generator = torch.Generator().manual_seed(0)
    vocab = encoder.model.config.vocab_size
    batches = []
    for length in sorted({min(length, max_length) for length in PROBE_LENGTHS}):
        ids = torch.randint(vocab // 10, vocab, (PROBE_BATCH, length), generator=generator)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        batches.append({name: inputs[name] for name in encoder.tokenizer.model_input_names})
    return batches


def machine_and_model(model_dir: str | Path, max_length: int) -> dict:
    """What the backends' speeds depend on: the CPU, the libraries, the threads, the model's shape; and which
    backends are timed, in which version of the ONNX export."""
    import onnxruntime

    from models.onnx_encoder import EXPORT_VERSION

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return {
        "cpu": cpu_name(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in cpu_flags()],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "model": {name: config.get(name) for name in SHAPE_KEYS},
        "max_length": max_length,
        "backends": list(timed_backends()),
        "onnx_export": EXPORT_VERSION,
    }


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def _cpuinfo(field: str) -> str:
    """The first ``field`` of /proc/cpuinfo (Linux), else ""."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return ""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
