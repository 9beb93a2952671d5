"""The study's Table 3: subspace similarity φ between LoRA's and CondLoRA's matrices, per task.

For every task and seed where both methods saved a best adapter, each adapted layer gives
φ(A_LoRA, A_CondLoRA) (right singular vectors) and φ(B_LoRA, B_CondLoRA) (left), at i = j = r
(`condlora.analyze.report.compare_adapters`). Cells are means over seeds and layers; the random row compares
LoRA's matrices with same-shape Gaussian ones through the same pipeline. There is no ΔW row: the left singular
vectors of ΔW = B·A span the column space of B (A has full rank r), so φ(ΔW) repeats the B row by construction.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..analyze.matrices import read_adapter
from ..analyze.report import base_loader, compare_adapters, line_plot
from ..errors import CondLoRAError
from ..fileio import write_text
from .figure1 import adapter_dir, finished_adapter
from .tables import mean_or_nan

KINDS = (("A", "A"), ("B", "B"))


def compare_runs(out: Path, task: str, seeds: list[int], model: str, x: str, y: str,
                 trust_remote_code: bool = False) -> list[dict]:
    """Per-layer comparison rows of methods x and y for every seed of `task` where both saved an adapter."""
    base = base_loader(model, None, trust_remote_code)
    rows = []
    for seed in seeds:
        dirs = [adapter_dir(out, task, m, seed) for m in (x, y)]
        if not all(finished_adapter(d) for d in dirs):
            continue
        try:
            pair = [read_adapter(d, base) for d in dirs]
            rows += [{**r, "task": task, "seed": seed} for r in compare_adapters(*pair, seed=seed)]
        except CondLoRAError as e:  # e.g. an adapter whose B stayed zero has no rank-r subspace
            warnings.warn(f"Table 3 skips {task} seed {seed}: {e}", stacklevel=2)
    return rows


def write_study_table3(out_dir: str | Path, tasks: list[str], seeds: list[int], model: str,
                       x: str = "lora", y: str = "condlora", trust_remote_code: bool = False) -> str | None:
    """table3.md / .csv (rows A, B, random; tasks as columns), table3_layers.csv and table3.png."""
    out = Path(out_dir)
    rows = [r for t in tasks for r in compare_runs(out, t, seeds, model, x, y, trust_remote_code)]
    if not rows:
        return None
    done = [t for t in tasks if any(r["task"] == t for r in rows)]
    cell = {(t, k): mean_or_nan([r[k] for r in rows if r["task"] == t]) for t in done for k, _ in KINDS}
    cell.update({(t, "random"): mean_or_nan([r[k + "_random"] for r in rows if r["task"] == t for k, _ in KINDS])
                 for t in done})
    names = [*KINDS, ("random", "random")]
    md = [f"Table 3: φ between {x} and {y} matrices (A: right singular vectors; B: left; i = j = r), "
          "mean over seeds and layers; random = the first adapter against Gaussian matrices. No ΔW row: "
          "φ(ΔW) equals φ(B) by construction (the left singular vectors of B·A span B's columns).", "",
          "| | " + " | ".join(done) + " | Avg. |", "|---" * (len(done) + 2) + "|"]
    csv = ["matrix," + ",".join(done) + ",avg"]
    for key, label in names:
        vals = [cell[(t, key)] for t in done]
        md.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {mean_or_nan(vals):.4f} |")
        csv.append(f"{key}," + ",".join(f"{v:.6f}" for v in vals) + f",{mean_or_nan(vals):.6f}")
    write_text(out / "table3.md", "\n".join(md) + "\n")
    write_text(out / "table3.csv", "\n".join(csv) + "\n")
    _write_layers(out, rows)
    return "\n".join(md) + "\n"


def _write_layers(out: Path, rows: list[dict]) -> None:
    keys = ["task", "seed", "module_type", "layer", "A", "B", "A_random", "B_random"]
    lines = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
    write_text(out / "table3_layers.csv", "\n".join(lines) + "\n")
    layers = sorted({r["layer"] for r in rows})
    columns = {k: (label, [mean_or_nan([r[k] for r in rows if r["layer"] == n]) for n in layers]) for k, label in KINDS}
    random_mean = mean_or_nan([r[k + "_random"] for r in rows for k, _ in KINDS])
    line_plot(out / "table3.png", layers, columns, random_mean)
