"""The summary tables of scripts/gpu-bench.sh: one row per regime, from `condlora bench --json` files.

Usage: python scripts/gpu_bench_table.py REGIME.json [...]  (prints markdown; a missing file is a failed row)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from condlora.bench.bench import describe

TRAIN = (("floor", "floor"), ("base", "base (head only)"), ("lora", "PEFT LoRA"), ("native-lora", "native LoRA"),
         ("condlora", "condlora"))
INFER = (("infer-base", "base"), ("infer-merged", "merged"), ("infer-condlora", "unmerged condlora"))


def regime(settings: dict) -> str:
    """A regime's label: precision, batch, length, and whether it was compiled."""
    label = f"{settings['precision']}, batch {settings['batch_size']}, length {settings['max_length']}"
    return label + (", `--compile`" if settings.get("compile") else "")


def ms(results: dict, method: str) -> str:
    """A method's step time in ms, or '-' where it did not run."""
    return f"{results[method]['step_s'] * 1e3:.1f}" if method in results else "-"


def ratio(results: dict, method: str, ref: str, key: str = "step_s") -> str:
    """results[method][key] / results[ref][key] to 2 decimals, or '-'."""
    if method not in results or ref not in results or not results[ref][key]:
        return "-"
    return f"{results[method][key] / results[ref][key]:.2f}"


def train_row(data: dict) -> str:
    """One regime's training row."""
    res = data["results"]
    cells = [regime(data["settings"]), *(ms(res, m) for m, _ in TRAIN), ratio(res, "condlora", "lora"),
             ratio(res, "native-lora", "lora"), ratio(res, "condlora", "floor"), ratio(res, "lora", "floor"),
             ratio(res, "condlora", "lora", "step_mb")]
    return "| " + " | ".join(cells) + " |"


def infer_row(data: dict) -> str | None:
    """One regime's inference row, or None where no inference method ran."""
    res = data["results"]
    if not any(m in res for m, _ in INFER):
        return None
    cells = [regime(data["settings"]), *(ms(res, m) for m, _ in INFER), ratio(res, "infer-merged", "infer-base"),
             ratio(res, "infer-condlora", "infer-base")]
    return "| " + " | ".join(cells) + " |"


def tables(runs: list[dict]) -> str:
    """The training table (step ms and ratios) and the inference table, as markdown."""
    head = ["regime", *(name for _, name in TRAIN), "condlora x peft", "native x peft", "condlora x floor",
            "peft x floor", "memory condlora x peft"]
    lines = ["Training step, ms (median of the interleaved repeats):", "",
             "| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    lines += [train_row(d) for d in runs]
    infer = [r for r in (infer_row(d) for d in runs) if r]
    if infer:
        head = ["regime", *(f"{name} ms" for _, name in INFER), "merged x base", "unmerged x base"]
        lines += ["", "Inference forward (no grad), ms:", "", "| " + " | ".join(head) + " |",
                  "|---" + "|---:" * (len(head) - 1) + "|", *infer]
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    """Print the tables of the regimes whose JSON exists; name the ones that did not finish."""
    runs, missing = [], []
    for p in paths:
        (runs if Path(p).is_file() else missing).append(p)
    data = [json.loads(Path(p).read_text()) for p in runs]
    if data:
        print(describe(data[0]["machine"]).replace("machine: ", "Machine: ", 1) + "\n")
    print(tables(data))
    for p in missing:
        print(f"\n(no result: {Path(p).stem})")
    return 0 if runs else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
