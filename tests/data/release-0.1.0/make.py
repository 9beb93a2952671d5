"""Write the adapter folders of this directory with the condlora release that is installed or on PYTHONPATH.

The files here were written by condlora 0.1.0; tests/test_compat.py loads them with the current code and
checks the logits stored beside each adapter. To make such a set for a later release, copy this folder to
tests/data/release-<version>/ and run `PYTHONPATH=src python tests/data/release-<version>/make.py` there.
The base model is a 2-layer, width-32 BERT whose every weight is drawn here from a seeded generator, so
it does not depend on how a transformers version initialises a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# folder name -> AdapterConfig fields
VARIANTS = {
    "condlora-general": {"method": "condlora", "cond_form": "general"},
    "condlora-paper": {"method": "condlora", "cond_form": "paper"},
    "lora-frozen-a": {"method": "lora", "train_a": False},
}


def base_model() -> torch.nn.Module:
    """The tiny BERT classifier every adapter here was made for (weights drawn from a fixed seed)."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    model = BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(2024)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if name.endswith("LayerNorm.weight") else 0.0))
    return model


def input_ids() -> torch.Tensor:
    """The batch the stored logits were computed on."""
    return torch.randint(1, 100, (2, 10), generator=torch.Generator().manual_seed(7))


def make(folder: str, fields: dict) -> None:
    """Apply, perturb every trainable tensor, save the adapter and the logits it gives."""
    from condlora import AdapterConfig, apply_adapter, save_adapter

    cfg = AdapterConfig(r=4, alpha=8.0, target_modules=["query", "value"], modules_to_save=["classifier"], seed=3,
                        **fields)
    model = apply_adapter(base_model(), cfg)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * (5.0 if cfg.method == "condlora" else 0.3))
        logits = model(input_ids=input_ids()).logits
    save_adapter(model, HERE / folder)
    (HERE / folder / "logits.json").write_text(json.dumps(logits.tolist()) + "\n", encoding="utf-8")


if __name__ == "__main__":
    for name, fields in VARIANTS.items():
        make(name, fields)
