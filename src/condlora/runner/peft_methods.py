"""The methods `condlora train` runs through the real `peft` library: LoRA (also with a frozen side), VeRA, FourierFT.

* `lora`, `lora-r1`, `lora-r2`: `peft.LoraConfig` at the run's r and alpha. `lora-frozen-a`, `lora-frozen-b`:
  PEFT's matrix of that side replaced by the seeded orthonormal draw this library's LoRA uses
  (`layers.init_pair`) and frozen: frozen A = `draw_matrix(r, d_in, "orthogonal", module_seed(seed, name))`,
  B zero; frozen B = `draw_matrix(d_out, r, "orthogonal", module_seed(seed, name, "B"))`, A zero.
* `vera`, `vera-r1024`, `fourierft`: the random parts of both methods come from the run's seed, so seeds differ
  as LoRA's and CondLoRA's do: VeRA's shared frozen A and B (`projection_prng_key`, saved with the adapter) and
  FourierFT's frequencies (`random_loc_seed`). Everything else is PEFT's default (VeRA: d_initial 0.1;
  FourierFT: a normal-initialized spectrum). PEFT keeps VeRA's A and B and FourierFT's frequency indices as
  buffers, never as parameters, so only the per-layer vectors (VeRA) and spectral coefficients (FourierFT)
  train and count.

`peft_model` wraps `peft.get_peft_model` for every caller (`condlora bench` too): one clear error line where
PEFT cannot adapt the target modules. `merge_peft` merges any of these rows, also where PEFT 0.21's own
`merge_and_unload` fails.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError, require
from ..inject import linear_names
from ..layers import draw_matrix, module_seed
from ..serialization import PEFT_MODEL_PREFIX as PEFT_PREFIX
from .method_defaults import MethodSetup, method_defaults

if TYPE_CHECKING:
    from peft import PeftConfig

LORA_FROZEN = {"lora": None, "lora-frozen-a": "A", "lora-frozen-b": "B", "lora-r1": None, "lora-r2": None}
PEFT_METHODS = (*LORA_FROZEN, "vera", "vera-r1024", "fourierft")  # saved by PEFT's save_pretrained
PEFT_NAMES = {"LORA": "LoRA", "VERA": "VeRA", "FOURIERFT": "FourierFT"}


def add_peft(model: nn.Module, s: MethodSetup, saved: list[str]) -> nn.Module:
    """`model` wrapped by PEFT for method `s.method` (one of PEFT_METHODS); `saved`: head modules to save."""
    kind = "lora" if s.method in LORA_FROZEN else method_defaults(s.method).kind  # lora-frozen-a: kind itself
    require("peft", f"method '{s.method}' (real PEFT)", "peft")
    model = peft_model(model, peft_config(kind, s, saved), s.target_modules)
    if LORA_FROZEN.get(s.method) is not None:
        _freeze_sides(model, LORA_FROZEN[s.method], s.seed)
    return model


def peft_config(kind: str, s: MethodSetup, saved: list[str]) -> PeftConfig:
    """The `peft.LoraConfig`, `peft.VeraConfig` or `peft.FourierFTConfig` of `s` (kind: lora, vera, fourierft)."""
    common = {"task_type": "SEQ_CLS", "target_modules": list(s.target_modules), "modules_to_save": list(saved)}
    d = method_defaults(s.method)
    if kind == "lora":
        from peft import LoraConfig

        return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, bias="none", **common)
    if kind == "vera":
        from peft import VeraConfig

        return VeraConfig(r=s.r if s.r is not None else d.r, vera_dropout=s.dropout, projection_prng_key=s.seed,
                          save_projection=True, **common)
    if s.dropout:
        raise ConfigError(f"FourierFT has no dropout; got dropout={s.dropout}")
    from peft import FourierFTConfig

    return FourierFTConfig(n_frequency=s.n_frequency or d.n_frequency, scaling=s.fourier_scaling or d.fourier_scaling,
                           random_loc_seed=s.seed, **common)


def peft_model(model: nn.Module, config, target_modules: list[str]) -> nn.Module:
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


def merge_peft(model: nn.Module) -> nn.Module:
    """`model.merge_and_unload()` of a PEFT model, its saved modules unwrapped first: PEFT 0.21's VeRA and
    FourierFT fail on a saved module without a `.weight` of its own (BERT's pooler, roberta-base's head;
    huggingface/peft#3114). Unwrapping keeps the trained copy, as `merge_and_unload` would."""
    from peft.utils import ModulesToSaveWrapper

    done: list[str] = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, ModulesToSaveWrapper) or any(name.startswith(d + ".") for d in done):
            continue
        active = module.active_adapter if isinstance(module.active_adapter, str) else module.active_adapter[0]
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, module.modules_to_save[active])
        done.append(name)
    return model.merge_and_unload()


def _freeze_sides(model: nn.Module, frozen: str, seed: int) -> None:
    """Every PEFT LoRA pair of `model` set like `layers.init_pair`, its `frozen` side ("A" or "B") frozen."""
    for name, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(lora_a, nn.ModuleDict) and "default" in lora_a:
            _freeze_side(lora_a["default"].weight, lora_b["default"].weight, frozen, seed,
                         name.removeprefix(PEFT_PREFIX))


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
