"""TrainConfig: every option of ``embedrag train``, validated in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.encoding.models import DEFAULT_MODEL, canonical_model_name
from embedrag.engine.encoding.precision import accelerate_mixed_precision
from embedrag.engine.training.finetune import FINETUNE_CHOICES, QLORA_INITS, LoraSettings

SCHEDULERS = ("linear", "cosine", "constant")
MIXED_PRECISION = ("no", "fp32", "fp16", "bf16")  # "no" = "fp32"; see engine.precision
BEST_METRICS = ("ndcg@10", "recall@10", "mrr@10", "loss")
LOSSES = ("infonce", "infonce-symmetric", "margin-ranking")
FINAL_MODELS = ("best", "last")

# The original train.py's temperature, for models whose own is not known.
DEFAULT_TEMPERATURE = 0.02
# Temperatures (1 / sentence-transformers' scale) that well-known embedders were trained
# at: their similarities are calibrated to it. On SciFact, all-MiniLM-L6-v2 fine-tuned at
# 0.05 beats 0.02 (benchmarks/RESULTS.md).
KNOWN_TRAINING_TEMPERATURES = {
    "sentence-transformers/all-MiniLM-L6-v2": 0.05,
    "sentence-transformers/all-MiniLM-L12-v2": 0.05,
    "sentence-transformers/all-mpnet-base-v2": 0.05,
}


def default_temperature(model: str, finetune_record: dict | None = None, base_model: str | None = None) -> float:
    """The InfoNCE temperature to fine-tune ``model`` at when none is given: the one
    embedrag recorded when it trained that model (``finetune_record``, from its
    ``embedrag.json``), else the one it or its base (``base_model``) is known to have been
    trained at, else the original's 0.02."""
    recorded = (finetune_record or {}).get("temperature")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and recorded > 0:
        return float(recorded)
    for name in (model, base_model):
        known = KNOWN_TRAINING_TEMPERATURES.get(canonical_model_name(str(name))) if name else None
        if known is not None:
            return known
    return DEFAULT_TEMPERATURE


@dataclass
class DatasetSpec:
    """A training file and its sampling weight (``path:weight`` on the command line)."""

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> DatasetSpec:
        path, sep, weight = spec.rpartition(":")
        if sep and path and not Path(spec).exists():
            try:
                value = float(weight)
            except ValueError:
                return cls(spec)
            if value <= 0:
                raise ConfigError(f"dataset weight must be positive in {spec!r}")
            return cls(path, value)
        return cls(spec)


