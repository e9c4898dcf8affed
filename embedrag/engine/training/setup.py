"""Set-up of a training run: data, output folder, accelerator, model, optimiser, sampler, loss.

:class:`_SetUp` is the part of the trainer that builds everything before the first step.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.data.examples import load_examples
from embedrag.engine.encoding.precision import accelerate_mixed_precision
from embedrag.engine.training.reporting import _peak_memory_bytes, _reset_peak_memory
from embedrag.engine.training.sampling import EpochSampler
from embedrag.engine.training.train_config import TrainConfig, default_temperature
from embedrag.engine.training.validation import validation_set

logger = logging.getLogger(__name__)


def _loss(config: TrainConfig):
    """The training loss the config names."""
    from embedrag.engine.training.loss import InfoNCELoss, MarginRankingLoss, SymmetricInfoNCELoss

    if config.loss == "margin-ranking":
        return MarginRankingLoss(config.margin, config.in_batch_negatives)
    if config.loss == "infonce-symmetric":
        return SymmetricInfoNCELoss(config.temperature, config.in_batch_negatives)
    return InfoNCELoss(config.temperature, config.in_batch_negatives)


def _bi_encoder_class():
    import torch

    from embedrag.engine.encoding.encoder import embed_batch

    class BiEncoder(torch.nn.Module):
        """Embeds queries and passages in ONE forward call, so distributed wrappers
        (DDP) see each parameter used once per step."""

        def __init__(self, backbone: torch.nn.Module, pooling: str, normalize: bool):
            super().__init__()
            self.backbone = backbone
            self.pooling = pooling
            self.normalize = normalize

        def forward(self, *batches: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
            return tuple(embed_batch(self.backbone, b, self.pooling, self.normalize) for b in batches)

    return BiEncoder


# ---------------------------------------------------------------------- helpers
def _accelerator(mixed_precision: str):
    """An Accelerator for this run. accelerate keeps process-wide state that refuses a
    different precision later; a second run in the same process (a notebook, a test)
    resets it first, keeping the distributed set-up."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    # Several processes without a GPU (torchrun or accelerate launch on CPU): accelerate
    # only sets up gloo when told the run is on CPU.
    import torch

    from embedrag.engine.training.launch import in_distributed_launch

    on_cpu = in_distributed_launch() and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=on_cpu)


