"""The study's tables: Table 2 (GLUE scores, Δ and paired t-tests) and Table 4 (parameters, speed).

Pure functions over a list of run results (the dicts `condlora.runner.train.train` returns), plus renderers to
Markdown, CSV and a bar chart. Scores are shown x100 with two decimals, as in the paper.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import atomic_write, write_text

TASK_LABELS = {"mnli": "MNLI", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA",
               "qnli": "QNLI", "qqp": "QQP", "rte": "RTE", "stsb": "STS-B"}
TASK_METRICS = {"mnli": "acc (matched)", "sst2": "acc", "mrpc": "acc", "cola": "MCC",
                "qnli": "acc", "qqp": "acc", "rte": "acc", "stsb": "Pearson"}
METHOD_LABELS = {"lora": "LoRA", "condlora": "CondLoRA", "lora-frozen-a": "LoRA (frozen A)",
                 "condlora-frozen-a": "CondLoRA (frozen A)", "lora-frozen-b": "LoRA (frozen B)",
                 "condlora-frozen-b": "CondLoRA (frozen Θ_B)", "condlora-general": "CondLoRA (general form)",
                 "full": "Full fine-tuning", "head": "Head only"}

# Published numbers (Kim et al., LREC-COLING 2024, Tables 2 and 4: roberta-base, GLUE dev).
# Only the 8-task averages, the trainable-parameter counts and the training speeds are given there; the
# per-task cells of the paper's Table 2 could not be found in a citable source (searched the pages/docs
# corpora and github.com/CyberAgentAILab/CondLoRA, whose README has no results), so they are left blank.
PUBLISHED_SOURCE = "published (Kim et al. 2024), roberta-base"
PUBLISHED_AVG = {"lora": 83.38, "condlora": 83.42}
PUBLISHED_PARAMS = {"lora": 294_912, "condlora": 24_576}
PUBLISHED_SPEED = {"lora": 39.7, "condlora": 40.3}


def paired_ttest(a: dict[int, float], b: dict[int, float]) -> tuple[float, int]:
    """Two-sided paired t-test of b vs a over the seeds both have: (p-value, n pairs); p is NaN when n < 2."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return math.nan, len(seeds)
    p = stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds]).pvalue
    return float(p), len(seeds)


@dataclass
class Table2:
    """Per-method, per-task scores (x100) over seeds, with Δ and p-values against the first method."""

    tasks: list[str]
    methods: list[str]
    scores: dict[str, dict[str, dict[int, float]]]  # method -> task -> seed -> score x100
    mean: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> task|"avg" -> mean
    std: dict[str, dict[str, float]] = field(default_factory=dict)
    delta: dict[str, dict[str, float]] = field(default_factory=dict)  # methods[1:] only
    pvalue: dict[str, dict[str, float]] = field(default_factory=dict)


def mean_or_nan(xs: list[float]) -> float:
    """The mean of `xs`, NaN when empty."""
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


def seed_averages(by_task: dict[str, dict[int, float]], tasks: list[str]) -> dict[int, float]:
    """Per-seed average over `tasks`, for the seeds present in every task."""
    common = set.intersection(*(set(by_task.get(t, {})) for t in tasks)) if tasks else set()
    return {s: mean_or_nan([by_task[t][s] for t in tasks]) for s in sorted(common)}


def table_score(result: dict) -> float:
    """The score a run contributes to Table 2: its test score; MNLI: matched accuracy, as the paper reports."""
    if result["task"] == "mnli" and "matched_accuracy" in result.get("test_metrics", {}):
        return float(result["test_metrics"]["matched_accuracy"])
    return float(result["test_score"])


def collect_scores(runs: list[dict]) -> dict[str, dict[str, dict[int, float]]]:
    """method -> task -> seed -> table score x100, from run result dicts."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for r in runs:
        out.setdefault(r["method"], {}).setdefault(r["task"], {})[int(r["seed"])] = 100.0 * table_score(r)
    return out


def build_table2(runs: list[dict], tasks: list[str], methods: list[str]) -> Table2:
    """Means, stds, Avg. column, Δ and paired t-test p-values (vs methods[0]) from run results."""
    scores = collect_scores(runs)
    t = Table2(tasks, methods, {m: scores.get(m, {}) for m in methods})
    for m in methods:
        by_task = t.scores[m]
        t.mean[m] = {k: mean_or_nan(list(by_task.get(k, {}).values())) for k in tasks}
        t.std[m] = {k: _std(list(by_task.get(k, {}).values())) for k in tasks}
        t.mean[m]["avg"] = mean_or_nan([t.mean[m][k] for k in tasks])
        t.std[m]["avg"] = _std(list(seed_averages(by_task, tasks).values()))
    base = methods[0]
    for m in methods[1:]:
        t.delta[m] = {k: t.mean[m][k] - t.mean[base][k] for k in [*tasks, "avg"]}
        t.pvalue[m] = {k: paired_ttest(t.scores[base].get(k, {}), t.scores[m].get(k, {}))[0] for k in tasks}
        t.pvalue[m]["avg"] = paired_ttest(seed_averages(t.scores[base], tasks), seed_averages(t.scores[m], tasks))[0]
    return t


@dataclass
class Table4Row:
    """One method's cost: trainable parameters (adapter and head) and training speed."""

    method: str
    adapter_params: list[int]  # distinct values over runs (the head differs by task; the adapter should not)
    head_params: list[int]
    examples_per_sec: float  # mean over runs
    params_ratio: float  # adapter params / first method's
    speed_ratio: float  # examples/s / first method's


