"""The fine-tuning methods of `condlora train`: real PEFT LoRA, CondLoRA, their frozen-A variants, full, head.

* `lora`, `lora-frozen-a`: the `peft` library's `LoraConfig` + `get_peft_model` (the baseline). For
  frozen A, PEFT's A is replaced by the same seeded orthonormal draw this library's frozen-A LoRA uses
  (`layers.draw_matrix(r, d_in, "orthogonal", module_seed(seed, name))`) and frozen; only B and the head train.
* `condlora`, `condlora-frozen-a`: `condlora.apply_adapter` (one shared generator per module type).
* `full`: every weight trains. `head`: only the classification head trains.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..config import AdapterConfig
from ..errors import ConfigError, require
from ..fileio import replace_dir
from ..inject import apply_adapter, linear_names
from ..io import PREFIX as PEFT_PREFIX
from ..io import export_peft_lora, save_adapter, write_safetensors
from ..layers import draw_matrix, module_seed
from .models import head_module_names

METHODS = ("lora", "condlora", "lora-frozen-a", "condlora-frozen-a", "full", "head")
ADAPTER_METHODS = METHODS[:4]


def setup_method(model: nn.Module, method: str, r: int, alpha: float, dropout: float,
                 target_modules: list[str], seed: int, cond_form: str = "auto") -> nn.Module:
    """Prepare `model` for `method`: add the adapter and set exactly the trainable parameters.

    `cond_form` is CondLoRA's form ("auto", "paper" or "general"; see `AdapterConfig`); LoRA ignores it.
    """
    heads = head_module_names(model)
    if method in ("lora", "lora-frozen-a"):
        return _peft_lora(model, r, alpha, dropout, target_modules, heads, seed, frozen_a=method != "lora")
    if method in ("condlora", "condlora-frozen-a"):
        cfg = AdapterConfig(method="condlora", r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                            cond_form=cond_form, train_a=method == "condlora", seed=seed, modules_to_save=heads)
        return apply_adapter(model, cfg)
    if method == "full":
        return model.requires_grad_(True)
    if method != "head":
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    freeze_all_but_head(model)
    return model


def freeze_all_but_head(model: nn.Module) -> list[str]:
    """Freeze every parameter except the classification head's; returns the head's module names."""
    heads = head_module_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in heads)
    return heads


def _peft_lora(model: nn.Module, r: int, alpha: float, dropout: float, target_modules: list[str],
               heads: list[str], seed: int, frozen_a: bool) -> nn.Module:
    require("peft", "method 'lora' (real PEFT LoRA)", "peft")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules), modules_to_save=heads, bias="none")
    try:
        with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated property; harmless
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError(f"peft could not apply LoRA with target_modules {target_modules} ({str(e).split('.')[0]}); "
                          f"linear modules in this model: {', '.join(linear_names(model))}") from None
    if frozen_a:
        for name, module in model.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if isinstance(lora_a, nn.ModuleDict) and "default" in lora_a:
                weight = lora_a["default"].weight
                base_name = name.removeprefix(PEFT_PREFIX)
                draw = draw_matrix(weight.shape[0], weight.shape[1], "orthogonal", module_seed(seed, base_name))
                with torch.no_grad():
                    weight.copy_(draw.to(weight.dtype))
                weight.requires_grad_(False)
    return model


def is_head_param(name: str, heads: list[str]) -> bool:
    """Whether parameter `name` belongs to the classification head (PEFT's modules_to_save copy included)."""
    parts = name.removeprefix(PEFT_PREFIX).split(".")
    return parts[0] in heads or "modules_to_save" in parts


def parameter_counts(model: nn.Module, heads: list[str]) -> dict[str, int]:
    """Trainable parameters: `trainable` (adapter, or body for full fine-tuning; head excluded) and `head`."""
    seen: set[int] = set()
    counts = {"trainable": 0, "head": 0}
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        counts["head" if is_head_param(name, heads) else "trainable"] += p.numel()
    return counts


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of `model` by parameter name (a checkpoint holds exactly these)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_best(model: nn.Module, method: str, output_dir: Path) -> list[str]:
    """Write the best model's adapter: condlora format + PEFT export, PEFT format for lora, weights otherwise."""
    if method.startswith("condlora"):
        replace_dir(output_dir / "best_adapter", lambda tmp: save_adapter(model, tmp))
        replace_dir(output_dir / "best_adapter_peft", lambda tmp: export_peft_lora(model, tmp))
        return ["best_adapter", "best_adapter_peft"]
    if method.startswith("lora"):
        replace_dir(output_dir / "best_adapter", lambda tmp: model.save_pretrained(tmp))
        return ["best_adapter"]
    if method == "full":
        replace_dir(output_dir / "best_model", lambda tmp: model.save_pretrained(tmp))
        return ["best_model"]
    head = trainable_state(model)
    replace_dir(output_dir / "best_head", lambda tmp: write_safetensors(tmp / "head.safetensors", head))
    return ["best_head"]
