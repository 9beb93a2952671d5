"""Fine-tune a text classifier with CondLoRA and the Hugging Face Trainer, save the adapter, reload it.

Offline, CPU, a few seconds: the "pretrained" model is a tiny BERT built from a config and saved to a
folder, with a word-level tokenizer built here. For a real model change the one line marked below.

    python examples/trainer_classification.py [OUTPUT_DIR]      # then: python examples/predict_classification.py
"""

import json
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    TrainingArguments,
)

from condlora import AdapterConfig, AdapterTrainer, apply_adapter, load_adapter

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "out/classification")
DATA = [("a great and lovely film", 1), ("truly wonderful acting", 1), ("i loved every minute", 1),
        ("a fun and moving story", 1), ("boring and far too long", 0), ("a dull awful mess", 0),
        ("i hated the ending", 0), ("bad acting and a weak plot", 0)]


def make_tiny_base(path: Path) -> str:
    """Save a random 2-layer BERT classifier and its tokenizer to `path` (a stand-in for a hub model)."""
    words = sorted({w for text, _ in DATA for w in text.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(path)
    return str(path)


BASE = make_tiny_base(OUT / "base")  # a real model instead: BASE = "bert-base-uncased"
tokenizer = AutoTokenizer.from_pretrained(BASE)
model = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=2)
model = apply_adapter(model, AdapterConfig(method="condlora", r=4, alpha=8, target_modules=["query", "value"],
                                           modules_to_save=["classifier"]))

rows = [{**tokenizer(text, padding="max_length", max_length=8), "labels": label} for text, label in DATA]
args = TrainingArguments(OUT / "run", max_steps=40, per_device_train_batch_size=8, learning_rate=5e-2,
                         save_steps=20, logging_steps=10, report_to=[], use_cpu=True, seed=0)
trainer = AdapterTrainer(model=model, args=args, train_dataset=rows)  # a Trainer that can also resume
trainer.train()  # checkpoint-20/, checkpoint-40/: the adapter, optimizer and trainer state, no base weights
trainer.save_model(OUT / "adapter")  # adapter_config.json + adapter_model.safetensors: a few KB

# Reload: the base model plus the saved adapter predicts exactly what the trained model predicts.
fresh = load_adapter(AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=2), OUT / "adapter")
batch = tokenizer([text for text, _ in DATA], padding=True, return_tensors="pt")
with torch.no_grad():
    trained, reloaded = model.eval()(**batch).logits, fresh.eval()(**batch).logits
torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-6)
correct = sum(int(p == label) for p, (_, label) in zip(trained.argmax(-1).tolist(), DATA, strict=True))
print(f"accuracy on the training texts: {correct}/{len(DATA)}; reloaded adapter gives the same logits")
(OUT / "predictions.json").write_text(json.dumps({"texts": [t for t, _ in DATA], "logits": trained.tolist()}))
