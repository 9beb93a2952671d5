"""Read any LoRA-style adapter (condlora LoRA / CondLoRA, or real PEFT LoRA) as per-layer W0, A, B."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import AdapterLoadError
from ..inject import adapter_layers, layer_index, module_type
from ..layers import SUPPORTED_TYPES, base_weight
from ..model import load_adapter
from ..runner.models import saved_num_labels
from ..serialization import WEIGHTS_NAME, read_config, read_config_json, read_tensors

PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<name>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LayerMatrices:
    """One adapted layer: its module name, block index, frozen W0 (d_out × d_in), A (r × d_in), B (d_out × r)."""

    name: str
    index: int
    w0: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor


@dataclass
class AdapterMatrices:
    """Every adapted layer of one adapter, grouped by module type ('encoder.layer.*.attention.self.query')."""

    path: str
    kind: str  # "lora", "condlora" (this library) or "peft-lora"
    types: dict[str, list[LayerMatrices]] = field(default_factory=dict)
    forms: dict[str, str] = field(default_factory=dict)  # CondLoRA's form per module type

    def add(self, layer: LayerMatrices) -> None:
        """File `layer` under its module type, keeping layers sorted by block index."""
        group = self.types.setdefault(module_type(layer.name), [])
        group.append(layer)
        group.sort(key=lambda m: m.index)

    def layer(self, name: str) -> LayerMatrices | None:
        """The layer called `name`, or None."""
        return next((m for g in self.types.values() for m in g if m.name == name), None)


def adapter_format(path: str | Path) -> str:
    """'condlora' or 'peft' from the folder's adapter_config.json; a clear error for anything else."""
    file, data = read_config_json(path)
    if isinstance(data, dict) and "condlora" in data:
        return "condlora"
    if isinstance(data, dict) and "peft_type" in data:
        if data["peft_type"] != "LORA":
            raise AdapterLoadError(f"{file}: peft_type {data['peft_type']!r} is not supported; only LORA adapters")
        return "peft"
    raise AdapterLoadError(f"{file} is neither a condlora nor a PEFT adapter config")


def _index(name: str, fallback: int) -> int:
    idx = layer_index(name)
    return fallback if idx is None else idx


@torch.no_grad()
def read_condlora(model: nn.Module, path: str | Path) -> AdapterMatrices:
    """Load a condlora adapter onto `model` (changed in place) and take each layer's W0, A, B.

    CondLoRA's per-layer A_l, B_l are materialised from the shared generator and W0_l.
    """
    cfg = read_config(path)
    load_adapter(model, path)
    model.eval()
    out = AdapterMatrices(str(path), cfg.method)
    for n, (name, layer) in enumerate(adapter_layers(model)):
        a, b = layer.lora_AB()
        out.add(LayerMatrices(name, _index(name, n), layer.w0().detach().clone(), a.detach().clone(),
                              b.detach().clone()))
    if cfg.method == "condlora":
        out.forms = {t: info["form"] for t, info in (cfg.module_types or {}).items()}
    return out


def find_module(model: nn.Module, name: str, source: str) -> nn.Module:
    """The adaptable module called `name`, allowing a missing or extra top-level prefix ('bert.')."""
    modules = {n: m for n, m in model.named_modules() if isinstance(m, SUPPORTED_TYPES)}
    if name in modules:
        return modules[name]
    hits = [n for n in modules if n.endswith("." + name) or name.endswith("." + n)]
    if len(hits) == 1:
        return modules[hits[0]]
    why = "is ambiguous here" if hits else "is not a linear layer of this model"
    raise AdapterLoadError(f"{source}: adapter module {name} {why}; does --model match the adapter?")


def read_peft(model: nn.Module, path: str | Path) -> AdapterMatrices:
    """A LoRA adapter saved by real `peft` (adapter_config.json + adapter_model.safetensors); W0 from `model`."""
    path = Path(path)
    file = path / WEIGHTS_NAME
    if not file.is_file() and (path / "adapter_model.bin").is_file():
        raise AdapterLoadError(f"{path} holds adapter_model.bin; save it with safe_serialization=True")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in read_tensors(file).items():
        m = PEFT_KEY.match(key)
        if m and not key.endswith("_embedding_A.weight"):
            pairs.setdefault(m["name"], {})[m["ab"]] = t
    if not pairs:
        raise AdapterLoadError(f"{file} holds no lora_A / lora_B weights")
    out = AdapterMatrices(str(path), "peft-lora")
    for n, (name, ab) in enumerate(sorted(pairs.items())):
        if set(ab) != {"A", "B"}:
            raise AdapterLoadError(f"{file}: {name} has lora_{next(iter(ab))} but no partner matrix")
        w0 = base_weight(find_module(model, name, str(file))).detach()
        a, b = ab["A"], ab["B"]
        if not (a.is_floating_point() and torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterLoadError(f"{file}: {name} must hold finite floating-point lora_A / lora_B values")
        if a.shape[1] != w0.shape[1] or b.shape[0] != w0.shape[0] or a.shape[0] != b.shape[1]:
            raise AdapterLoadError(f"{file}: {name} has A {tuple(a.shape)}, B {tuple(b.shape)}, which do not fit "
                                   f"the model's {w0.shape[0]}x{w0.shape[1]} weight")
        out.add(LayerMatrices(name, _index(name, n), w0, a, b))
    return out


def read_adapter(path: str | Path, base: Callable[[int | None], nn.Module]) -> AdapterMatrices:
    """Either format; `base(num_labels)` returns a base model (a fresh copy for condlora adapters)."""
    if adapter_format(path) == "peft":
        return read_peft(base(None), path)

    return read_condlora(copy.deepcopy(base(saved_num_labels(path))), path)
