"""A LLaMA-style causal LM (GQA, MLP) with CondLoRA on every projection, trained by the real Trainer.

The loss goes down; greedy generate gives the same tokens adapted, reloaded, merged and through real PEFT.
"""

import copy
import json
import os

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from condlora import AdapterConfig, apply_adapter, export_peft_lora, load_adapter, merge_and_unload
from condlora.serialization import adapter_state_dict

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT = ("the cat sat on the mat . the dog sat on the log . the cat saw the dog . "
        "the dog saw the cat . a bird sat on the dog . the cat ran to the mat . ")
VOCAB = {w: i for i, w in enumerate(["<pad>", "</s>", *sorted(set(TEXT.split()))])}
GREEDY = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}


def encode(text):
    return [VOCAB[w] for w in text.split()]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny LLaMA saved as the base, adapted, trained 20 steps by the stock Trainer and saved."""
    out = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(out / "base")
    model = apply_adapter(LlamaForCausalLM.from_pretrained(out / "base"),
                          AdapterConfig(method="condlora", r=4, target_modules=TARGETS, cond_form="auto"))
    ids = encode(TEXT * 4)
    rows = [{"input_ids": ids[i:i + 16], "labels": ids[i:i + 16]} for i in range(0, len(ids) - 15, 16)]
    args = TrainingArguments(str(out / "run"), max_steps=20, save_steps=10, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    before = trainer.evaluate(rows)["eval_loss"]
    trainer.train()
    after = trainer.evaluate(rows)["eval_loss"]
    trainer.save_model(str(out / "adapter"))
    return {"model": model.eval(), "out": out, "before": before, "after": after}


def test_general_form_on_rectangular_layers_and_loss_goes_down(lm):
    types = lm["model"].condlora_config.module_types
    forms = {t.rsplit(".", 1)[-1]: v["form"] for t, v in types.items()}
    assert forms == {"q_proj": "paper", "o_proj": "paper", "k_proj": "general", "v_proj": "general",
                     "gate_proj": "general", "up_proj": "general", "down_proj": "general"}
    assert types["model.layers.*.self_attn.k_proj"]["d_out"] == 32  # 2 of 4 heads: k/v are 32 x 64
    assert lm["after"] < lm["before"] - 0.1


def test_trainer_saves_only_the_adapter(lm):
    out = lm["out"]
    assert set(os.listdir(out / "adapter")) == {"adapter_config.json", "adapter_model.safetensors",
                                                 "training_args.bin"}
    assert {"adapter_config.json", "adapter_model.safetensors"} < set(os.listdir(out / "run" / "checkpoint-10"))
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert set(saved) == set(adapter_state_dict(lm["model"]))  # 7 generators' Θ_A, Θ_B only
    assert len(saved) == 14


def test_greedy_generate_same_adapted_reloaded_merged_and_through_peft(lm, tmp_path):
    model, out = lm["model"], lm["out"]
    prompt = torch.tensor([encode("the cat")])
    with torch.no_grad():
        adapted = model.generate(prompt, **GREEDY)
        base = LlamaForCausalLM.from_pretrained(out / "base").eval()
        assert not torch.allclose(base(prompt).logits, model(prompt).logits, atol=1e-3)  # training changed it
        reloaded = load_adapter(LlamaForCausalLM.from_pretrained(out / "base"), out / "adapter").eval()
        assert torch.equal(reloaded.generate(prompt, **GREEDY), adapted)
        export_peft_lora(reloaded, tmp_path / "peft")
        assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
        via_peft = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "peft").eval()
        assert torch.equal(via_peft.generate(input_ids=prompt, **GREEDY), adapted)
        merged = merge_and_unload(copy.deepcopy(model))
        assert not any("Cond" in type(m).__name__ for m in merged.modules())
        assert torch.equal(merged.generate(prompt, **GREEDY), adapted)
