"""condlora: LoRA, CondLoRA and frozen-A / frozen-B adapters for Hugging Face transformers."""

from ._version import __version__
from .analysis import conversion_matrices, subspace_similarity
from .config import AdapterConfig
from .errors import AdapterLoadError, CondLoRAError, ConfigError, MissingDependencyError, TargetError
from .inject import adapter_layers, count_parameters, get_config, merge_adapter, unmerge_adapter
from .layers import ABGenerator, CondLoRALinear, LoRALinear
from .model import apply_adapter, load_adapter, merge_and_unload
from .serialization import export_peft_lora, save_adapter


def __getattr__(name: str):
    """`condlora.AdapterTrainer`, imported on first use (it imports transformers.Trainer and accelerate)."""
    if name == "AdapterTrainer":
        from .hf_trainer import AdapterTrainer

        return AdapterTrainer
    raise AttributeError(f"module 'condlora' has no attribute {name!r}")


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
