"""Fine-tune a LLaMA-style causal LM with CondLoRA and the stock Hugging Face Trainer, then generate.

CondLoRA adapts every attention and MLP projection in its default, general form (A = θ_A·W0,
B = W0·θ_B), which fits the rectangular k_proj / v_proj of grouped-query attention and the MLP as well as
the square q_proj / o_proj. Greedy generation gives the same tokens adapted, merged
(`merge_and_unload`) and exported to a plain PEFT LoRA loaded by real `peft`.

Offline, CPU, a few seconds: the "pretrained" model is a tiny LLaMA built from a config and saved to a
folder, with a word-level tokenizer built here. For a real model change the one line marked below.

    python examples/train_causal_lm.py [OUTPUT_DIR]
"""

import sys
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from condlora import AdapterConfig, apply_adapter, export_peft_lora, merge_and_unload

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "out/causal_lm")
TEXT = ("the cat sat on the mat . the dog sat on the log . the cat saw the dog . "
        "the dog saw the cat . a bird sat on the dog . the cat ran to the mat . ") * 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_tiny_base(path: Path) -> str:
    """Save a random 2-layer LLaMA (GQA: 4 query heads, 2 key/value heads) and its tokenizer to `path`."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *sorted(set(TEXT.split()))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                            eos_token="</s>").save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=2, bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


BASE = make_tiny_base(OUT / "base")  # a real model instead: BASE = "HuggingFaceTB/SmolLM2-135M"
tokenizer = AutoTokenizer.from_pretrained(BASE)
model = apply_adapter(AutoModelForCausalLM.from_pretrained(BASE),
                      AdapterConfig(method="condlora", r=4, alpha=8, target_modules=TARGETS))

ids = tokenizer(TEXT)["input_ids"]
rows = [{"input_ids": ids[i:i + 16], "labels": ids[i:i + 16]} for i in range(0, len(ids) - 15, 16)]
args = TrainingArguments(OUT / "run", max_steps=30, per_device_train_batch_size=4, learning_rate=1e-2,
                         logging_steps=10, save_steps=30, report_to=[], use_cpu=True, seed=0)
trainer = Trainer(model=model, args=args, train_dataset=rows)
before = trainer.evaluate(rows)["eval_loss"]
trainer.train()
after = trainer.evaluate(rows)["eval_loss"]
print(f"loss on the text: {before:.3f} before, {after:.3f} after")
assert after < before
trainer.save_model(OUT / "adapter")  # adapter_config.json + adapter_model.safetensors: no base weights

prompt = tokenizer("the cat", return_tensors="pt")
settings = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
with torch.no_grad():
    adapted = model.eval().generate(**prompt, **settings)
    export_peft_lora(model, OUT / "peft")  # a plain PEFT LoRA folder (task_type CAUSAL_LM), exact
    merged = merge_and_unload(model).generate(**prompt, **settings)  # plain nn.Linear layers, W0 + ΔW
    peft_model = AutoPeftModelForCausalLM.from_pretrained(OUT / "peft").eval()  # loads BASE itself
    via_peft = peft_model.generate(**prompt, **settings)
print("generated:", tokenizer.decode(adapted[0]))
assert torch.equal(adapted, merged) and torch.equal(adapted, via_peft)
print("same tokens adapted, merged and through PEFT")
