"""condlora with the real transformers.Trainer, AdapterTrainer and accelerate on a tiny BERT classifier.

Adapter-only save_model and checkpoints, exact resume, reload in a fresh base, export to real PEFT,
save_pretrained never writing a folder that reloads wrong, the best checkpoint, accelerate state round-trip.
"""

import copy
import json
import os
import pickle
import shutil

import pytest
import torch
from accelerate import Accelerator
from peft import AutoPeftModelForSequenceClassification, PeftModel
from safetensors.torch import load_file
from transformers import BertForSequenceClassification, Trainer, TrainingArguments, default_data_collator

from condlora import (
    AdapterConfig,
    AdapterLoadError,
    AdapterTrainer,
    CondLoRAError,
    TargetError,
    adapter_layers,
    apply_adapter,
    export_peft_lora,
    load_adapter,
    merge_and_unload,
)
from condlora.serialization import adapter_state_dict, peft_task_type
from conftest import logits, perturb, tiny_bert, tiny_gpt2, tiny_llama

CHECKPOINT_FILES = {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "rng_state.pth",
                    "scheduler.pt", "trainer_state.json", "training_args.bin"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny BERT saved with save_pretrained: the 'pretrained' base every model here starts from."""
    path = tmp_path_factory.mktemp("base")
    tiny_bert().save_pretrained(path)
    return str(path)


def adapted(base_dir, r=4):
    """The base loaded from its folder with a CondLoRA adapter on query/value and a trained head."""
    model = BertForSequenceClassification.from_pretrained(base_dir)
    return apply_adapter(model, AdapterConfig(r=r, modules_to_save=["classifier"]))


def rows(n=32):
    """n fixed examples of 12 token ids and a 0/1 label."""
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 100, (12,), generator=g), "labels": i % 2} for i in range(n)]


def args(out, **kw):
    """TrainingArguments for 6 quick CPU steps with a checkpoint every 3."""
    kw = {"max_steps": 6, "save_steps": 3, **kw}
    return TrainingArguments(str(out), per_device_train_batch_size=8, learning_rate=1e-2, report_to=[],
                             use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1, **kw)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def run(base_dir, tmp_path_factory):
    """A stock Trainer run of 6 steps (checkpoints at 3 and 6), then save_model; left in eval mode."""
    out = tmp_path_factory.mktemp("run")
    model = adapted(base_dir)
    trainer = Trainer(model=model, args=args(out / "run"), train_dataset=rows())
    trainer.train()
    trainer.save_model(str(out / "final"))
    return model.eval(), out


def test_save_model_holds_only_the_adapter(run):
    model, out = run
    assert set(os.listdir(out / "final")) == {"adapter_config.json", "adapter_model.safetensors", "training_args.bin"}
    file = out / "final" / "adapter_model.safetensors"
    saved, expected = load_file(file), adapter_state_dict(model)
    assert set(saved) == set(expected)  # the generators and the head: no base weight, no renamed copy
    assert all(torch.equal(saved[k], expected[k]) for k in saved)
    assert not any("embeddings" in k or ".base." in k or k.endswith("query.weight") for k in saved)
    adapter_bytes = sum(t.numel() * t.element_size() for t in saved.values())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert os.path.getsize(file) < adapter_bytes + 4096 < model_bytes / 10


def test_checkpoints_hold_the_adapter_and_trainer_state(run):
    model, out = run
    for step in (3, 6):
        assert set(os.listdir(out / "run" / f"checkpoint-{step}")) == CHECKPOINT_FILES
    last = load_file(out / "run" / "checkpoint-6" / "adapter_model.safetensors")
    assert all(torch.equal(last[k], v) for k, v in adapter_state_dict(model).items())


def test_resume_ends_where_the_uninterrupted_run_ends(run, base_dir, tmp_path, ids):
    model, out = run
    shutil.copytree(out / "run" / "checkpoint-3", tmp_path / "run" / "checkpoint-3")  # a crash after step 3
    with pytest.raises(ValueError, match="checkpoint index"):  # the stock Trainer cannot read it back
        Trainer(model=adapted(base_dir), args=args(tmp_path / "run"), train_dataset=rows()).train(
            resume_from_checkpoint=True)
    resumed = adapted(base_dir)
    AdapterTrainer(model=resumed, args=args(tmp_path / "run"), train_dataset=rows()).train(resume_from_checkpoint=True)
    final, again = trainable(model), trainable(resumed)
    assert set(final) == set(again) and all(torch.equal(final[n], again[n]) for n in final)
    assert torch.equal(logits(resumed.eval(), ids), logits(model, ids))
    with pytest.raises(TargetError, match="no condlora adapter"):
        AdapterTrainer(model=BertForSequenceClassification.from_pretrained(base_dir), args=args(tmp_path / "run"),
                       train_dataset=rows()).train(resume_from_checkpoint=True)
    with pytest.raises(AdapterLoadError, match="differs from this model's in r"):
        AdapterTrainer(model=adapted(base_dir, r=8), args=args(tmp_path / "run"), train_dataset=rows()).train(
            resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))


def test_reload_in_a_fresh_base_and_export_to_peft(run, base_dir, tmp_path, ids):
    model, out = run
    expected = logits(model, ids)
    torch.manual_seed(1234)
    fresh = load_adapter(BertForSequenceClassification.from_pretrained(base_dir), out / "final").eval()
    torch.testing.assert_close(logits(fresh, ids), expected, rtol=0, atol=1e-6)
    export_peft_lora(fresh, tmp_path / "peft")
    peft_cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert peft_cfg["task_type"] == "SEQ_CLS" and peft_cfg["base_model_name_or_path"] == base_dir
    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "peft").eval()
    torch.testing.assert_close(logits(peft_model, ids), expected, rtol=1e-5, atol=1e-5)


def test_export_records_the_name_the_user_gave(base_dir, tmp_path):
    model = BertForSequenceClassification.from_pretrained(base_dir)
    apply_adapter(model, AdapterConfig(r=4, base_model_name_or_path="my-org/my-bert"))  # kept, not overwritten
    export_peft_lora(model, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "my-org/my-bert")
    export_peft_lora(model, tmp_path / "b", base_model_name_or_path="bert-base-uncased", task_type="SEQ_CLS")
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "bert-base-uncased")


def test_peft_task_type_from_the_model_class():
    from transformers import BertConfig, BertModel

    assert peft_task_type(tiny_bert()) == "SEQ_CLS"
    assert peft_task_type(tiny_llama()) == "CAUSAL_LM" and peft_task_type(tiny_gpt2()) == "CAUSAL_LM"
    assert peft_task_type(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=32))) is None


def test_our_folder_is_refused_by_peft_and_from_pretrained_naming_the_way(run, base_dir):
    _, out = run
    with pytest.raises(KeyError, match="export_peft_lora"):
        PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(base_dir), out / "final")
    with pytest.raises(KeyError, match="condlora.load_adapter"):
        BertForSequenceClassification.from_pretrained(out / "final")


def test_save_pretrained_saves_the_adapter_never_a_wrong_model(base_dir, tmp_path, ids):
    model = adapted(base_dir)
    perturb(model)
    expected = logits(model, ids)
    model.save_pretrained(tmp_path / "a")
    assert set(os.listdir(tmp_path / "a")) == {"adapter_config.json", "adapter_model.safetensors"}
    torch.testing.assert_close(logits(load_adapter(tiny_bert(), tmp_path / "a"), ids), expected, rtol=0, atol=1e-6)
    with pytest.raises(CondLoRAError, match="save_adapter"):
        model.save_pretrained(tmp_path / "b", state_dict=model.state_dict())
    merge_and_unload(model).save_pretrained(tmp_path / "merged")  # a plain, full model again
    merged = BertForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, ids), expected, rtol=1e-5, atol=1e-5)
    copied = apply_adapter(tiny_bert(), AdapterConfig(r=4))
    for twin in (pickle.loads(pickle.dumps(copied)), copy.deepcopy(copied)):  # the hook follows the copy
        twin.save_pretrained(tmp_path / "twin")
        assert set(os.listdir(tmp_path / "twin")) == {"adapter_config.json", "adapter_model.safetensors"}
        assert twin.save_pretrained.args[0] is twin
        shutil.rmtree(tmp_path / "twin")
    nameless = apply_adapter(tiny_bert(), AdapterConfig(r=4))  # built from a config: no base name to follow
    nameless.save_pretrained(tmp_path / "c")
    with pytest.raises(KeyError):
        BertForSequenceClassification.from_pretrained(tmp_path / "c")


def test_module_surgery_leaves_save_pretrained_to_the_public_layer():
    from condlora.inject import inject_adapter, remove_adapter

    model = inject_adapter(tiny_bert(), AdapterConfig(r=4))  # surgery alone: the class's own save_pretrained
    assert "save_pretrained" not in vars(model) and next(adapter_layers(model), None) is not None
    remove_adapter(model)
    hooked = apply_adapter(tiny_bert(), AdapterConfig(r=4))
    assert vars(hooked)["save_pretrained"].args == (hooked,)
    assert "save_pretrained" not in vars(merge_and_unload(hooked))


def test_load_best_model_at_end(base_dir, tmp_path):
    model = adapted(base_dir)
    best_args = dict(max_steps=6, save_steps=2, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                     metric_for_best_model="eval_loss", greater_is_better=True)  # the worst loss: not the last step
    trainer = AdapterTrainer(model=model, args=args(tmp_path / "run", **best_args), train_dataset=rows(),
                             eval_dataset=rows(8))
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-6")
    saved, now = load_file(os.path.join(best, "adapter_model.safetensors")), adapter_state_dict(model)
    assert all(torch.equal(saved[k], now[k]) for k in saved)
    stock = Trainer(model=adapted(base_dir), args=args(tmp_path / "stock", **best_args), train_dataset=rows(),
                    eval_dataset=rows(8))
    with pytest.raises(FileNotFoundError):  # the stock Trainer looks for a full model: use AdapterTrainer
        stock.train()


def prepared(base_dir):
    """A model and AdamW over its trainable parameters, through Accelerator.prepare."""
    model = adapted(base_dir).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    accelerator = Accelerator(cpu=True)
    return accelerator, *accelerator.prepare(model, optimizer)


def accelerate_step(accelerator, model, optimizer, batch):
    accelerator.backward(model(**batch).loss)
    optimizer.step()
    optimizer.zero_grad()


def test_accelerate_save_state_and_load_state(base_dir, tmp_path):
    batch = default_data_collator(rows(8))
    accelerator, model, optimizer = prepared(base_dir)
    for _ in range(3):
        accelerate_step(accelerator, model, optimizer, batch)
    accelerator.save_state(str(tmp_path / "state"))
    saved = load_file(tmp_path / "state" / "model.safetensors")
    assert sum(k.endswith("theta_B") for k in saved) == 2  # one generator per module type, stored once
    accelerate_step(accelerator, model, optimizer, batch)

    torch.manual_seed(99)
    accelerator2, model2, optimizer2 = prepared(base_dir)
    accelerator2.load_state(str(tmp_path / "state"))
    assert all(torch.equal(saved[k], v) for k, v in model2.state_dict().items() if k in saved)
    gens = model2.condlora_generators
    assert all(any(layer.generator is g for g in gens.values()) for _, layer in adapter_layers(model2))
    accelerate_step(accelerator2, model2, optimizer2, batch)  # restored RNG: the same dropout as the first run
    one, two = trainable(model), trainable(model2)
    assert all(torch.equal(one[n], two[n]) for n in one)
