"""Adapters on disk: save and read (safetensors + JSON, PEFT-style names), adapter folders, PEFT LoRA export.

This module changes no model's structure: `condlora.model` applies, loads and removes adapters with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ._version import __version__
from .config import AdapterConfig
from .errors import AdapterLoadError, CondLoRAError, require
from .fileio import atomic_write, write_json, write_text
from .inject import GENERATORS_ATTR, adapter_layers, get_config, name_matches
from .layers import Conv1D

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_MODEL_PREFIX = "base_model.model."  # what PEFT puts before every saved name
# Written beside our config so that PEFT, which looks this value up, fails naming the way to convert.
# Fields that change what a loaded adapter computes; a checkpoint must agree on them to resume.
MATCHING_FIELDS = ("method", "r", "alpha", "dropout", "train_a", "train_b", "modules_to_save", "module_types",
                   "fingerprint")
# PEFT task types by model class name suffix (encoder-decoder "ForConditionalGeneration" handled apart).
TASK_SUFFIXES = (
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
)
# The heads PEFT adds to modules_to_save for a task type, and whose weights it then requires on load.
PEFT_TASK_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                   "QUESTION_ANS": ("qa_outputs",)}
NOT_PEFT = "CONDLORA (a condlora adapter, not a PEFT one: load it with condlora.load_adapter, or convert it " \
    "with condlora.export_peft_lora)"


def _saved_modules(model: nn.Module, modules: list[str] | None, peft_rule: bool = False) -> dict[str, torch.Tensor]:
    """Parameters of `modules` (modules_to_save); `peft_rule` uses PEFT's plain `endswith` (which also takes
    'pre_classifier' for 'classifier'), so an export holds every tensor PEFT will look for."""
    out = {}
    for name, module in model.named_modules():
        if not name or not modules:
            continue
        hit = any(name.endswith(t) for t in modules) if peft_rule else name_matches(name, modules)
        if hit:
            for pname, p in module.named_parameters():
                out[f"{PEFT_MODEL_PREFIX}{name}.{pname}"] = p
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the adapter owns (a frozen A / B or Θ_A / Θ_B included) and the modules_to_save, by name."""
    cfg = get_config(model)
    out: dict[str, torch.Tensor] = {}
    if cfg.method == "lora":
        for name, layer in adapter_layers(model):
            out[f"{PEFT_MODEL_PREFIX}{name}.lora_A.weight"] = layer.lora_A
            out[f"{PEFT_MODEL_PREFIX}{name}.lora_B.weight"] = layer.lora_B
    else:
        for key, gen in getattr(model, GENERATORS_ATTR).items():
            out[f"{PEFT_MODEL_PREFIX}{GENERATORS_ATTR}.{key}.theta_A"] = gen.theta_A
            out[f"{PEFT_MODEL_PREFIX}{GENERATORS_ATTR}.{key}.theta_B"] = gen.theta_B
    out.update(_saved_modules(model, cfg.modules_to_save))
    return out


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors (moved to CPU, made contiguous) to a safetensors file atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata={"format": "pt"}))


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `adapter_config.json` and `adapter_model.safetensors` (atomically) into folder `path`."""
    cfg = get_config(model)
    path = Path(path)
    cfg.library_version = __version__
    write_safetensors(path / WEIGHTS_NAME, adapter_state_dict(model))
    data = {"condlora": cfg.to_dict(), "peft_type": NOT_PEFT}
    if cfg.base_model_name_or_path:  # lets `from_pretrained(path)` reach PEFT and its NOT_PEFT error
        data["base_model_name_or_path"] = cfg.base_model_name_or_path
    write_json(path / CONFIG_NAME, data)
    return path


def read_config_json(path: str | os.PathLike) -> tuple[Path, object]:
    """The parsed adapter_config.json of folder `path` (any format); clear errors if missing or malformed."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise AdapterLoadError(f"{file} not found: not an adapter folder")
    try:
        return file, json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterLoadError(f"{file} is not valid JSON: {e}") from None


