"""Module surgery: find target modules by PEFT's rules, swap in adapter layers, and take them out again.

The public `apply_adapter` / `merge_and_unload` (in `condlora.model`) wrap `inject_adapter` / `remove_adapter`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import AdapterConfig
from .errors import AdapterLoadError, ConfigError, TargetError
from .layers import SUPPORTED_TYPES, ABGenerator, AdapterLayer, CondLoRALinear, InitSpec, LoRALinear, base_weight

GENERATORS_ATTR = "condlora_generators"
CONFIG_ATTR = "condlora_config"


def module_type(name: str) -> str:
    """A module's path with its layer index replaced by '*': 'encoder.layer.*.attention.self.query'."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def generator_key(type_name: str) -> str:
    """The `nn.ModuleDict` key of a module type's generator: 'encoder_layer_attention_self_query'."""
    return type_name.replace(".*", "").replace("*.", "").replace(".", "_")


def layer_index(name: str) -> int | None:
    """The first number in a module path (the transformer block), or None."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def name_matches(name: str, targets: list[str] | str) -> bool:
    """PEFT's rule: a string is a full-match regex; a list entry matches the full name or a '.suffix'."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(model: nn.Module, cfg: AdapterConfig) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs that `cfg` adapts; a clear error if none match or a match is unsupported."""
    found = []
    for name, module in model.named_modules():
        if not name or not name_matches(name, cfg.target_modules):
            continue
        if cfg.layers is not None and layer_index(name) not in cfg.layers:
            continue
        if isinstance(module, AdapterLayer):
            raise TargetError(f"{name} already has an adapter; apply_adapter was called twice")
        if not isinstance(module, SUPPORTED_TYPES):
            raise TargetError(
                f"target_modules matched {name} ({type(module).__name__}); only nn.Linear and Conv1D "
                "layers can be adapted"
            )
        found.append((name, module))
    if not found:
        raise TargetError(
            f"target_modules {cfg.target_modules!r}"
            + (f" with layers {cfg.layers}" if cfg.layers is not None else "")
            + f" matched no module; linear modules in this model: {', '.join(linear_names(model))}"
        )
    return found


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last name components of the model's adaptable layers, e.g. ['dense', 'query']."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, SUPPORTED_TYPES)})


@dataclass
class TypeInfo:
    """One module type: the shape its layers share, its CondLoRA form and its generator's key."""

    d_in: int
    d_out: int
    first: str  # its first module's name, for error messages
    form: str = ""
    key: str = ""

    def record(self) -> dict[str, Any]:
        """The entry of `AdapterConfig.module_types`."""
        return {"form": self.form, "d_in": self.d_in, "d_out": self.d_out, "key": self.key}


def _resolve_types(targets: list[tuple[str, nn.Module]], cfg: AdapterConfig) -> dict[str, TypeInfo]:
    """Per module type: its form, shape and generator key; checks r and shapes."""
    types: dict[str, TypeInfo] = {}
    for name, module in targets:
        d_out, d_in = base_weight(module).shape
        if cfg.r > min(d_in, d_out):
            raise ConfigError(f"r={cfg.r} is larger than {name}'s dimensions ({d_out} x {d_in})")
        t = types.setdefault(module_type(name), TypeInfo(d_in, d_out, name))
        if (t.d_in, t.d_out) != (d_in, d_out):
            raise TargetError(
                f"module type {module_type(name)} has layers of different shapes ({t.first}: "
                f"{t.d_out}x{t.d_in}, {name}: {d_out}x{d_in}); CondLoRA shares one generator per type"
            )
    for type_name, t in types.items():
        square = t.d_in == t.d_out
        if cfg.cond_form == "paper" and not square:
            raise ConfigError(
                f"cond_form='paper' needs square weights, but {t.first} is {t.d_out}x{t.d_in}; "
                "use cond_form='general' (or 'auto')"
            )
        t.form = cfg.cond_form if cfg.cond_form != "auto" else ("paper" if square else "general")
        t.key = generator_key(type_name)
    keys = [t.key for t in types.values()]
    if len(set(keys)) != len(keys):
        raise TargetError(f"module types {sorted(types)} give clashing generator names")
    return types


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def check_fingerprint(targets: list[tuple[str, nn.Module]], fingerprint: dict[str, list[int]]) -> None:
    """Raise a clear error naming the first module whose weight shape differs from the saved one."""
    found = {name: list(base_weight(m).shape) for name, m in targets}
    for name, shape in fingerprint.items():
        if name not in found:
            raise AdapterLoadError(f"adapter was made for a model with module {name}, which this model lacks")
        if found[name] != list(shape):
            raise AdapterLoadError(
                f"adapter does not fit this model: {name} is {found[name][0]}x{found[name][1]} here but "
                f"{shape[0]}x{shape[1]} in the adapter's base model"
            )
    extra = sorted(set(found) - set(fingerprint))
    if extra:
        raise AdapterLoadError(f"adapter was made for a different model: it has no weights for {extra[0]}")