def _return_freed_memory_to_the_os() -> None:
    """glibc raises its mmap threshold after large frees, so the weight-sized
    temporaries of CPU training (4-bit dequantisation above all) are then served from
    the heap, which fragments and never shrinks: RSS grows step after step. A fixed 1 MiB
    threshold keeps large blocks in mmap, released on free (measured here: qlora peak
    RSS 3.0 GiB -> 1.7 GiB on a 105M-parameter decoder). Only qlora needs it: every
    activation then costs fresh zeroed pages, which made lora/full CPU steps ~20% slower."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class _SetUp:
    """Builds a run: everything the loop, validation and saving use, set on the trainer."""

    def load_data(self) -> None:
        config = self.config
        self.datasets = [(load_examples(spec.path), spec.weight) for spec in config.datasets()]
        self.eval_examples, self.eval_set = [], None
        if config.eval_dataset:
            self.eval_examples, self.eval_set = validation_set(config.eval_dataset, config.eval_split)
        elif config.auto_validation:
            self._hold_out()

    def _hold_out(self) -> None:
        """The automatic validation split: held-out training queries over a candidate pool."""
        from embedrag.engine.training.holdout import holdout_testset, split_holdout

        config = self.config
        everything = [e for examples, _ in self.datasets for e in examples]
        self.datasets, held, info = split_holdout(self.datasets, seed=config.seed)
        if held:
            self.eval_set, info.pool_source = holdout_testset(
                held, everything, seed=config.seed, pool_size=config.validation_pool_size,
                corpus_path=config.eval_corpus)
            self.eval_examples = held
            info.pool = len(self.eval_set.corpus)
            logger.info("validation split: %d of %d training queries held out, ranked over %d passages (%s)",
                        info.queries, info.of_queries, info.pool, info.pool_source)
        else:
            logger.warning("%s", info.skipped_reason)
        self.holdout = info.to_dict()

    def check_output_dir(self) -> None:
        out = self.output_dir
        if self.config.resume_from_checkpoint or self.config.overwrite_output_dir:
            from embedrag.engine.core.atomic import remove_stale_staging
            from embedrag.engine.training.launch import is_main_process

            if is_main_process():
                for path in remove_stale_staging(out):
                    logger.info("removed %s, left by an interrupted run", path)
            return
        if out.exists() and (out.is_file() or any(out.iterdir())):
            raise ConfigError(f"output dir {out} exists and is not empty: pass --overwrite-output-dir "
                              "or --resume-from-checkpoint latest")

    def build(self) -> None:
        self._build_model()
        self._build_optimisation()

    def _build_model(self) -> None:
        """The accelerator and the encoder, prepared for the fine-tune type (adapters on)."""
        import torch
        from accelerate.utils import set_seed

        from embedrag.engine.training.finetune import (
            load_adapter_weights,
            load_training_encoder,
            prepare_for_training,
            resolve_init,
            set_attention_dropout,
        )

        config = self.config
        self.accelerator = _accelerator(accelerate_mixed_precision(config.mixed_precision))
        set_seed(config.seed)
        init = resolve_init(config.init_from, config.model)
        if config.finetune_type == "auto":
            config = self.config = replace(config, finetune_type=self._choose_finetune_type(init))
        if torch.device(self.accelerator.device).type == "cpu" and config.finetune_type == "qlora":
            _return_freed_memory_to_the_os()
        self.encoder = load_training_encoder(
            init.model, config.finetune_type, quantization_bits=config.bits,
            device=str(self.accelerator.device), **self._embedding_settings(init))
        if config.temperature is None:
            declared = self.encoder.config
            temperature = default_temperature(init.model, (declared.extra or {}).get("finetune"),
                                              declared.base_model)
            config = self.config = replace(config, temperature=temperature)
        if Path(init.model).is_dir():
            # The folder trained from is the base an adapter sits on, whatever base that
            # folder itself was once fine-tuned from.
            self.encoder.config.base_model = str(Path(init.model).resolve())
        self.encoder.config.extra = {"finetune": self._finetune_record()}
        lora = config.lora()
        if init.adapter is not None and config.finetune_type != "full":
            lora = init.lora(config.lora_dropout)
        elif init.adapter is not None:
            self._merge_init_adapter(init)
        if config.attention_dropout is not None:
            set_attention_dropout(self.encoder.model, config.attention_dropout)
        # LoftQ only starts a new 4-bit adapter (8-bit's error is small; a continued adapter
        # brings its own weights).
        prepare_for_training(self.encoder, config.finetune_type, lora,
                             gradient_checkpointing=config.gradient_checkpointing,
                             qlora_init=config.qlora_init if config.bits == 4 and init.adapter is None
                             else "gaussian")
        if init.adapter is not None and config.finetune_type != "full":
            load_adapter_weights(self.encoder.model, init.adapter)

    def _build_optimisation(self) -> None:
        """The trained module, optimiser, sampler, step counts, schedule and loss step."""
        import torch

        from embedrag.engine.training.contrastive import ContrastiveStep

        config = self.config
        self.module = _bi_encoder_class()(self.encoder.model, self.encoder.config.pooling,
                                          self.encoder.config.normalize)
        self.parameters = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.sampler = EpochSampler(self.datasets, batch_size=config.batch_size, neg_nums=config.neg_nums,
                                    seed=config.seed, world_size=self.accelerator.num_processes,
                                    rank=self.accelerator.process_index)
        self.micro_steps_per_epoch = self.sampler.steps_per_epoch()
        if self.micro_steps_per_epoch == 0:
            raise ConfigError(f"not enough training examples for one batch of {config.batch_size} "
                              f"x {self.accelerator.num_processes} process(es)")
        accumulation = config.gradient_accumulation_steps
        self.updates_per_epoch = math.ceil(self.micro_steps_per_epoch / accumulation)
        self.total_updates = config.max_steps or config.epochs * self.updates_per_epoch
        self.num_epochs = math.ceil(self.total_updates / self.updates_per_epoch)
        self.scheduler = self._scheduler()
        self.module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        self.loss_fn = _loss(config)

        world = self.accelerator.num_processes
        self.contrastive_step = ContrastiveStep(
            self.module, self.encoder, self.loss_fn, backward=self.accelerator.backward,
            no_sync=lambda: self.accelerator.no_sync(self.module), mini_batch_size=config.mini_batch_size,
            cross_device=world > 1 and config.cross_device_negatives is not False, world_size=world,
            device=self.accelerator.device,
            # Not for 4-bit/8-bit weights: every extra forward call raised the qlora peak
            # (105M decoder, CPU: 1,660 -> 2,092 MiB), which is what qlora is chosen to save.
            passage_group_size=None if config.finetune_type == "qlora" else config.batch_size)
        self.device_type = torch.device(self.accelerator.device).type
        self.load_peak_memory = _peak_memory_bytes(self.device_type)
        _reset_peak_memory(self.device_type)

    def _choose_finetune_type(self, init) -> str:
        """``--finetune-type auto``: an adapter run continues as the adapter was trained;
        otherwise by model size and device memory (finetune.choose_finetune_type)."""
        from embedrag.engine.encoding.encoder import read_embedding_config
        from embedrag.engine.encoding.models import resolve_model
        from embedrag.engine.training.finetune import (
            checkpoint_parameters,
            choose_finetune_type,
            device_memory_bytes,
        )

        if init.adapter is not None:
            saved = read_embedding_config(init.adapter)
            chosen = ((saved.extra or {}).get("finetune", {}).get("type") if saved else None) or "lora"
            self.finetune_choice = f"continuing {init.adapter} ({chosen})"
            return chosen
        parameters = checkpoint_parameters(resolve_model(init.model).path)
        chosen, self.finetune_choice = choose_finetune_type(parameters, device_memory_bytes(str(self.accelerator.device)))
        logger.info("--finetune-type auto: %s (%s)", chosen, self.finetune_choice)
        return chosen

    def _embedding_settings(self, init) -> dict[str, Any]:
        """The run's embedding settings; options left unset follow the adapter started from."""
        from embedrag.engine.encoding.encoder import read_embedding_config

        config = self.config
        saved = read_embedding_config(init.adapter) if init.adapter is not None else None
        pooling = config.pooling
        query_instruction, passage_instruction = config.query_instruction, config.passage_instruction
        if saved is not None:
            pooling = saved.pooling if pooling == "auto" else pooling
            query_instruction = saved.query_instruction if query_instruction is None else query_instruction
            passage_instruction = saved.passage_instruction if passage_instruction is None else passage_instruction
        return {"pooling": pooling, "query_instruction": query_instruction,
                "passage_instruction": passage_instruction, "query_max_length": config.query_max_len,
                "passage_max_length": config.passage_max_len}

    def _merge_init_adapter(self, init) -> None:
        """Full fine-tuning from a LoRA adapter: fold it into the base first. A QLoRA
        adapter belongs on the dequantized base, which ``embedrag merge`` builds."""
        from embedrag.engine.encoding.adapter_loading import merge_adapter
        from embedrag.engine.encoding.encoder import read_embedding_config

        saved = read_embedding_config(init.adapter)
        if saved is not None and (saved.extra or {}).get("finetune", {}).get("type") == "qlora":
            raise ConfigError(f"--init-from {init.adapter}: merge a QLoRA adapter first (embedrag merge), "
                              "then pass the merged folder")
        self.encoder.model = merge_adapter(self.encoder.model, init.adapter, init.model)

    def _finetune_record(self) -> dict[str, Any]:
        config = self.config
        record: dict[str, Any] = {"type": config.finetune_type, "base_model": None,
                                  "quantization_bits": config.bits, "loss": config.loss,
                                  "temperature": config.temperature, "train_datasets": config.train_datasets}
        if config.attention_dropout is not None:
            record["attention_dropout"] = config.attention_dropout
        if config.loss == "margin-ranking":
            record["margin"] = config.margin
        if config.init_from:
            record["init_from"] = str(config.init_from)
        if config.finetune_type != "full":
            record.update(lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout)
        return record

    def _scheduler(self):
        from transformers import get_scheduler

        name = {"constant": "constant_with_warmup"}.get(self.config.scheduler, self.config.scheduler)
        warmup = int(round(self.config.warmup_proportion * self.total_updates))
        return get_scheduler(name, self.optimizer, num_warmup_steps=warmup,
                             num_training_steps=self.total_updates)
