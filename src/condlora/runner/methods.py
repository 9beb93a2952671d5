"""The fine-tuning methods of `condlora train`: real PEFT LoRA, CondLoRA, their one-side-frozen variants, full, head.

* `lora`, `lora-frozen-a`, `lora-frozen-b`: the `peft` library's `LoraConfig` + `get_peft_model` (the
  baseline). For a frozen side, PEFT's matrix is replaced by the same seeded orthonormal draw this library's
  LoRA uses (`layers.init_pair`) and frozen: frozen A = `draw_matrix(r, d_in, "orthogonal", module_seed(seed,
  name))`, B zero; frozen B = `draw_matrix(d_out, r, "orthogonal", module_seed(seed, name, "B"))`, A zero.
* `condlora`, `condlora-frozen-a`, `condlora-frozen-b`: `condlora.apply_adapter` (one shared generator per
  module type) in the form `cond_form` asks for; `condlora-general`: CondLoRA in the general form always.
* `lora-r1`, `lora-r2`: PEFT LoRA at rank 1 and 2, alpha = r. `vera`, `vera-r1024`: PEFT VeRA at r = 256 and
  1024 (`peft.VeraConfig`; its shared A, B are drawn from the run's seed). `fourierft`: PEFT FourierFT
  (`peft.FourierFTConfig`; its frequencies are drawn from the run's seed). Sizes and LRs: `method_defaults`.
* `full`: every weight trains. `head`: only the classification head trains.

Every method trains the same classification head (`head`: "dense" or "linear", see
`models.head_module_names`); adapters save it (and any frozen head module around it) with the adapter.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..config import AdapterConfig
from ..errors import ConfigError, require
from ..fileio import replace_dir
from ..inject import count_parameters, linear_names
from ..layers import draw_matrix, module_seed
from ..model import apply_adapter
from ..serialization import PEFT_MODEL_PREFIX as PEFT_PREFIX
from ..serialization import export_peft_lora, save_adapter, write_safetensors
from .method_defaults import ROWS, method_defaults
from .models import head_module_names, head_save_names

RUN_METHODS = ("lora", "condlora", "lora-frozen-a", "condlora-frozen-a", "lora-frozen-b", "condlora-frozen-b",
           "condlora-general", "full", "head", *ROWS)
LORA_FROZEN = {"lora": None, "lora-frozen-a": "A", "lora-frozen-b": "B", "lora-r1": None, "lora-r2": None}
PEFT_NAMES = {"LORA": "LoRA", "VERA": "VeRA", "FOURIERFT": "FourierFT"}
PEFT_METHODS = (*LORA_FROZEN, "vera", "vera-r1024", "fourierft")  # saved by PEFT's save_pretrained
CONDLORA_SIDES = {"condlora": (True, True), "condlora-frozen-a": (False, True), "condlora-frozen-b": (True, False),
                  "condlora-general": (True, True)}  # (train_a, train_b)


def setup_method(model: nn.Module, method: str, r: int | None, alpha: float | None, dropout: float,
                 target_modules: list[str], seed: int, cond_form: str = "auto", head: str = "dense",
                 n_frequency: int | None = None, fourier_scaling: float | None = None) -> nn.Module:
    """Prepare `model` for `method`: add the adapter and set exactly the trainable parameters.

    `cond_form` is CondLoRA's form ("auto", "paper" or "general"; see `AdapterConfig`); LoRA ignores it.
    `head` is the trainable classification head ("dense" or "linear"; see `models.head_module_names`).
    `n_frequency` and `fourier_scaling` are FourierFT's (its defaults when None); `r` is VeRA's rank too.
    """
    heads, saved = head_module_names(model, head), head_save_names(model, head)
    d = method_defaults(method)
    if method in LORA_FROZEN:
        model = _peft_lora(model, r, alpha, dropout, target_modules, saved, seed, LORA_FROZEN[method])
    elif d.kind in ("vera", "fourierft"):
        from .peft_rows import peft_config

        sizes = {"r": r if r is not None else d.r, "n_frequency": n_frequency or d.n_frequency,
                 "scaling": fourier_scaling or d.fourier_scaling}
        model = _get_peft_model(model, peft_config(d.kind, sizes, dropout, target_modules, saved, seed),
                                target_modules)
    elif method in CONDLORA_SIDES:
        train_a, train_b = CONDLORA_SIDES[method]
        form = "general" if method == "condlora-general" else cond_form
        cfg = AdapterConfig(method="condlora", r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                            cond_form=form, train_a=train_a, train_b=train_b, seed=seed, modules_to_save=saved)
        model = apply_adapter(model, cfg)
    elif method == "full":
        return model.requires_grad_(True)
    elif method == "head":
        freeze_all_but_head(model, head)
        return model
    else:
        raise ConfigError(f"method must be one of {', '.join(RUN_METHODS)}; got {method!r}")
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


def _peft_lora(model: nn.Module, r: int, alpha: float, dropout: float, target_modules: list[str],
               saved: list[str], seed: int, frozen: str | None) -> nn.Module:
    require("peft", "method 'lora' (real PEFT LoRA)", "peft")
    from peft import LoraConfig

    config = LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules), modules_to_save=list(saved), bias="none")
    model = _get_peft_model(model, config, target_modules)
    if frozen is not None:
        for name, module in model.named_modules():
            lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
            if isinstance(lora_a, nn.ModuleDict) and "default" in lora_a:
                _freeze_side(lora_a["default"].weight, lora_b["default"].weight, frozen, seed,
                             name.removeprefix(PEFT_PREFIX))
    return model


def _get_peft_model(model: nn.Module, config, target_modules: list[str]) -> nn.Module:
    """`peft.get_peft_model(model, config)`; a clear error where PEFT cannot adapt `target_modules`."""
    from peft import get_peft_model

    try:
        with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated property; harmless
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as e:
        name = PEFT_NAMES.get(config.peft_type.value, config.peft_type.value)
        raise ConfigError(f"peft could not apply {name} with target_modules {target_modules} "
                          f"({str(e).split('.')[0]}); linear modules in this model: "
                          f"{', '.join(linear_names(model))}") from None


def _freeze_side(a: torch.Tensor, b: torch.Tensor, frozen: str, seed: int, name: str) -> None:
    """Set one PEFT LoRA pair like `layers.init_pair`: the `frozen` side drawn and frozen, the other as LoRA's."""
    with torch.no_grad():
        if frozen == "A":  # B stays PEFT's zero
            a.copy_(draw_matrix(a.shape[0], a.shape[1], "orthogonal", module_seed(seed, name)).to(a.dtype))
            a.requires_grad_(False)
        else:
            b.copy_(draw_matrix(b.shape[0], b.shape[1], "orthogonal", module_seed(seed, name, "B")).to(b.dtype))
            a.zero_()
            b.requires_grad_(False)


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