def inject_adapter(model: nn.Module, cfg: AdapterConfig) -> nn.Module:
    """Swap the adapter layers described by `cfg` into `model` in place and freeze all else; returns `model`.

    Only the adapter's trainable matrices and the parameters of `cfg.modules_to_save` keep
    `requires_grad=True`. The resolved forms, shapes and a fingerprint are written back into `cfg`.
    """
    if hasattr(model, CONFIG_ATTR):
        raise TargetError("this model already has an adapter; call merge_and_unload first")
    targets = find_targets(model, cfg)
    if cfg.fingerprint is not None:
        check_fingerprint(targets, cfg.fingerprint)
    types = _resolve_types(targets, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    generators = _make_generators(types, cfg, base_weight(targets[0][1])) if cfg.method == "condlora" else {}
    for name, module in targets:
        layer = _make_layer(name, module, cfg, types, generators)
        _set_submodule(model, name, layer.train(module.training))
    if generators:
        model.add_module(GENERATORS_ATTR, nn.ModuleDict(generators).train(model.training))
        model.register_forward_pre_hook(begin_generation)
    _unfreeze_modules_to_save(model, cfg)
    cfg.module_types = {name: t.record() for name, t in types.items()}
    cfg.fingerprint = {name: list(base_weight(m).shape) for name, m in targets}
    if cfg.base_model_name_or_path is None:  # a name the user gave is kept (not a resolved local path)
        cfg.base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    object.__setattr__(model, CONFIG_ATTR, cfg)
    return model


def begin_generation(model: nn.Module, _args: tuple) -> None:
    """Forward pre-hook of a CondLoRA model: each generator builds its layers' A and B at once (in training).

    Before the forward, outside any layer, so gradient checkpointing recomputes a layer with the same inputs.
    """
    generators = getattr(model, GENERATORS_ATTR, None)
    for gen in generators.values() if generators is not None else ():
        gen.begin_forward()


def _make_generators(types: dict[str, TypeInfo], cfg: AdapterConfig, like: torch.Tensor) -> dict[str, ABGenerator]:
    return {
        t.key: ABGenerator(t.d_in, t.d_out, cfg.r, t.form, init=InitSpec.from_config(cfg), name=type_name,
                           dtype=like.dtype, device=like.device)
        for type_name, t in types.items()
    }


def _make_layer(name: str, module: nn.Module, cfg: AdapterConfig, types: dict[str, TypeInfo],
                generators: dict[str, ABGenerator]) -> AdapterLayer:
    if cfg.method == "lora":
        return LoRALinear(module, cfg.r, cfg.alpha, cfg.dropout, init=InitSpec.from_config(cfg), name=name)
    gen = generators[types[module_type(name)].key]
    return CondLoRALinear(module, gen, cfg.r, cfg.alpha, cfg.dropout)


def _unfreeze_modules_to_save(model: nn.Module, cfg: AdapterConfig) -> None:
    if not cfg.modules_to_save:
        return
    hits = [m for n, m in model.named_modules() if n and name_matches(n, cfg.modules_to_save)]
    if not hits:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_children()})
        raise TargetError(f"modules_to_save {cfg.modules_to_save} matched no module; top-level: {names}")
    for m in hits:
        for p in m.parameters():
            p.requires_grad_(True)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """The (name, layer) pairs of every adapter layer in `model`."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def get_config(model: nn.Module) -> AdapterConfig:
    """The config of the adapter applied to `model`; a clear error if there is none."""
    cfg = getattr(model, CONFIG_ATTR, None)
    if cfg is None:
        raise TargetError("this model has no condlora adapter; call apply_adapter or load_adapter first")
    return cfg


def merge_adapter(model: nn.Module) -> nn.Module:
    """Merge every adapter layer's ΔW into its base weight (a no-op for merged layers)."""
    for _, layer in adapter_layers(model):
        layer.merge()
    return model


def unmerge_adapter(model: nn.Module) -> nn.Module:
    """Restore every merged layer's exact W0."""
    for _, layer in adapter_layers(model):
        layer.unmerge()
    return model


def remove_adapter(model: nn.Module) -> nn.Module:
    """Merge ΔW into the base weights and put the original modules back (undoes `inject_adapter`)."""
    get_config(model)
    for name, layer in list(adapter_layers(model)):
        layer.merge()
        layer._w0 = None
        _set_submodule(model, name, layer.base)
    if hasattr(model, GENERATORS_ATTR):
        delattr(model, GENERATORS_ATTR)
        for key, hook in list(model._forward_pre_hooks.items()):
            if hook is begin_generation:
                del model._forward_pre_hooks[key]
    object.__delattr__(model, CONFIG_ATTR)
    return model


def count_parameters(model: nn.Module, *, other: Callable[[str], bool] | None = None) -> dict[str, int]:
    """Trainable parameters (shared ones once) split into adapter, other (head / modules_to_save) and total.

    `other(name)` picks the parameters counted as other; by default every one that is not an adapter matrix.
    """
    is_other = other or (lambda name: not is_adapter_param(name))
    seen: set[int] = set()
    counts = {"adapter": 0, "other": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        counts["other" if is_other(name) else "adapter"] += p.numel()
    return {**counts, "total": counts["adapter"] + counts["other"]}


def is_adapter_param(name: str) -> bool:
    """Whether parameter `name` is an adapter matrix: a generator's Θ or a layer's lora_A / lora_B."""
    return name.startswith(GENERATORS_ATTR) or ".lora_A" in name or ".lora_B" in name
