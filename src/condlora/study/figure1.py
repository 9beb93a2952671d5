"""The study's Figure 1: are a trained LoRA's conversion matrices similar across layers, beyond chance?

Kim et al. (2024) motivate CondLoRA with the cross-layer subspace similarity φ of the conversion matrices
W0→A and W0→B of a trained LoRA (`condlora.analyze.report.analyze_module_type`, i = j = r). Per task, module
type and matrix, this step reads the reference method's best adapter of every seed and reports the mean
off-diagonal φ next to two controls through the same pipeline: a random adapter (Gaussian A, B) on the model's
real W0, and all-Gaussian W0, A, B (the paper's baseline). Only a margin over the real-W0 control is evidence that
training made the conversions similar: W0's own anisotropy already makes random adapters look alike.
"""

from __future__ import annotations

import math
import statistics
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from ..analyze.matrices import read_adapter
from ..analyze.report import analyze_module_type, base_loader, heatmap, short_names
from ..errors import CondLoRAError
from ..fileio import write_text
from .tables import mean_or_nan

MATRICES = ("A", "B")
CONTROL, GAUSSIAN = "random_adapter_", "random_"
SPREAD = 2.0  # LoRA exceeds the control when mean(LoRA - control) > SPREAD x its std over seeds
COLUMNS = ("task", "module_type", "matrix", "seeds", "lora", "lora_sd", "control_real_w0", "control_real_w0_sd",
           "control_gaussian", "margin", "margin_sd", "exceeds")


def adapter_dir(out: Path, task: str, method: str, seed: int) -> Path:
    """Where the study keeps the best adapter of task x method x seed."""
    return out / "runs" / task / method / f"seed{seed}" / "best_adapter"


def finished_adapter(path: Path) -> bool:
    """Whether `path` is the best adapter of a finished run (a run still training rewrites it)."""
    return path.is_dir() and (path.parent / "results.json").exists()


def analyze_adapter(path: Path, base, seed: int) -> dict[str, dict]:
    """`analyze_module_type` of every module type of the adapter at `path`, keyed by short name ('query')."""
    adapter = read_adapter(path, base)
    shorts, cache = short_names(list(adapter.types)), {}
    with tqdm(disable=True) as bar:
        return {shorts[t]: analyze_module_type(layers, None, None, adapter.forms.get(t, "auto"), seed, bar, cache)
                for t, layers in adapter.types.items()}


def analyze_task(out: Path, task: str, seeds: list[int], base, method: str) -> dict[int, dict[str, dict]]:
    """Per seed with a readable adapter: its per-module-type results; a warning for every seed left out."""
    missing = [s for s in seeds if not finished_adapter(adapter_dir(out, task, method, s))]
    if missing:
        where = out / "runs" / task / method / "seed<k>" / "best_adapter"
        warnings.warn(f"Figure 1 skips {task} seed{'s' * (len(missing) > 1)} {', '.join(map(str, missing))}: "
                      f"no adapter of a finished run at {where}", stacklevel=2)
    results = {}
    for seed in (s for s in seeds if s not in missing):
        path = adapter_dir(out, task, method, seed)
        try:
            results[seed] = analyze_adapter(path, base, seed)
        except (CondLoRAError, OSError) as e:  # e.g. a B that stayed zero has no rank-r subspace
            warnings.warn(f"Figure 1 skips {task} seed {seed}: {e}", stacklevel=2)
    return results


