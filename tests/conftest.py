"""Tiny random models built from configs (no downloads) shared by the tests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_bert(num_labels: int = 2, seed: int = 0):
    """A 2-layer, width-32 BERT classifier."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval()


def tiny_roberta(seed: int = 0):
    """A 2-layer, width-32 RoBERTa classifier."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=70, num_labels=3)
    return RobertaForSequenceClassification(cfg).eval()


def tiny_distilbert(seed: int = 0):
    """A 2-layer, width-32 DistilBERT classifier."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=64)
    return DistilBertForSequenceClassification(cfg).eval()


def tiny_gpt2(seed: int = 0):
    """A 2-layer, width-32 GPT-2 LM (Conv1D layers)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(seed: int = 0):
    """A 2-layer, width-32 LLaMA LM with grouped-query attention (rectangular k/v)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


MODELS = {
    "bert": (tiny_bert, ["query", "value"]),
    "roberta": (tiny_roberta, ["query", "value"]),
    "distilbert": (tiny_distilbert, ["q_lin", "v_lin"]),
    "gpt2": (tiny_gpt2, ["c_attn", "attn.c_proj", "mlp.c_proj"]),
    "llama": (tiny_llama, ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]),
}


# adapter variants of the parametrised tests: "condlora" takes the default (general) form, "condlora-auto" the
# paper's form on square layers (general elsewhere), each with A trained and frozen
VARIANTS = [("lora", True), ("lora", False), ("condlora", True), ("condlora", False), ("condlora-auto", True),
            ("condlora-auto", False)]


def adapter_config(method: str, **kw):
    """The AdapterConfig of a test variant: "condlora-<form>" sets cond_form."""
    from condlora import AdapterConfig

    if method.startswith("condlora-"):
        method, kw["cond_form"] = "condlora", method.split("-", 1)[1]
    return AdapterConfig(method=method, **kw)


def logits(model, ids):
    """Logits of `model` on token ids (no grad)."""
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def ids():
    """A fixed batch of token ids."""
    g = torch.Generator().manual_seed(123)
    return torch.randint(1, 100, (3, 12), generator=g)


def moved_after_sgd(model, ids, steps: int = 3, lr: float = 10.0) -> tuple[set[str], dict]:
    """Names of the parameters that changed after `steps` high-LR SGD steps on `ids`, and their values before."""
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=torch.tensor([0, 1, 1])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}, before


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(Exception):
    """Raised by `kill_at` to stop a training run mid-way, as a crash would."""


def kill_at(step: int):
    """An `on_step` hook for `train` that raises `Killed` after optimizer step `step`."""
    def hook(s: int) -> None:
        if s == step:
            raise Killed

    return hook


def perturb(model, side: str = "B") -> None:
    """Make every trainable `side` matrix (lora_B / theta_B, or lora_A / theta_A) non-zero, so the adapter
    changes the output; generated matrices scale with W0 (std 0.02 here), hence the larger theta draw."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f"lora_{side}" in name or f"theta_{side}" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if f"lora_{side}" in name else 5.0))