def build_table4(runs: list[dict], methods: list[str]) -> list[Table4Row]:
    """Table 4 rows: parameters and mean training examples/s per method, ratios vs methods[0]."""
    rows = []
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        rows.append(Table4Row(
            m, sorted({int(r["trainable_params"]) for r in mine}), sorted({int(r["head_params"]) for r in mine}),
            mean_or_nan([float(r["examples_per_sec"]) for r in mine]), math.nan, math.nan))
    base = rows[0]
    for row in rows:
        p0 = base.adapter_params[-1] if base.adapter_params else 0
        row.params_ratio = row.adapter_params[-1] / p0 if row.adapter_params and p0 else math.nan
        row.speed_ratio = row.examples_per_sec / base.examples_per_sec if base.examples_per_sec else math.nan
    return rows


def _num(x: float, fmt: str = ".2f", signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return ""
    return format(x, ("+" if signed else "") + fmt)


def _pval(p: float) -> str:
    return "n/a" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _ints(xs: list[int]) -> str:
    return "" if not xs else (f"{xs[0]:,}" if len(xs) == 1 else f"{xs[0]:,}–{xs[-1]:,}")


def table2_rows(t: Table2) -> list[list[str]]:
    """Table 2 as display rows (header first): methods, Δ, p-values, published references."""
    cols = [*t.tasks, "avg"]
    rows = [["Method", *(TASK_LABELS[k] for k in t.tasks), "Avg."]]
    for m in t.methods:
        rows.append([METHOD_LABELS[m], *(_cell(t.mean[m][k], t.std[m][k]) for k in cols)])
    base = METHOD_LABELS[t.methods[0]]
    for m in t.methods[1:]:
        rows.append([f"Δ {METHOD_LABELS[m]} − {base}", *(_num(t.delta[m][k], signed=True) for k in cols)])
        rows.append([f"p ({METHOD_LABELS[m]} vs {base}, paired t)", *(_pval(t.pvalue[m][k]) for k in cols)])
    for m in t.methods:
        if m in PUBLISHED_AVG:
            rows.append([f"{METHOD_LABELS[m]} ({PUBLISHED_SOURCE})", *([""] * len(t.tasks)), f"{PUBLISHED_AVG[m]:.2f}"])
    return rows


def table4_rows(rows: list[Table4Row]) -> list[list[str]]:
    """Table 4 as display rows (header first), with the published values beside ours."""
    base = METHOD_LABELS[rows[0].method]
    out = [["Method", "Trainable params (adapter)", "Head params", "Examples/s (train)",
            f"Params vs {base}", f"Speed vs {base}", "Params (published, roberta-base)",
            "Examples/s (published, roberta-base)"]]
    for r in rows:
        pub_p = PUBLISHED_PARAMS.get(r.method)
        pub_s = PUBLISHED_SPEED.get(r.method)
        out.append([METHOD_LABELS[r.method], _ints(r.adapter_params), _ints(r.head_params),
                    _num(r.examples_per_sec, ".1f"), _num(r.params_ratio, ".3f"), _num(r.speed_ratio, ".3f"),
                    f"{pub_p:,}" if pub_p else "", f"{pub_s:.1f}" if pub_s else ""])
    return out


def markdown(rows: list[list[str]]) -> str:
    """A GitHub Markdown table from display rows (first row is the header)."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(["---"] * len(rows[0])) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def table2_csv(t: Table2) -> str:
    """Table 2 as tidy CSV: one row per (kind, method) with full-precision numbers; kinds mean/std/n/delta/p."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = [*t.tasks, "avg"]
    w.writerow(["kind", "method", *cols])
    for m in t.methods:
        w.writerow(["mean", m, *(repr(t.mean[m][k]) for k in cols)])
        w.writerow(["std", m, *(repr(t.std[m][k]) for k in cols)])
        w.writerow(["n", m, *(len(t.scores[m].get(k, {})) for k in t.tasks), len(seed_averages(t.scores[m], t.tasks))])
    for m in t.methods[1:]:
        w.writerow(["delta", m, *(repr(t.delta[m][k]) for k in cols)])
        w.writerow(["p_value", m, *(repr(t.pvalue[m][k]) for k in cols)])
    for m in t.methods:
        if m in PUBLISHED_AVG:
            w.writerow(["published_avg_8_tasks", m, *([""] * len(t.tasks)), PUBLISHED_AVG[m]])
    return buf.getvalue()


def table4_csv(rows: list[Table4Row]) -> str:
    """Table 4 as CSV (params as 'a' or 'a-b' when they differ between tasks)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "adapter_params", "head_params", "examples_per_sec", "params_ratio", "speed_ratio",
                "published_params", "published_examples_per_sec"])
    for r in rows:
        w.writerow([r.method, "-".join(map(str, r.adapter_params)), "-".join(map(str, r.head_params)),
                    repr(r.examples_per_sec), repr(r.params_ratio), repr(r.speed_ratio),
                    PUBLISHED_PARAMS.get(r.method, ""), PUBLISHED_SPEED.get(r.method, "")])
    return buf.getvalue()


def plot_table2(t: Table2, path: str | Path) -> None:
    """Grouped bar chart of Table 2 (mean ± std over seeds per task and method), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [*t.tasks, "avg"]
    width = 0.8 / len(t.methods)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(cols), 3.6))
    for i, m in enumerate(t.methods):
        xs = [j + (i - (len(t.methods) - 1) / 2) * width for j in range(len(cols))]
        errs = [0.0 if math.isnan(t.std[m][k]) else t.std[m][k] for k in cols]
        ax.bar(xs, [t.mean[m][k] for k in cols], width, yerr=errs, capsize=3, label=METHOD_LABELS[m])
    ax.set_xticks(range(len(cols)), [TASK_LABELS.get(k, "Avg.") for k in cols])
    ax.set_ylabel("score x100 (test = GLUE dev)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def plot_search(lrs: dict[str, dict[str, dict]], path: str | Path,
                lr_range: tuple[float, float] = (1e-5, 3e-3), ticks: list[float] | None = None) -> None:
    """Validation score against learning rate of every search trial, one panel per task, written as PNG.

    `ticks`: label these learning rates on the x axis (a grid search's LRs)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, by_m in lrs.items() if any("trials" in v for v in by_m.values())]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for m, v in sorted(lrs[task].items(), key=lambda mv: list(METHOD_LABELS).index(mv[0])):  # fixed colours
            done = [t for t in v.get("trials", []) if t["state"] == "COMPLETE"]
            dots = ax.scatter([t["lr"] for t in done], [100 * t["val_score"] for t in done], s=14,
                              label=METHOD_LABELS[m])
            ax.axvline(v["lr"], color=dots.get_facecolor()[0], lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(*lr_range)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if ticks:
            ax.set_xticks(ticks, [f"{t:.0e}" for t in ticks], fontsize=7)
        ax.set_title(f"{TASK_LABELS[task]} (dashed: chosen LR)", fontsize=9)
        ax.set_xlabel("learning rate")
    axes[0][0].set_ylabel("validation score x100")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def caption(t: Table2, model: str, n_seeds: int) -> str:
    """The text printed above Table 2: model, seeds and the metric of each task."""
    metrics = ", ".join(f"{TASK_LABELS[k]} {TASK_METRICS[k]}" for k in t.tasks)
    return (f"Table 2: {model}, test = official GLUE dev set, mean ± std over {n_seeds} seed(s), x100 ({metrics}).\n"
            f"Δ and paired t-test p-values compare each method with {METHOD_LABELS[t.methods[0]]} over seeds. "
            "Published averages are over all 8 GLUE tasks, so they are only comparable when all 8 tasks are run.\n")


def write_tables(runs: list[dict], tasks: list[str], methods: list[str], out_dir: str | Path,
                 model: str = "", n_seeds: int = 0, plot: bool = True) -> str:
    """Write table2/table4 .md and .csv (and table2.png) under out_dir; returns both Markdown tables."""
    out = Path(out_dir)
    t2 = build_table2(runs, tasks, methods)
    t4 = build_table4(runs, methods)
    md2 = caption(t2, model, n_seeds) + "\n" + markdown(table2_rows(t2))
    md4 = ("Table 4: trainable parameters and training examples/s (mean over this study's runs).\n\n"
           + markdown(table4_rows(t4)))
    write_text(out / "table2.md", md2)
    write_text(out / "table2.csv", table2_csv(t2))
    write_text(out / "table4.md", md4)
    write_text(out / "table4.csv", table4_csv(t4))
    if plot:
        plot_table2(t2, out / "table2.png")
    return md2 + "\n" + md4
