"""Training on the tiny models: every fine-tune type learns, saves, reloads, resumes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embedrag import Encoder
from embedrag.engine.core.errors import ConfigError
from embedrag.engine.training.train import TrainCallback, train
from embedrag.engine.training.train_config import TrainConfig

TOPICS = ["apple", "river", "music", "stone", "cloud", "train", "green", "paper", "light",
          "sugar", "horse", "glass", "tiger", "ocean", "piano", "maple"]


def _toy_rows(seed=0):
    rng = random.Random(seed)
    rows = []
    for topic in TOPICS:
        others = rng.sample([t for t in TOPICS if t != topic], 3)
        rows.append({"query": f"tell me about {topic}",
                     "pos": [f"{topic} {topic}: all about the {topic}"],
                     "neg": [f"{o} {o}: all about the {o}" for o in others]})
    return rows


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    train_path = folder / "train.jsonl"
    train_path.write_text("\n".join(json.dumps(r) for r in _toy_rows(0)) + "\n")
    eval_path = folder / "eval.jsonl"
    eval_path.write_text("\n".join(json.dumps(r) for r in _toy_rows(1)[:8]) + "\n")
    return train_path, eval_path


class Recorder(TrainCallback):
    def __init__(self):
        self.losses, self.saved, self.metrics = [], [], []

    def on_step(self, log):
        self.losses.append(log["loss"])

    def on_save(self, path):
        self.saved.append(path.name)

    def on_evaluate(self, metrics):
        self.metrics.append(metrics)


def _config(model, data, out, finetune_type, **overrides):
    values = dict(train_datasets=[str(data)], output_dir=str(out), model=str(model),
                  finetune_type=finetune_type, batch_size=4, max_steps=20, neg_nums=2,
                  lr=1e-3 if finetune_type == "full" else 5e-3, warmup_proportion=0.0,
                  save_on_epoch_end=False, tensorboard=False, lora_dropout=0.0)
    values.update(overrides)
    return TrainConfig(**values)


FINETUNES = [("full", None), ("lora", None), ("qlora", 4), ("qlora", 8)]


@pytest.mark.parametrize("finetune_type, bits", FINETUNES, ids=["full", "lora", "qlora4", "qlora8"])
@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_qwen2"])
def test_loss_falls_and_final_reloads(model_fixture, finetune_type, bits, toy_data, tmp_path, request):
    model = request.getfixturevalue(model_fixture)
    recorder = Recorder()
    config = _config(model, toy_data[0], tmp_path / "out", finetune_type, quantization_bits=bits)
    result = train(config, recorder)
    assert result.global_step == 20 and len(recorder.losses) == 20
    first, last = np.mean(recorder.losses[:5]), np.mean(recorder.losses[-5:])
    assert last < 0.8 * first, (first, last)

    final = result.final_dir
    expected = {"full": "model.safetensors"}.get(finetune_type, "adapter_model.safetensors")
    assert (final / expected).is_file()
    assert (final / "training_config.json").is_file()
    settings = json.loads((final / "embedrag.json").read_text())
    assert settings["extra"]["finetune"]["type"] == finetune_type
    assert settings["extra"]["finetune"]["quantization_bits"] == bits
    vectors = Encoder.load(final, device="cpu").encode(["tell me about apple", "apple apple"])
    assert vectors.shape[0] == 2 and np.isfinite(vectors).all()


def _interrupt_after_first_epoch():
    class Interrupt(TrainCallback):
        def on_save(self, path):
            if path.name == "checkpoint-epoch-1":
                raise KeyboardInterrupt

    return Interrupt()


@pytest.mark.parametrize("finetune_type", ["lora", "full"])
def test_resume_reaches_the_same_weights(tiny_bert, toy_data, tmp_path, finetune_type):
    options = dict(max_steps=None, epochs=2, save_on_epoch_end=True, lora_dropout=0.1,
                   warmup_proportion=0.2)
    straight = train(_config(tiny_bert, toy_data[0], tmp_path / "a", finetune_type, **options))
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_bert, toy_data[0], tmp_path / "b", finetune_type, **options),
              _interrupt_after_first_epoch())
    assert not (tmp_path / "b" / "final").exists()
    resumed = train(_config(tiny_bert, toy_data[0], tmp_path / "b", finetune_type,
                            resume_from_checkpoint="latest", **options))
    assert resumed.global_step == straight.global_step == 8
    name = "model.safetensors" if finetune_type == "full" else "adapter_model.safetensors"
    a, b = load_file(straight.final_dir / name), load_file(resumed.final_dir / name)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    logs_a = json.loads((tmp_path / "a" / "detailed_training_logs.json").read_text())
    logs_b = json.loads((tmp_path / "b" / "detailed_training_logs.json").read_text())
    assert [r["loss"] for r in logs_a] == pytest.approx([r["loss"] for r in logs_b], abs=1e-6)


def test_validation_logs_tensorboard_and_best(tiny_bert, toy_data, tmp_path):
    recorder = Recorder()
    config = _config(tiny_bert, toy_data[0], tmp_path / "out", "lora", max_steps=None, epochs=3,
                     eval_dataset=str(toy_data[1]), save_on_epoch_end=True, tensorboard=True,
                     save_total_limit=2)
    result = train(config, recorder)
    out = tmp_path / "out"
    assert [m["step"] for m in recorder.metrics][0] == 0  # the baseline comes first
    assert len(recorder.metrics) == 4
    assert {"loss", "ndcg@10", "recall@10", "mrr@10"} <= set(recorder.metrics[0])
    assert result.best_dir == out / "best" and (out / "best" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-epoch-2", "checkpoint-epoch-3"]

    detailed = json.loads((out / "detailed_training_logs.json").read_text())
    step_rows = [r for r in detailed if "loss" in r]
    assert len(step_rows) == result.global_step
    assert {"step", "epoch", "loss", "lr", "grad_norm", "seconds"} <= set(step_rows[0])
    losses = json.loads((out / "training_losses.json").read_text())
    assert [r["epoch"] for r in losses] == [1, 2, 3]
    summary = json.loads((out / "training_summary_report.json").read_text())
    assert summary["config"]["finetune_type"] == "lora"
    assert summary["peak_memory_bytes"] > 0 and summary["wall_time_seconds"] > 0
    assert summary["best_metric"]["name"] == "ndcg@10"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]
    assert len(events.Scalars("train/loss")) == result.global_step
    assert "eval/ndcg@10" in events.Tags()["scalars"]


@pytest.mark.parametrize("finetune_type", ["full", "lora", "qlora"])
def test_gradient_checkpointing_is_on_after_preparation(tiny_qwen2, finetune_type):
    from embedrag.engine.training.finetune import (
        LoraSettings,
        load_training_encoder,
        prepare_for_training,
    )

    encoder = load_training_encoder(str(tiny_qwen2), finetune_type, device="cpu",
                                    quantization_bits=4 if finetune_type == "qlora" else None)
    model = prepare_for_training(encoder, finetune_type, LoraSettings(r=4, alpha=8, dropout=0.0),
                                 gradient_checkpointing=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing  # transformers 5 / 4
    # Frozen embeddings would cut the checkpointed graph: their output must still need grad.
    assert model.get_input_embeddings()(torch.tensor([[1, 2, 3]])).requires_grad


@pytest.mark.filterwarnings("error:.*gradient_checkpointing_enable.* is deprecated:FutureWarning")
@pytest.mark.parametrize("finetune_type", ["lora", "qlora"])
def test_gradient_checkpointing_still_trains_lora(tiny_qwen2, toy_data, tmp_path, finetune_type):
    config = _config(tiny_qwen2, toy_data[0], tmp_path / "out", finetune_type, max_steps=3,
                     gradient_checkpointing=True)
    result = train(config)
    weights = load_file(result.final_dir / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().max()) > 0 for v in lora_b)  # B starts at zero


@pytest.mark.parametrize("overrides, message", [
    ({"finetune_type": "full", "quantization_bits": 4}, "only applies to --finetune-type qlora"),
    ({"quantization_bits": 3}, "must be 4 or 8"),
    ({"batch_size": 0}, "--batch-size must be positive"),
    ({"temperature": 0.0}, "--temperature must be positive"),
    ({"early_stopping_patience": 2, "auto_validation": False}, "needs --eval-dataset"),
    ({"finetune_type": "adapter"}, "--finetune-type must be one of"),
])
def test_impossible_options_are_config_errors(overrides, message, tmp_path):
    values = {"finetune_type": "qlora", **overrides}
    config = TrainConfig(train_datasets=["x.jsonl"], output_dir=str(tmp_path), **values)
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_existing_output_dir_is_refused(tiny_bert, toy_data, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        train(_config(tiny_bert, toy_data[0], tmp_path / "out", "lora"))


def test_bf16_mixed_precision_and_cosine_schedule(tiny_bert, toy_data, tmp_path):
    recorder = Recorder()
    config = _config(tiny_bert, toy_data[0], tmp_path / "out", "lora", max_steps=6, mixed_precision="bf16",
                     scheduler="cosine", warmup_proportion=0.5, gradient_accumulation_steps=2)
    result = train(config, recorder)
    assert result.global_step == 6 and all(np.isfinite(recorder.losses))
    lrs = [row["lr"] for row in json.loads((tmp_path / "out" / "detailed_training_logs.json").read_text())]
    assert lrs[0] < lrs[2] and lrs[-1] < lrs[2]  # warm-up, then cosine decay


def test_weighted_datasets_and_dry_run(tiny_bert, toy_data, tmp_path):
    from embedrag.engine.training.train import dry_run

    config = _config(tiny_bert, toy_data[0], tmp_path / "out", "lora", max_steps=None, epochs=1,
                     train_datasets=[f"{toy_data[0]}:0.5", f"{toy_data[1]}:2"])
    report = dry_run(config)
    assert report.steps_per_epoch == (8 + 16) // 4  # half of 16 lines + twice 8 lines, batch 4
    assert report.first_batch["queries"][0] == 4
    assert not (tmp_path / "out").exists()


def test_default_temperature_is_the_one_the_model_was_trained_at(tiny_bert, toy_data, tmp_path):
    from embedrag.engine.training.train import dry_run, train
    from embedrag.engine.training.train_config import DEFAULT_TEMPERATURE, default_temperature

    assert DEFAULT_TEMPERATURE == 0.02  # the original train.py's
    assert default_temperature("all-MiniLM-L6-v2") == default_temperature("sentence-transformers/all-MiniLM-L6-v2")
    assert default_temperature(str(tiny_bert)) == 0.02
    assert default_temperature("/m/merged", None, "sentence-transformers/all-mpnet-base-v2") == 0.05
    assert default_temperature("/m/merged", {"temperature": 0.07}) == 0.07
    assert default_temperature("/m/merged", {"temperature": "hot"}) == 0.02

    def resolved(model, **overrides):
        config = _config(model, toy_data[0], tmp_path / "dry", "lora", **overrides)
        return dry_run(config).config["temperature"]

    assert resolved(tiny_bert) == 0.02
    assert resolved("all-MiniLM-L6-v2", query_max_len=16, passage_max_len=16) == 0.05  # the bundled model
    # A model embedrag trained records its temperature; training it further keeps it.
    train(_config(tiny_bert, toy_data[0], tmp_path / "first", "full", max_steps=1, temperature=0.07))
    trained = tmp_path / "first" / "final"
    assert json.loads((trained / "embedrag.json").read_text())["extra"]["finetune"]["temperature"] == 0.07
    assert resolved(trained) == 0.07
    assert resolved(trained, temperature=0.03) == 0.03  # an explicit value always wins


def test_validation_on_a_beir_folder(tiny_bert, toy_data, tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    rows = _toy_rows(1)[:6]
    corpus = {f"d{i}": r["pos"][0] for i, r in enumerate(rows)}
    corpus.update({f"x{i}": f"distractor {t} text" for i, t in enumerate(TOPICS)})
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": k, "title": "", "text": v})
                                                   for k, v in corpus.items()) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps({"_id": f"q{i}", "text": r["query"]})
                                                    for i, r in enumerate(rows)) + "\n")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(len(rows))))
    recorder = Recorder()
    config = _config(tiny_bert, toy_data[0], tmp_path / "out", "lora", max_steps=4, eval_steps=2,
                     eval_dataset=str(folder), eval_split="dev")
    train(config, recorder)
    assert [m["step"] for m in recorder.metrics] == [0, 2, 4]
    assert all(0 <= m["ndcg@10"] <= 1 for m in recorder.metrics)


def test_ctrl_c_saves_a_resumable_checkpoint(tiny_bert, toy_data, tmp_path):
    import os
    import signal

    from embedrag.engine.core.errors import TrainingInterrupted

    options = dict(max_steps=10, save_on_epoch_end=False, lora_dropout=0.1, warmup_proportion=0.2)
    straight = train(_config(tiny_bert, toy_data[0], tmp_path / "a", "lora", **options))

    class CtrlC(TrainCallback):
        def on_step(self, log):
            if log["step"] == 5:
                os.kill(os.getpid(), signal.SIGINT)  # what a terminal's Ctrl-C sends

    with pytest.raises(TrainingInterrupted, match="interrupted at step 5") as raised:
        train(_config(tiny_bert, toy_data[0], tmp_path / "b", "lora", **options), CtrlC())
    assert raised.value.exit_code == 130
    assert (tmp_path / "b" / "checkpoint-step-5" / "trainer_state.json").is_file()
    assert not (tmp_path / "b" / "final").exists()
    assert signal.getsignal(signal.SIGINT) is not None  # the previous handler is back
    resumed = train(_config(tiny_bert, toy_data[0], tmp_path / "b", "lora", resume_from_checkpoint="latest",
                            **options))
    assert resumed.global_step == straight.global_step == 10
    a = load_file(straight.final_dir / "adapter_model.safetensors")
    b = load_file(resumed.final_dir / "adapter_model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_qwen2"])
def test_attention_dropout_reaches_only_the_attention_probabilities(model_fixture, request):
    import torch

    from embedrag.engine.training.finetune import set_attention_dropout

    encoder = Encoder.load(request.getfixturevalue(model_fixture), device="cpu")
    model = encoder.model
    batch = encoder.pad(encoder.tokenize(["a first text to embed", "and a second, longer one here"])["input_ids"])
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    before = [m.p for m in dropouts]
    assert set_attention_dropout(model, 0.0) == 2  # one per layer
    changed = [b for b, m in zip(before, dropouts) if m.p != b]
    # BERT keeps the rate in a Dropout module of each layer (hidden dropout stays); Qwen2 in a float.
    assert changed == ([0.1, 0.1] if model_fixture == "tiny_bert" else [])
    for module in dropouts:
        module.p = 0.0  # now only attention dropout can make training mode random
    with torch.no_grad():
        reference = encoder.embed(batch)
        set_attention_dropout(model, 0.5)
        model.train()
        noisy = encoder.embed(batch)
        set_attention_dropout(model, 0.0)
        exact = encoder.embed(batch)
    assert not torch.allclose(noisy, reference, atol=1e-4)
    torch.testing.assert_close(exact, reference)


def test_training_turns_attention_dropout_off_and_keeps_the_models_config(tiny_bert, toy_data, tmp_path):
    from embedrag.engine.training.train import dry_run

    train(_config(tiny_bert, toy_data[0], tmp_path / "out", "full", max_steps=1))
    final = tmp_path / "out" / "final"
    assert json.loads((final / "embedrag.json").read_text())["extra"]["finetune"]["attention_dropout"] == 0.0
    # The saved model is the model: its own rate stays in its config.
    assert json.loads((final / "config.json").read_text())["attention_probs_dropout_prob"] == 0.1
    config = _config(tiny_bert, toy_data[0], tmp_path / "dry", "lora", attention_dropout=None)
    assert dry_run(config).config["attention_dropout"] is None


def test_passages_embedded_in_length_sorted_groups_give_the_same_step(tiny_bert, tmp_path):
    from embedrag.engine.training.train import _Trainer

    rows = _toy_rows()
    for i, row in enumerate(rows):  # passages of many lengths, so groups pad differently
        row["pos"] = [row["pos"][0] + " and more" * (i % 5)]
        row["neg"] = [text + " again" * ((i + j) % 7) for j, text in enumerate(row["neg"])]
    data = tmp_path / "varied.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = _Trainer(_config(tiny_bert, data, tmp_path / "out", "full", batch_size=6), None)
    trainer.load_data()
    trainer.build()
    trainer.module.eval()  # no dropout: both ways must compute the same thing
    batch = next(iter(trainer.sampler.batches(0)))
    lengths = {len(ids) for ids in trainer.encoder.tokenize(batch.passages, "passage")["input_ids"]}
    assert len(batch.passages) == 18 and len(lengths) > 1  # groups really differ in padding
    results = []
    for size in (None, 4):
        trainer.contrastive_step.passage_group_size = size
        trainer.optimizer.zero_grad(set_to_none=True)
        loss = trainer.contrastive_step(batch).loss
        results.append((loss, [p.grad.clone() for p in trainer.parameters]))
    (whole, whole_grads), (grouped, grouped_grads) = results
    assert abs(whole - grouped) < 1e-5
    for a, b in zip(whole_grads, grouped_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_attention_dropout_finds_the_rate_however_it_is_stored():
    from embedrag.engine.training.finetune import set_attention_dropout

    class IntRate(torch.nn.Module):  # a config that wrote 0 as an int
        def __init__(self):
            super().__init__()
            self.attention_dropout = 0

    class RemoteAttention(torch.nn.Module):  # trust_remote_code models
        def __init__(self):
            super().__init__()
            self.attention_dropout = torch.nn.Dropout(0.1)

    class MLP(torch.nn.Module):  # hidden dropout in a module that is not attention
        def __init__(self):
            super().__init__()
            self.dropout = torch.nn.Dropout(0.1)

    model = torch.nn.ModuleList([IntRate(), RemoteAttention(), MLP()])
    assert set_attention_dropout(model, 0.25) == 2
    assert model[0].attention_dropout == 0.25 and model[1].attention_dropout.p == 0.25
    assert model[2].dropout.p == 0.1
