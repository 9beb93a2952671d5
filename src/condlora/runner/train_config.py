"""`TrainConfig`: every setting of one `condlora train` run, validated."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import COND_FORMS
from ..errors import ConfigError
from .method_defaults import applies, method_defaults
from .methods import RUN_METHODS, MethodSetup
from .models import HEADS
from .owndata import DATA_FIELDS, configure_data

PRECISIONS = ("fp32", "bf16", "fp16")
NOT_RUN_FIELDS = ("quiet", "resume", "overwrite", "trust_remote_code")
# Run settings added after runs were first written, with the value those older runs had.
NEW_FIELD_DEFAULTS = {"cond_form": "auto", "head": "linear", "patience": None, "group_by_length": False,
                      "head_lr": None, "n_frequency": None, "fourier_scaling": None}
SIZES = ("r", "alpha", "n_frequency", "fourier_scaling")


@dataclass
class TrainConfig:
    """Settings of one fine-tuning run (`condlora train` maps its flags 1:1 onto these fields).

    Attributes:
        task: cola sst2 mrpc stsb qqp mnli qnli rte (case-insensitive; GLUE folder names like SST-2 accepted);
            with train_file, the own data's task name.
        method: the stored method name (`runner.names`: `condlora` is the paper's form here, the CLI's
            `condlora-paper`; `condlora-general` the CLI's `condlora`): lora (real PEFT) | condlora | lora-frozen-a |
            condlora-frozen-a | lora-frozen-b |
            condlora-frozen-b | condlora-general (CondLoRA, general form whatever cond_form says) | full | head |
            lora-r1 | lora-r2 (PEFT LoRA at r = 1, 2 with alpha = r) | vera (PEFT VeRA, r = 256) | vera-r1024 |
            fourierft (PEFT FourierFT, n_frequency = 1000); see `method_defaults`.
        model: alias (`minilm`, offline), local folder or hub id.
        output_dir: run folder (config.json, metrics.jsonl, results.json, checkpoint/, best adapter).
        glue_dir: GLUE TSV folder; default $CONDLORA_GLUE_DIR, else the hub via `datasets`.
        train_file, validation_file, test_file: own data instead of a GLUE task (.csv, .tsv, .jsonl/.json);
            then `task` names it (default: the train file's name). See `condlora.runner.owndata`.
        text_columns, label_column, metric: own data's one or two text columns, label column (default label)
            and main metric (accuracy, f1, mcc, pearson, spearman; default accuracy or pearson).
        data_sha256: set from the files (role -> SHA-256), so a run on changed files is another run.
        seed: seed of model init, adapter init, data order and dropout (the 90/10 split always uses seed 1).
        epochs: training epochs (fractions allowed); the most epochs when `patience` is set.
        lr: peak learning rate of AdamW; None: the method's default (5e-4; VeRA 1e-2, FourierFT 5e-2).
        head_lr: peak learning rate of the classification head; None: the method's default (VeRA 4e-3,
            FourierFT 6e-3), else the same as `lr`.
        batch_size: global batch size (split across processes).
        max_length: token limit per example (pair).
        max_train_samples: keep the first N of the shuffled 90% train part.
        max_eval_samples: at most N validation examples and N per test part (quick runs).
        r, alpha, dropout, target_modules: adapter settings (lora* and condlora*; r and dropout: vera* too);
            None: the method's default (r = 8, alpha = 8; lora-r1/lora-r2: alpha = r; vera: r = 256).
        n_frequency, fourier_scaling: FourierFT's trainable frequencies per layer and ΔW scaling (default 1000,
            150); None for every other method.
        cond_form: CondLoRA's form: auto (paper form on square layers), paper or general (see AdapterConfig).
        warmup_ratio: share of steps with linear warmup.
        weight_decay: AdamW weight decay.
        eval_every: steps between evaluations; None = once per epoch.
        head: trainable classification head of every method: dense (the paper's RoBERTa-like dense + tanh +
            output; BERT: classifier + pooler) or linear (the final output layer only).
        patience: stop after this many evaluations without a better validation score; None = never.
        group_by_length: batches of similar lengths (shuffled mega-batches of 50 batches sorted by length).
        save_every: steps between extra checkpoints; None = at each evaluation only.
        pad_to_max_length: pad every batch to max_length (the paper's setting) instead of dynamic padding.
        precision: fp32, or bf16 / fp16 autocast (GPU; bf16 also on a CPU with native bf16, see
            `native_bf16_cpu`); None takes accelerate's own setting (`accelerate launch --mixed_precision`,
            `accelerate config`), fp32 when it has none.
        quiet: no progress bar or summary.
        resume: continue from output_dir/checkpoint.
        overwrite: replace a different run in output_dir.
        trust_remote_code: let transformers run Python code shipped with the model (off unless asked for).
    """

    task: str | None = None
    method: str = "condlora"
    model: str = "minilm"
    output_dir: str = "runs/run"
    glue_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    text_columns: list[str] | None = None
    label_column: str | None = None
    metric: str | None = None
    data_sha256: dict[str, str] | None = None
    seed: int = 0
    epochs: float = 3
    lr: float | None = None
    head_lr: float | None = None
    batch_size: int = 16
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    r: int | None = None
    alpha: float | None = None
    n_frequency: int | None = None
    fourier_scaling: float | None = None
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    cond_form: str = "auto"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    eval_every: int | None = None
    head: str = "dense"
    patience: int | None = None
    group_by_length: bool = False
    save_every: int | None = None
    pad_to_max_length: bool = False
    precision: str | None = None
    quiet: bool = False
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        self.task = configure_data(self)  # a GLUE task, or own data files (runner/owndata.py)
        if self.method not in RUN_METHODS:
            raise ConfigError(f"method must be one of {', '.join(RUN_METHODS)}; got {self.method!r}")
        self._method_settings()
        if self.cond_form not in COND_FORMS:
            raise ConfigError(f"cond_form must be one of {', '.join(COND_FORMS)}; got {self.cond_form!r}")
        if self.precision is None:
            self.precision = accelerate_precision()
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}; got {self.head!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        for name in ("epochs", "lr", "head_lr", "alpha", "fourier_scaling", "dropout", "warmup_ratio",
                     "weight_decay"):
            if getattr(self, name) is not None or name not in ("head_lr", "alpha", "fourier_scaling"):
                _check_number(name, getattr(self, name), float)
        for name in ("batch_size", "max_length", "r", "n_frequency", "max_train_samples", "max_eval_samples",
                     "eval_every", "save_every", "seed", "patience"):
            value = getattr(self, name)
            if value is not None or name in ("batch_size", "max_length", "seed"):
                _check_number(name, value, int)
        for name in ("epochs", "lr", "head_lr", "alpha", "fourier_scaling", "batch_size", "max_length", "r",
                     "n_frequency", "max_train_samples", "max_eval_samples", "eval_every", "save_every",
                     "patience"):
            value = getattr(self, name)
            if value is not None and not (0 < value < math.inf):
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio!r}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    def _method_settings(self) -> None:
        """Fill r, alpha, n_frequency, fourier_scaling, lr and head_lr left None with the method's defaults;
        refuse a size the method has not (alpha for VeRA) or that contradicts its row name (r=4 for lora-r1)."""
        d = method_defaults(self.method)
        for name in SIZES:
            given = getattr(self, name)
            if given is None:
                continue
            if not applies(name, self.method):
                raise ConfigError(f"method {self.method} has no {name} (got {given!r})")
            if name in d.fixed and given != getattr(d, name):
                alpha = f" --alpha {given!r}" if name == "r" and "alpha" in d.fixed else ""  # scaling 1 again
                raise ConfigError(f"method {self.method} is {d.kind} at {d.sizes()}; for {name}={given!r} use "
                                  f"--method {d.kind} --{name.replace('_', '-')} {given!r}{alpha}")
        for name in (*SIZES, "lr", "head_lr"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(d, name))

    @property
    def effective_head_lr(self) -> float:
        """The learning rate the classification head trains with."""
        return self.lr if self.head_lr is None else self.head_lr

    def method_setup(self, target_modules: list[str] | None = None) -> MethodSetup:
        """What `setup_method` needs of this run (`target_modules`: the model's names for them, if other)."""
        return MethodSetup(self.method, self.r, self.alpha, self.dropout, list(target_modules or self.target_modules),
                           self.seed, self.cond_form, self.head, self.n_frequency, self.fourier_scaling)

    def run_dict(self) -> dict:
        """The settings that define the run (flags like quiet/resume/overwrite left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in NOT_RUN_FIELDS and not (k in DATA_FIELDS and v is None)}


def study_task(tasks: str | list[str] | None, run_args: dict[str, Any]) -> list[str]:
    """StudySettings hook for own data: the one task's name; adds the files' SHA-256 to run_args."""
    names = [tasks] if isinstance(tasks, str) else list(tasks or [])
    if len(names) > 1:
        raise ConfigError(f"a study on own files has one task; got {', '.join(names)}")
    if not run_args.get("test_file"):
        raise ConfigError("a study on own files needs --test-file: its tables compare test scores")
    cfg = TrainConfig(**{**run_args, "task": names[0] if names else None})
    run_args["data_sha256"] = cfg.data_sha256
    return [cfg.task]


def accelerate_precision() -> str:
    """The mixed precision `accelerate launch` (or its config file) asked for, as fp32 / bf16 / fp16."""
    import os

    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    return "fp32" if value in ("", "no") else value


def cpu_bf16_flags() -> list[str]:
    """This CPU's native bf16 flags, of avx512_bf16 and amx_bf16 (read on Linux only; else none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return sorted({m for line in f if line.startswith("flags")
                           for m in re.findall(r"\b(avx512_bf16|amx_bf16)\b", line)})
    except OSError:
        return []


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (the avx512_bf16 or amx_bf16 flag; read on Linux only)."""
    return bool(cpu_bf16_flags())


def _check_number(name: str, value: object, kind: type) -> None:
    """`value` must be an int (kind int) or a real number (kind float); bools and NaN are refused."""
    ok = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    if not ok or value != value:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
