"""The fine-tuning methods of `condlora train`: real PEFT LoRA, CondLoRA, their one-side-frozen variants, full, head.

* `lora`, `lora-frozen-a`, `lora-frozen-b`: the `peft` library's `LoraConfig` + `get_peft_model` (the
  baseline); a frozen side is the seeded orthonormal draw this library's LoRA uses (see `peft_methods`).
* `condlora`, `condlora-frozen-a`, `condlora-frozen-b`: `condlora.apply_adapter` (one shared generator per
  module type) in the form `cond_form` asks for; `condlora-general`: CondLoRA in the general form always.
* `lora-r1`, `lora-r2`: PEFT LoRA at rank 1 and 2, alpha = r. `vera`, `vera-r1024`: PEFT VeRA at r = 256 and
  1024 (`peft.VeraConfig`; its shared A, B are drawn from the run's seed). `fourierft`: PEFT FourierFT
  (`peft.FourierFTConfig`; its frequencies are drawn from the run's seed). Sizes and LRs: `method_defaults`;
  the PEFT set-up of every PEFT method: `peft_methods`.
* `full`: every weight trains. `head`: only the classification head trains.

Every method trains the same classification head (`head`: "dense" or "linear", see
`models.head_module_names`); adapters save it (and any frozen head module around it) with the adapter.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..config import AdapterConfig
from ..errors import ConfigError
from ..fileio import replace_dir
from ..inject import count_parameters
from ..model import apply_adapter
from ..serialization import PEFT_MODEL_PREFIX as PEFT_PREFIX
from ..serialization import export_peft_lora, save_adapter, write_safetensors
from .method_defaults import MethodSetup
from .models import head_module_names, head_save_names
from .names import METHODS as RUN_METHODS  # every --method of `condlora train`, by its stored name
from .peft_methods import PEFT_METHODS, add_peft

CONDLORA_SIDES = {"condlora": (True, True), "condlora-frozen-a": (False, True), "condlora-frozen-b": (True, False),
                  "condlora-general": (True, True)}  # (train_a, train_b)


def setup_method(model: nn.Module, s: MethodSetup) -> nn.Module:
    """Prepare `model` for method `s.method`: add the adapter and set exactly the trainable parameters."""
    heads, saved = head_module_names(model, s.head), head_save_names(model, s.head)
    if s.method in PEFT_METHODS:
        model = add_peft(model, s, saved)
    elif s.method in CONDLORA_SIDES:
        train_a, train_b = CONDLORA_SIDES[s.method]
        form = "general" if s.method == "condlora-general" else s.cond_form
        cfg = AdapterConfig(method="condlora", r=s.r, alpha=s.alpha, dropout=s.dropout,
                            target_modules=s.target_modules, cond_form=form, train_a=train_a, train_b=train_b,
                            seed=s.seed, modules_to_save=saved)
        model = apply_adapter(model, cfg)
    elif s.method == "full":
        return model.requires_grad_(True)
    elif s.method == "head":
        freeze_all_but_head(model, s.head)
        return model
    else:
        raise ConfigError(f"method must be one of {', '.join(RUN_METHODS)}; got {s.method!r}")
    _train_only_head(model, heads, saved)
    return model


def freeze_all_but_head(model: nn.Module, head: str = "linear") -> list[str]:
    """Freeze every parameter except the classification head's; returns the head's module names.

    The default `linear` keeps what `condlora bench` has always measured; `condlora train` passes its --head.
    """
    heads = head_module_names(model, head)
    for name, p in model.named_parameters():
        p.requires_grad_(is_head_param(name, heads))
    return heads


def _train_only_head(model: nn.Module, heads: list[str], saved: list[str]) -> None:
    """Of the saved head modules (and PEFT's trainable copies), only the parameters of `heads` train."""
    for name, p in model.named_parameters():
        if p.requires_grad and (".modules_to_save." in name or _under(_base_name(name), saved)):
            p.requires_grad_(_under(_base_name(name), heads))


def _base_name(name: str) -> str:
    """A parameter's name in the base model: PEFT's prefix and wrapper levels removed."""
    name = name.removeprefix(PEFT_PREFIX)
    return re.sub(r"\.(modules_to_save\.[^.]+|original_module)(?=\.)", "", name)


def _under(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(f"{m}.") for m in modules)


def is_head_param(name: str, heads: list[str]) -> bool:
    """Whether parameter `name` belongs to the head modules `heads` (PEFT's modules_to_save copy included)."""
    return _under(_base_name(name), heads)


def parameter_counts(model: nn.Module, heads: list[str]) -> dict[str, int]:
    """Trainable parameters: `trainable` (adapter, or body for full fine-tuning; head excluded) and `head`."""
    counts = count_parameters(model, other=lambda name: is_head_param(name, heads))
    return {"trainable": counts["adapter"], "head": counts["other"]}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of `model` by parameter name (a checkpoint holds exactly these)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_best(model: nn.Module, method: str, output_dir: Path) -> list[str]:
    """Write the best model's adapter: condlora format + PEFT export, PEFT format for lora, weights otherwise."""
    if method.startswith("condlora"):
        replace_dir(output_dir / "best_adapter", lambda tmp: save_adapter(model, tmp))
        replace_dir(output_dir / "best_adapter_peft", lambda tmp: export_peft_lora(model, tmp))
        return ["best_adapter", "best_adapter_peft"]
    if method in PEFT_METHODS:
        replace_dir(output_dir / "best_adapter", lambda tmp: model.save_pretrained(tmp))
        return ["best_adapter"]
    if method == "full":
        replace_dir(output_dir / "best_model", lambda tmp: model.save_pretrained(tmp))
        return ["best_model"]
    head = trainable_state(model)
    replace_dir(output_dir / "best_head", lambda tmp: write_safetensors(tmp / "head.safetensors", head))
    return ["best_head"]
