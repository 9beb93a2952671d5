"""The entry points that change a model: `apply_adapter`, `load_adapter`, `merge_and_unload`.

They wrap the module surgery of `inject` and give an adapted `transformers` model (anything with a
`save_pretrained` method) an instance `save_pretrained` that writes the adapter with `save_adapter`, as
`PeftModel.save_pretrained` does; so `Trainer.save_model` and every `checkpoint-N/` hold the adapter, not a
copy of the base model. `merge_and_unload` takes it away again. This module imports neither peft nor accelerate.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from torch import nn

from ._version import __version__
from .config import AdapterConfig
from .errors import AdapterLoadError, CondLoRAError, ConfigError, TargetError
from .inject import inject_adapter, remove_adapter
from .serialization import CONFIG_NAME, WEIGHTS_NAME, load_adapter_weights, read_config, read_tensors, save_adapter


def apply_adapter(model: nn.Module, cfg: AdapterConfig) -> nn.Module:
    """Add the adapter described by `cfg` to `model` in place and freeze all else; returns `model`.

    Only the adapter's trainable matrices and the parameters of `cfg.modules_to_save` keep
    `requires_grad=True`. The resolved forms, shapes and a fingerprint are written back into `cfg`.
    A `transformers` model's `save_pretrained` then saves the adapter only (see `save_pretrained`).
    """
    inject_adapter(model, cfg)
    cfg.library_version = __version__
    if callable(getattr(type(model), "save_pretrained", None)):
        # A partial, not a bound method, so the model still pickles and deep-copies with its hook intact.
        model.save_pretrained = functools.partial(save_pretrained, model)
    return model


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply the adapter saved in folder `path` to `model` and load its weights; returns `model`.

    Frozen matrices (A or B) come from the file, never from the seed. The model is left untouched on error.
    """
    path = Path(path)
    cfg = read_config(path)
    tensors = read_tensors(path / WEIGHTS_NAME)
    if cfg.fingerprint is None:
        raise AdapterLoadError(f"{path / CONFIG_NAME} has no fingerprint; it was not written by save_adapter")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        apply_adapter(model, cfg)
    except (TargetError, ConfigError) as e:
        raise AdapterLoadError(f"the adapter in {path} does not fit this model: {e}") from None
    try:
        load_adapter_weights(model, tensors, str(path / WEIGHTS_NAME))
    except AdapterLoadError:
        merge_and_unload(model)  # nothing was copied yet and A or B is zero: this restores the base exactly
        for p, flag in flags:
            p.requires_grad_(flag)
        raise
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge ΔW into the base weights and put the original module types back: zero inference overhead."""
    remove_adapter(model)
    model.__dict__.pop("save_pretrained", None)  # the class's own save_pretrained: the full, merged model
    return model


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, is_main_process: bool = True,
                    state_dict: dict | None = None, push_to_hub: bool = False, **kwargs: Any) -> None:
    """`save_pretrained` of an adapted model: `save_adapter`'s two files, never the base weights.

    The folder is reloaded with `load_adapter(base_model, save_directory)`; `from_pretrained` refuses it.
    For a stand-alone full model, save `merge_and_unload(model)` instead. Options about shards or
    serialization are ignored; `state_dict` and `push_to_hub` are refused (they would save something else).
    """
    if state_dict is not None:
        raise CondLoRAError("save_pretrained(state_dict=...) is not supported on a condlora model: it saves the "
                            "adapter from the live model (use save_adapter, or merge_and_unload first)")
    if push_to_hub:
        raise CondLoRAError("save_pretrained(push_to_hub=True) is not supported on a condlora model: save, then "
                            "upload the folder with huggingface_hub")
    if is_main_process:
        save_adapter(model, save_directory)
