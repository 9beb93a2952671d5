"""`condlora analyze`: its flags, checked and handed to `condlora.analyze.report.run_analysis`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import COND_FORMS as FORMS
from ..errors import CondLoRAError
from ..runner.names import ALIASES_HELP

BY_CONSTRUCTION = ("CondLoRA: W0→A and W0→B are 1.000 by construction, every layer's A and B being the same "
                   "linear map of its own W0; the LoRA rows and the random baselines are the comparison")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `condlora analyze`."""
    p.add_argument("--model", required=True, help=f"base model the adapter was trained on: {ALIASES_HELP}")
    p.add_argument("--adapter", required=True,
                   help="adapter folder: condlora LoRA / CondLoRA (save_adapter) or real PEFT LoRA")
    p.add_argument("--compare", default=None, help="a second adapter on the same model (e.g. LoRA vs CondLoRA)")
    p.add_argument("--output-dir", required=True, help="where to write JSON, CSV, markdown and PNG files")
    p.add_argument("--i", type=int, default=None, help="singular vectors taken from the first matrix (default r)")
    p.add_argument("--j", type=int, default=None, help="singular vectors taken from the second matrix (default r)")
    p.add_argument("--cond-form", choices=FORMS, default="auto",
                   help="how W0→A is solved: paper (W0·C = Aᵀ, square W0), general (W0ᵀ·C = Aᵀ, any W0), "
                        "auto (a CondLoRA adapter's own form; else paper where square)")
    p.add_argument("--form", dest="cond_form", choices=FORMS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="seed of the random Gaussian baseline")
    p.add_argument("--num-labels", type=int, default=None, help="classifier outputs of the base model "
                   "(default: read from a condlora adapter's saved head)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for the linear algebra (default 1: many small SVDs and solves run best on one "
                        "thread and avoid OpenMP slow-downs on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run Python code shipped with the model (off by default)")


def main(args: argparse.Namespace) -> int:
    """Read the adapter(s), compute every analysis, write the files and print a summary."""
    for flag in ("i", "j", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise CondLoRAError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise CondLoRAError(f"--output-dir {args.output_dir} exists and is not a folder")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CondLoRAError("condlora analyze draws with matplotlib: pip install 'condlora[analysis]'") from None
    from ..analyze.report import run_analysis, torch_threads

    with torch_threads(args.threads):
        summary = run_analysis(args)
    _print_summary(summary, Path(args.output_dir))
    return 0


def _print_summary(summary: dict, out: Path) -> None:
    for type_name, s in summary["module_types"].items():
        m = {k: ("n/a" if v is None else f"{v:.3f}") for k, v in s["mean_off_diagonal"].items()}
        print(f"{type_name}: mean off-diagonal φ (random matrices; random A, B on this W0)\n"
              f"  W0→A {m['A']} ({m['random_A']}; {m['random_adapter_A']})  "
              f"W0→B {m['B']} ({m['random_B']}; {m['random_adapter_B']})")
        if summary.get("adapter_kind") == "condlora":
            print(f"  ({BY_CONSTRUCTION})")
        if s["ill_conditioned"]:
            print(f"  warning: W0 too ill-conditioned for meaningful conversion matrices in "
                  f"{', '.join(s['ill_conditioned'])} (max cond {s['max_cond']:.3g})")
    if summary["compare"]:
        means = summary["compare"]["mean"].items()
        print("table 3 means: " + ", ".join(f"{k} {v:.3f}" for k, v in means if v is not None))
    print(f"wrote {out} in {summary['seconds']} s")
