"""`condlora train`: one fine-tuning run; every flag maps 1:1 onto a `TrainConfig` field."""

from __future__ import annotations

import argparse

from ..config import COND_FORMS
from ..runner.names import ALIASES_HELP, GLUE_DIR_ENV, GLUE_TASKS, USER_METHODS, stored_method, user_method
from . import owndata

TASK_CHOICES = ", ".join(GLUE_TASKS)
KILL_ENV = "CONDLORA_DEBUG_KILL_AT_STEP"


def positive_int(text: str) -> int:
    """`text` as an int >= 1 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _modules(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of module names, e.g. query,value")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `condlora train`."""
    p.add_argument("--task", help=f"GLUE task: {TASK_CHOICES} (case-insensitive; SST-2, STS-B ok); "
                   "or own data: --train-file")
    owndata.add_arguments(p)
    p.add_argument("--method", default="condlora", choices=USER_METHODS, metavar="METHOD",
                   help="lora (real PEFT), condlora (the library's general form, as AdapterConfig's default; "
                        "alias condlora-general), condlora-paper (the paper's form on square layers), "
                        "lora-frozen-a / condlora-frozen-a (only B or Θ_B trains), lora-frozen-b / "
                        "condlora-frozen-b (only A or Θ_A trains; these two take --cond-form), full or head "
                        "(default: condlora); rows of a tiny "
                        "budget, all real PEFT: lora-r1, lora-r2 (LoRA at r = 1, 2 with alpha = r, i.e. scaling "
                        "1 as lora's r = 8, alpha = 8), vera (VeRA, r = 256), vera-r1024, fourierft (FourierFT, "
                        "1000 frequencies)")
    p.add_argument("--model", default="minilm", help=f"base model: {ALIASES_HELP} (default: minilm; "
                   "the paper used roberta-base)")
    p.add_argument("--glue-dir", default=None, help=f"GLUE TSV folder (TASK/train.tsv, dev.tsv); default "
                   f"${GLUE_DIR_ENV}, else the hub's nyu-mll/glue (needs the `data` extra)")
    p.add_argument("--output-dir", default="runs/run", help="run folder (default: runs/run)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, data order and dropout (default: 0)")
    p.add_argument("--epochs", type=float, default=3, help="training epochs; the maximum with --patience "
                   "(default: 3)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 5e-4; vera*: 1e-2, "
                   "fourierft: 5e-2, their papers' GLUE settings)")
    p.add_argument("--head-lr", type=float, default=None,
                   help="peak learning rate of the classification head (default: --lr; vera*: 4e-3, "
                        "fourierft: 6e-3, as their papers train the head)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="global batch size (default: 16)")
    p.add_argument("--max-length", type=positive_int, default=128, help="max tokens per example (default: 128)")
    p.add_argument("--max-train-samples", type=positive_int, default=None, help="use the first N training examples")
    p.add_argument("--max-eval-samples", type=positive_int, default=None,
                   help="at most N validation examples and N per test part")
    p.add_argument("--r", type=positive_int, default=None,
                   help="adapter rank, VeRA's too (default: 8; lora-r1: 1, lora-r2: 2, vera: 256, vera-r1024: 1024)")
    p.add_argument("--alpha", type=float, default=None,
                   help="LoRA / CondLoRA alpha; scaling = alpha / r (default: 8; lora-r1, lora-r2: alpha = r)")
    p.add_argument("--n-frequency", type=positive_int, default=None,
                   help="FourierFT: trainable spectral coefficients per adapted layer (default: 1000)")
    p.add_argument("--fourier-scaling", type=float, default=None,
                   help="FourierFT: the scaling of ΔW, like LoRA's alpha (default: 150, PEFT's)")
    p.add_argument("--dropout", type=float, default=0.0, help="adapter input dropout (default: 0)")
    p.add_argument("--target-modules", type=_modules, default=["query", "value"],
                   help="comma-separated modules to adapt (default: query,value)")
    p.add_argument("--cond-form", default=None, choices=COND_FORMS,
                   help="CondLoRA's form for condlora-paper and the frozen variants: paper (A = Θ_A·W0ᵀ, "
                        "B = W0·Θ_Bᵀ), general (A = θ_A·W0, B = W0·θ_B) or auto (paper on square layers, general "
                        "otherwise; default); condlora is always the general form")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="share of warmup steps (default: 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    p.add_argument("--eval-every", type=positive_int, default=None, help="steps between evaluations "
                   "(default: once per epoch)")
    p.add_argument("--patience", type=int, default=None, metavar="N",
                   help="early stopping: stop after N evaluations without a better validation score; --epochs "
                        "is then the maximum (default: off)")
    p.add_argument("--head", default="dense", metavar="{dense,linear}",
                   help="classification head that trains with every method: dense "
                   "(the paper's RoBERTa-like dense + tanh + output: BERT's classifier + pooler, RoBERTa's "
                   "classifier, DistilBERT's pre_classifier + classifier; default) or linear (the output layer only)")
    p.add_argument("--group-by-length", action="store_true",
                   help="batches of similar lengths (mega-batches of 50 batches sorted by length, batch order "
                        "shuffled per epoch), like Trainer's group_by_length")
    p.add_argument("--save-every", type=positive_int, default=None,
                   help="steps between extra checkpoints (default: at each evaluation)")
    p.add_argument("--pad-to-max-length", action="store_true", help="pad to --max-length (the paper's setting)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="fp32, or bf16/fp16 autocast on GPU; bf16 also on a CPU with native bf16 (default: what "
                        "`accelerate launch --mixed_precision` or `accelerate config` set, else fp32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; one line at the end (task, method, "
                   "test score, path of results.json)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in OUTPUT_DIR")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run Python code shipped with the model (off by default)")


def main(args: argparse.Namespace) -> int:
    """Build the TrainConfig from the flags and run it."""
    import dataclasses

    from ..runner.train import TrainConfig, train

    args.task = owndata.train_task(args)
    args.method = stored_method(args.method, args.cond_form)  # the name its run folder and records keep
    args.cond_form = args.cond_form if args.cond_form and args.method != "condlora-general" else "auto"
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    results = train(cfg, on_step=_debug_kill_hook())
    if cfg.quiet and _main_process():
        print(quiet_line(cfg.task, cfg.method, results, cfg.output_dir))
    return 0


def quiet_line(task: str, method: str, results: dict, output_dir: str) -> str:
    """--quiet's one line: task, method (as the user names it), test score, where results.json is."""
    from pathlib import Path

    score = results.get("test_score")
    test = "no test file" if score is None else f"test {results.get('metric', 'score')} {score:.4f}"
    return f"{task} {user_method(method)}: {test}; results in {Path(output_dir) / 'results.json'}"


def _main_process() -> bool:
    """Whether this is the only or the first process of a torchrun / accelerate launch."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _debug_kill_hook():
    """For crash tests: $CONDLORA_DEBUG_KILL_AT_STEP=N makes the process SIGKILL itself after step N."""
    import os
    import signal

    value = os.environ.get(KILL_ENV)
    if not value:
        return None
    step = int(value)
    return lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == step else None