@dataclass
class TrainConfig:
    """Options of a fine-tuning run; see docs/commands/train.md for their meaning."""

    train_datasets: list[str] = field(default_factory=list)
    output_dir: str = ""
    model: str = DEFAULT_MODEL
    finetune_type: str = "auto"  # resolved by the run: see finetune.choose_finetune_type
    quantization_bits: int | None = None
    eval_dataset: str | None = None
    eval_split: str = "test"
    # Without eval_dataset: hold out a share of the training queries (see holdout.py).
    auto_validation: bool = True
    eval_corpus: str | None = None
    validation_pool_size: int = 1000
    # With validation, final/ is the best evaluated model ("best") or the last one ("last").
    final_model: str = "best"
    batch_size: int = 16
    mini_batch_size: int | None = None
    cross_device_negatives: bool | None = None
    gradient_accumulation_steps: int = 1
    lr: float | None = None
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # 3, not 2: with the automatic validation split the best epoch is kept, and on SciFact
    # the held-out queries still gained in the last of 2 epochs (0.8722 -> 0.8947) and again
    # in a third (0.9076); test nDCG@10 0.7169 -> 0.7417 (benchmarks/RESULTS.md, issue 20).
    epochs: int = 3
    max_steps: int | None = None
    neg_nums: int = 2
    loss: str = "infonce"
    temperature: float | None = None  # None: default_temperature(model)
    margin: float = 0.1
    in_batch_negatives: bool = True
    init_from: str | None = None
    query_max_len: int = 256
    passage_max_len: int = 1024
    pooling: str = "auto"
    query_instruction: str | None = None
    passage_instruction: str | None = None
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: str = "auto"
    qlora_init: str = "gaussian"  # LoftQ measured no better on SciFact (benchmarks/RESULTS.md)
    attention_dropout: float | None = 0.0  # None: the model's own
    warmup_proportion: float = 0.05
    scheduler: str = "linear"
    save_on_epoch_end: bool = True
    save_steps: int | None = None
    save_total_limit: int | None = None
    mixed_precision: str = "fp32"  # fp32, bf16 or fp16 (engine.precision; "no" = fp32)
    gradient_checkpointing: bool = False
    eval_steps: int | None = None
    eval_on_start: bool = True
    eval_batch_size: int = 64
    metric_for_best: str = "ndcg@10"
    early_stopping_patience: int | None = None
    resume_from_checkpoint: str | None = None
    overwrite_output_dir: bool = False
    tensorboard: bool = True
    seed: int = 42

    # ------------------------------------------------------------------ derived values
    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        # 2e-5 for full, not the original train.py's 1e-5: on SciFact two epochs of
        # all-MiniLM-L6-v2 reached nDCG@10 0.7028 vs 0.6805 (benchmarks/RESULTS.md).
        return 2e-5 if self.finetune_type == "full" else 1e-4

    @property
    def bits(self) -> int | None:
        if self.finetune_type != "qlora":
            return None
        return self.quantization_bits or 4

    def datasets(self) -> list[DatasetSpec]:
        return [DatasetSpec.parse(s) for s in self.train_datasets]

    def lora(self) -> LoraSettings:
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                            target_modules=self.lora_target_modules)

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` for the first impossible option; return self."""
        problems = list(self._problems())
        if problems:
            raise ConfigError(problems[0])
        return self

    def _problems(self):
        if not self.train_datasets:
            yield "--train-dataset is required"
        if not self.output_dir:
            yield "--output-dir is required"
        if self.finetune_type not in FINETUNE_CHOICES:
            yield f"--finetune-type must be one of {', '.join(FINETUNE_CHOICES)}, got {self.finetune_type!r}"
        if self.quantization_bits is not None:
            if self.finetune_type not in ("qlora", "auto"):
                yield f"--quantization-bits only applies to --finetune-type qlora, not {self.finetune_type}"
            elif self.quantization_bits not in (4, 8):
                yield f"--quantization-bits must be 4 or 8, got {self.quantization_bits}"
        for name in ("batch_size", "gradient_accumulation_steps", "epochs", "query_max_len",
                     "passage_max_len", "lora_r", "lora_alpha", "eval_batch_size", "validation_pool_size"):
            if getattr(self, name) <= 0:
                yield f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
        if self.mini_batch_size is not None and self.mini_batch_size <= 0:
            yield f"--mini-batch-size must be positive, got {self.mini_batch_size}"
        for name in ("max_steps", "save_steps", "save_total_limit", "eval_steps", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                yield f"--{name.replace('_', '-')} must be positive, got {value}"
        if self.neg_nums < 0:
            yield f"--neg-nums must be >= 0, got {self.neg_nums}"
        if self.temperature is not None and self.temperature <= 0:
            yield f"--temperature must be positive, got {self.temperature}"
        if self.loss not in LOSSES:
            yield f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"
        if self.margin < 0:
            yield f"--margin must be >= 0, got {self.margin}"
        if self.init_from is not None and not Path(self.init_from).is_dir():
            yield f"--init-from {self.init_from}: not a folder (give a training final/ or a model folder)"
        if self.lr is not None and self.lr <= 0:
            yield f"--lr must be positive, got {self.lr}"
        if not 0 <= self.warmup_proportion < 1:
            yield f"--warmup-proportion must be in [0, 1), got {self.warmup_proportion}"
        if not 0 <= self.lora_dropout < 1:
            yield f"--lora-dropout must be in [0, 1), got {self.lora_dropout}"
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            yield f"--attention-dropout must be in [0, 1) or 'model', got {self.attention_dropout}"
        if self.qlora_init not in QLORA_INITS:
            yield f"--qlora-init must be one of {', '.join(QLORA_INITS)}, got {self.qlora_init!r}"
        if self.scheduler not in SCHEDULERS:
            yield f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}"
        try:  # fp32/bf16/fp16 as everywhere else; "no" (accelerate's word for fp32) kept
            accelerate_mixed_precision(self.mixed_precision)
        except ConfigError as exc:
            yield str(exc)
        if self.metric_for_best not in BEST_METRICS:
            yield f"--metric-for-best must be one of {', '.join(BEST_METRICS)}, got {self.metric_for_best!r}"
        validating = self.eval_dataset or self.auto_validation
        if self.early_stopping_patience is not None and not validating:
            yield "--early-stopping-patience needs --eval-dataset or the automatic validation split"
        if self.eval_steps is not None and not validating:
            yield "--eval-steps needs --eval-dataset or the automatic validation split"
        if self.eval_corpus is not None:
            if self.eval_dataset:
                yield "--eval-corpus is the automatic validation split's pool: not with --eval-dataset"
            elif not self.auto_validation:
                yield "--eval-corpus needs the automatic validation split (drop --no-auto-validation)"
            elif not Path(self.eval_corpus).exists():
                yield f"--eval-corpus {self.eval_corpus}: no such file or folder"
        if self.final_model not in FINAL_MODELS:
            yield f"--final-model must be one of {', '.join(FINAL_MODELS)}, got {self.final_model!r}"
        if self.pooling not in ("auto", "cls", "mean", "last"):
            yield f"--pooling must be auto, cls, mean or last, got {self.pooling!r}"

    # ------------------------------------------------------------------ (de)serialising
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: Path) -> None:
        from embedrag.engine.core.atomic import write_json

        write_json(path, self.to_dict())
