"""Hugging Face glue: an adapter-only `save_pretrained`, adapter checkpoints and PEFT task types.

`apply_adapter` gives an adapted `transformers` model (anything with a `save_pretrained` method) an instance
`save_pretrained` that writes the adapter with `save_adapter`, as `PeftModel.save_pretrained` does; so
`Trainer.save_model` and every `checkpoint-N/` hold the adapter, not a copy of the base model.
`merge_and_unload` takes it away again. This module imports neither peft nor accelerate.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from torch import nn

from .errors import AdapterLoadError, CondLoRAError
from .inject import get_config
from .io import CONFIG_NAME, WEIGHTS_NAME, load_adapter_weights, read_config, read_config_json, read_tensors
from .io import save_adapter as _save_adapter

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


def attach_save_pretrained(model: nn.Module) -> None:
    """Make `model.save_pretrained` save the adapter; models without a `save_pretrained` are left alone."""
    if callable(getattr(type(model), "save_pretrained", None)):
        # A partial, not a bound method, so the model still pickles and deep-copies with its hook intact.
        model.save_pretrained = functools.partial(save_pretrained, model)


def detach_save_pretrained(model: nn.Module) -> None:
    """Give `model` its class's own `save_pretrained` back (after `merge_and_unload`)."""
    model.__dict__.pop("save_pretrained", None)


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
        _save_adapter(model, save_directory)


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
