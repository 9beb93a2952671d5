"""Time `condlora analyze` at the paper's size (12 layers x 768, r = 8, query + value) on CPU.

Builds a LoRA and a CondLoRA adapter on the random roberta-base (`roberta-base-random`, no download) with
random non-zero weights, then runs the full analysis with --compare. Usage:

    python scripts/analyze_full_size.py [OUTPUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from condlora import AdapterConfig, apply_adapter, save_adapter
from condlora.cli import main as cli_main
from condlora.runner.models import ROBERTA_RANDOM, load_classifier


def random_adapter(method: str, path: Path) -> None:
    """Save a `method` adapter on roberta-base-random with every trainable matrix drawn N(0, 0.02²)."""
    model = apply_adapter(load_classifier(ROBERTA_RANDOM, num_labels=2), AdapterConfig(method=method, r=8))
    gen = torch.Generator().manual_seed(1 if method == "lora" else 2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    save_adapter(model, path)


def main() -> int:
    """Build both adapters, then time the analysis alone."""
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="condlora-analyze-"))
    random_adapter("lora", out / "lora")
    random_adapter("condlora", out / "condlora")
    start = time.perf_counter()
    rc = cli_main(["analyze", "--model", ROBERTA_RANDOM, "--adapter", str(out / "lora"),
                   "--compare", str(out / "condlora"), "--output-dir", str(out / "analysis")])
    print(f"analysis of 12 layers x 768 (2 module types, with --compare, --threads 1): "
          f"{time.perf_counter() - start:.1f} s; files in {out / 'analysis'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
