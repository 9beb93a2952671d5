"""`condlora export`: turn a saved condlora adapter into a plain PEFT LoRA adapter folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runner.names import ALIASES_HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `condlora export`."""
    p.add_argument("--model", required=True, help=f"base model: {ALIASES_HELP}")
    p.add_argument("--adapter", required=True, help="folder written by save_adapter / condlora train")
    p.add_argument("--output-dir", required=True, help="where to write the PEFT LoRA adapter")
    p.add_argument("--num-labels", type=int, default=None,
                   help="classifier outputs of the base model (default: read from the adapter's head)")
    p.add_argument("--quiet", action="store_true", help="no weight-loading progress bar")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run Python code shipped with the model (off by default)")


def main(args: argparse.Namespace) -> int:
    """Load model + adapter, write the PEFT export, print where."""
    from ..model import load_adapter
    from ..runner.models import load_classifier, quiet_loading, saved_num_labels
    from ..serialization import export_peft_lora, read_config

    cfg = read_config(args.adapter)
    num_labels = args.num_labels if args.num_labels is not None else saved_num_labels(args.adapter)
    with quiet_loading(args.quiet):
        model = load_classifier(args.model, num_labels=num_labels, trust_remote_code=args.trust_remote_code)
    load_adapter(model, args.adapter)
    path = export_peft_lora(model, args.output_dir)
    print(f"wrote PEFT LoRA adapter ({cfg.method}, r={cfg.r}) to {path}{_same_as_train(args.adapter, path)}")
    return 0


def _same_as_train(adapter: str, path: Path) -> str:
    """A note when `condlora train` already wrote the same export beside the adapter (best_adapter_peft/)."""
    twin = Path(adapter).parent / "best_adapter_peft"
    names = ("adapter_config.json", "adapter_model.safetensors")
    if twin.resolve() == path.resolve() or not all((twin / n).is_file() for n in names):
        return ""
    if all((twin / n).read_bytes() == (path / n).read_bytes() for n in names):
        return f" (byte-identical to {twin}, which condlora train already wrote)"
    return ""