def _num(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def exceeds(margins: list[float]) -> bool | None:
    """Whether LoRA beats the control: mean margin > SPREAD x std with 2+ seeds, margin > 0 with one; None if NaN."""
    if not margins or any(math.isnan(m) for m in margins):
        return None
    mean = statistics.fmean(margins)
    return mean > SPREAD * statistics.stdev(margins) if len(margins) > 1 else mean > 0


def task_rows(task: str, per_seed: dict[int, dict[str, dict]]) -> list[dict]:
    """One row per module type x matrix: means over seeds of LoRA, both controls, and the margin's verdict."""
    rows = []
    types = list(dict.fromkeys(t for res in per_seed.values() for t in res))
    for short in types:
        for k in MATRICES:
            means = [res[short]["mean_off_diagonal"] for res in per_seed.values() if short in res]
            lora, ctrl = [_num(m[k]) for m in means], [_num(m[CONTROL + k]) for m in means]
            margins = [x - c for x, c in zip(lora, ctrl, strict=True)]
            rows.append({"task": task, "module_type": short, "matrix": k, "seeds": len(means),
                         "lora": mean_or_nan(lora), "lora_sd": _sd(lora), "control_real_w0": mean_or_nan(ctrl),
                         "control_real_w0_sd": _sd(ctrl),
                         "control_gaussian": mean_or_nan([_num(m[GAUSSIAN + k]) for m in means]),
                         "margin": mean_or_nan(margins), "margin_sd": _sd(margins), "exceeds": exceeds(margins)})
    return rows


def write_heatmaps(out: Path, task: str, results: dict[str, dict], method: str, seed: int) -> list[str]:
    """figure1_<task>_<type>_<A|B>.png: layer × layer φ of one seed's conversion matrices; the file names."""
    files = []
    for short, res in results.items():
        for k in MATRICES:
            name = f"figure1_{task}_{short}_{k}.png"
            m = {kind: ("n/a" if v is None else f"{v:.3f}") for kind, v in res["mean_off_diagonal"].items()}
            heatmap(out / name, res["phi"][k], res["layers"],
                    f"{task} {short}: φ of W0→{k} ({method}, seed {seed}), i=j={res['i']}\n"
                    f"mean off-diagonal φ = {m[k]}; random A, B on real W0 = {m[CONTROL + k]}")
            files.append(name)
    return files


def task_sentence(task: str, rows: list[dict]) -> str:
    """'<task>: cross-layer similarity ... exceeds / does not exceed the random-adapter control' (+ which cells)."""
    yes = [f"{r['module_type']} W0→{r['matrix']}" for r in rows if r["exceeds"]]
    head = f"**{task}**: cross-layer similarity of the conversion matrices"
    if yes and len(yes) == len(rows):
        return f"{head} exceeds the random-adapter control."
    if not yes:
        return f"{head} does not exceed the random-adapter control."
    return f"{head} exceeds the random-adapter control for {', '.join(yes)} only, not for the other cells."


def _fmt(v: float, sd: float = math.nan) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:.3f}" if math.isnan(sd) else f"{v:.3f} ± {sd:.3f}"


def _verdict(x: bool | None) -> str:
    return "n/a" if x is None else ("yes" if x else "no")


def _csv_cell(v: object) -> str:
    if v is None or isinstance(v, bool):
        return _verdict(v)
    return f"{v:.6f}" if isinstance(v, float) else str(v)


def caption(method: str, rows: list[dict]) -> str:
    """The markdown caption: what is measured and which rule decides 'exceeds'."""
    rule = (f"with 2+ seeds, LoRA exceeds the control when the mean over seeds of (LoRA − control) is larger than "
            f"{SPREAD:g} × its standard deviation over seeds (± values are standard deviations over seeds)")
    if any(r["seeds"] == 1 for r in rows):
        rule += "; with one seed (no spread to compare with) only the values: LoRA > control"
    return (f"Figure 1 (Kim et al. 2024): mean off-diagonal subspace similarity φ across layers (i = j = r) of the "
            f"conversion matrices W0→A and W0→B of `{method}`'s best adapters, mean over seeds. Controls through "
            f"the same pipeline: Gaussian A, B on the model's real W0 (the random-adapter control, seeded by the "
            f"training seed) and all-Gaussian W0, A, B (the paper's baseline). Rule: {rule}.")


def render(method: str, rows: list[dict], tasks: list[str]) -> tuple[str, str]:
    """figure1.md and figure1.csv texts."""
    md = [caption(method, rows), "",
          "| task | module | matrix | seeds | LoRA | random adapter on real W0 | Gaussian | LoRA − control | exceeds |",
          "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['task']} | {r['module_type']} | W0→{r['matrix']} | {r['seeds']} | {_fmt(r['lora'], r['lora_sd'])} "
           f"| {_fmt(r['control_real_w0'], r['control_real_w0_sd'])} | {_fmt(r['control_gaussian'])} "
           f"| {_fmt(r['margin'], r['margin_sd'])} | {_verdict(r['exceeds'])} |" for r in rows]
    md += [""] + [f"- {task_sentence(t, [r for r in rows if r['task'] == t])}" for t in tasks]
    csv = [",".join(COLUMNS)] + [",".join(_csv_cell(r[c]) for c in COLUMNS) for r in rows]
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def write_study_figure1(out_dir: str | Path, tasks: list[str], seeds: list[int], model: str, method: str = "lora",
                        trust_remote_code: bool = False) -> str | None:
    """figure1.md / .csv and seed heatmaps for every task with a readable `method` adapter; the markdown or None."""
    out, rows, done = Path(out_dir), [], []
    base = base_loader(model, None, trust_remote_code)
    for task in tasks:
        per_seed = analyze_task(out, task, seeds, base, method)
        if not per_seed:
            continue
        first = min(per_seed)
        write_heatmaps(out, task, per_seed[first], method, first)
        rows += task_rows(task, per_seed)
        done.append(task)
    if not rows:
        return None
    md, csv = render(method, rows, done)
    write_text(out / "figure1.md", md)
    write_text(out / "figure1.csv", csv)
    return md
