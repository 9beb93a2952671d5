"""condlora: LoRA, CondLoRA and frozen-A / frozen-B adapters for Hugging Face transformers.

The public names are imported on first use (PEP 562), so `import condlora` and the command line's argument
checks stay fast; `from condlora import apply_adapter` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import AdapterLoadError, CondLoRAError, ConfigError, MissingDependencyError, TargetError

if TYPE_CHECKING:
    from .analysis import conversion_matrices, subspace_similarity
    from .config import AdapterConfig
    from .hf_trainer import AdapterTrainer  # noqa: F401  (lazy, not in __all__: needs accelerate)
    from .inject import adapter_layers, count_parameters, get_config, merge_adapter, unmerge_adapter
    from .layers import ABGenerator, CondLoRALinear, LoRALinear
    from .model import apply_adapter, load_adapter, merge_and_unload
    from .serialization import export_peft_lora, save_adapter

_LAZY = {
    "analysis": ("conversion_matrices", "subspace_similarity"),
    "config": ("AdapterConfig",),
    "hf_trainer": ("AdapterTrainer",),  # imports transformers.Trainer and accelerate
    "inject": ("adapter_layers", "count_parameters", "get_config", "merge_adapter", "unmerge_adapter"),
    "layers": ("ABGenerator", "CondLoRALinear", "LoRALinear"),
    "model": ("apply_adapter", "load_adapter", "merge_and_unload"),
    "serialization": ("export_peft_lora", "save_adapter"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'condlora' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, imported or not."""
    return sorted({*globals(), *_MODULE_OF})


__all__ = [
    "ABGenerator",
    "AdapterConfig",
    "AdapterLoadError",
    "CondLoRAError",
    "CondLoRALinear",
    "ConfigError",
    "LoRALinear",
    "MissingDependencyError",
    "TargetError",
    "__version__",
    "adapter_layers",
    "apply_adapter",
    "conversion_matrices",
    "count_parameters",
    "export_peft_lora",
    "get_config",
    "load_adapter",
    "merge_adapter",
    "merge_and_unload",
    "save_adapter",
    "subspace_similarity",
    "unmerge_adapter",
]