def read_config(path: str | os.PathLike) -> AdapterConfig:
    """Read and validate a condlora adapter config; clear errors for missing or malformed files."""
    file, data = read_config_json(path)
    if not isinstance(data, dict) or "condlora" not in data:
        peft_type = data.get("peft_type") if isinstance(data, dict) else None
        hint = f" (a PEFT {peft_type} adapter: load it with peft)" if peft_type else ""
        raise AdapterLoadError(f"{file} is not a condlora adapter config{hint}")
    try:
        return AdapterConfig.from_dict(data["condlora"])
    except (CondLoRAError, TypeError) as e:
        raise AdapterLoadError(f"{file}: {e}") from None


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file on CPU; a clear error if it is missing or corrupt."""
    if not file.is_file():
        raise AdapterLoadError(f"{file} not found")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterLoadError(f"{file} is not a readable safetensors file: {e}") from None


def load_adapter_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "file") -> None:
    """Copy saved tensors into the adapter; the key set, shapes and dtypes must match exactly."""
    copy_weights(adapter_state_dict(model), tensors, source)


def copy_weights(targets: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str,
                 expected: str = "the adapter config") -> None:
    """Copy `tensors` into the same-named `targets` once their names, shapes and finite values are checked.

    Any mismatch raises AdapterLoadError saying how `source` differs from `expected`; nothing is copied then.
    """
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise AdapterLoadError(f"{source} does not match {expected}: {what}")
    for key, target in targets.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(target.shape):
            raise AdapterLoadError(f"{source}: {key} has shape {tuple(t.shape)}, expected {tuple(target.shape)}")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise AdapterLoadError(f"{source}: {key} must hold finite floating-point values ({t.dtype})")
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(tensors[key].to(dtype=target.dtype, device=target.device))


def peft_lora_tensors(model: nn.Module, modules_to_save: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Every adapted layer's A and B (generated ones for CondLoRA) under PEFT LoRA's saved names, and the
    parameters of `modules_to_save` (default: the adapter config's)."""
    saved = get_config(model).modules_to_save if modules_to_save is None else modules_to_save
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in adapter_layers(model):
            a, b = layer.lora_AB()
            out[f"{PEFT_MODEL_PREFIX}{name}.lora_A.weight"] = a.detach().clone()
            out[f"{PEFT_MODEL_PREFIX}{name}.lora_B.weight"] = b.detach().clone()
    out.update({k: v.detach() for k, v in _saved_modules(model, saved, peft_rule=True).items()})
    return out


def export_peft_lora(model: nn.Module, path: str | os.PathLike, *, base_model_name_or_path: str | None = None,
                     task_type: str | None = None) -> Path:
    """Write the adapter as a plain PEFT LoRA folder, exactly (no SVD): `PeftModel.from_pretrained` loads it.

    `base_model_name_or_path` defaults to the config's; `task_type` ("SEQ_CLS", "CAUSAL_LM", ...) to one
    inferred from the model's class, so `AutoPeftModelFor...` pick the right class.
    """
    require("peft", "export_peft_lora", "peft")
    from peft import LoraConfig

    cfg = get_config(model)
    layers = list(adapter_layers(model))
    conv = {isinstance(layer.base, Conv1D) for _, layer in layers}
    if len(conv) > 1:
        raise CondLoRAError("PEFT cannot hold Conv1D and nn.Linear targets in one LoRA config; export fewer")
    task_type = task_type or peft_task_type(model)
    saved = peft_modules_to_save(model, cfg.modules_to_save, task_type)
    peft_cfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=sorted(name for name, _ in layers),
        fan_in_fan_out=conv.pop(),
        modules_to_save=saved,
        base_model_name_or_path=base_model_name_or_path or cfg.base_model_name_or_path,
        task_type=task_type,
        bias="none",
    )
    data = peft_cfg.to_dict()
    data["target_modules"] = sorted(data["target_modules"])  # PEFT holds a set: sorted, the file is reproducible
    path = Path(path)
    write_safetensors(path / WEIGHTS_NAME, peft_lora_tensors(model, saved))
    write_text(path / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True, default=sorted) + "\n")
    return path


def peft_modules_to_save(model: nn.Module, saved: list[str] | None, task_type: str | None) -> list[str] | None:
    """The export's modules_to_save: the adapter's, plus the head PEFT adds for `task_type` (a sequence
    classifier's `classifier` / `score`) where the model has one, so PEFT finds every head weight it loads."""
    names = [n for n, _ in model.named_modules() if n]
    heads = [h for h in PEFT_TASK_HEADS.get(task_type or "", ()) if any(n.endswith(h) for n in names)]
    out = list(saved or []) + [h for h in heads if h not in (saved or [])]
    return out or None


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether folder `path` holds a condlora adapter (`save_adapter`'s files)."""
    if not (Path(path) / CONFIG_NAME).is_file():
        return False
    _, data = read_config_json(path)
    return isinstance(data, dict) and "condlora" in data


def load_adapter_state(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Copy the adapter weights saved in `path` into `model`'s own adapter (resume, best checkpoint).

    Unlike `load_adapter`, `model` already has the adapter; the saved one must have the same method, rank,
    scaling, targets and saved modules, else a clear error names the first field that differs.
    """
    cfg, saved = get_config(model).to_dict(), read_config(path).to_dict()
    for name in MATCHING_FIELDS:
        if saved[name] != cfg[name]:
            raise AdapterLoadError(f"the adapter in {path} differs from this model's in {name}: "
                                   f"{saved[name]!r} saved, {cfg[name]!r} here")
    weights = Path(path) / WEIGHTS_NAME
    load_adapter_weights(model, read_tensors(weights), str(weights))
    return model


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's `task_type` for `model` ("SEQ_CLS", "CAUSAL_LM", ...) from its class or config, or None."""
    config = getattr(model, "config", None)
    for name in (type(model).__name__, *(getattr(config, "architectures", None) or [])):
        for suffix, task in TASK_SUFFIXES:
            if name.endswith(suffix):
                return task
        if name.endswith("ForConditionalGeneration") and getattr(config, "is_encoder_decoder", False):
            return "SEQ_2_SEQ_LM"
    return None
