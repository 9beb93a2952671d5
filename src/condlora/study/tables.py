"""The study's tables: Table 2 (GLUE scores with 95% CIs, paired differences, tests, verdicts, sanity gate) and
Table 4 (parameters, speed).

Pure functions over a list of run results (the dicts `condlora.runner.train.train` returns), plus renderers to
Markdown and CSV (the figures are in `plots.py`). Scores are shown x100 with two decimals, as in the paper;
the statistics and their rules are in `stats.py`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import write_text
from .stats import CONFIDENCE, EQUIVALENCE_MARGIN, Comparison, Gate, Summary, compare, gate, mean_ci, paired_ttest

__all__ = ["METHOD_LABELS", "TASK_LABELS", "Table2", "build_table2", "build_table4", "collect_scores",
           "paired_ttest", "table_score", "write_tables"]  # paired_ttest: re-exported from stats.py

TASK_LABELS = {"mnli": "MNLI", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA",
               "qnli": "QNLI", "qqp": "QQP", "rte": "RTE", "stsb": "STS-B"}
TASK_METRICS = {"mnli": "acc (matched)", "sst2": "acc", "mrpc": "acc", "cola": "MCC",
                "qnli": "acc", "qqp": "acc", "rte": "acc", "stsb": "Pearson"}
METHOD_LABELS = {"lora": "LoRA", "condlora": "CondLoRA (paper form)", "condlora-general": "CondLoRA",
                 "lora-frozen-a": "LoRA B-only (A frozen)", "lora-frozen-b": "LoRA A-only (B frozen)",
                 "condlora-frozen-a": "CondLoRA Θ_B-only (Θ_A frozen)",
                 "condlora-frozen-b": "CondLoRA Θ_A-only (Θ_B frozen)",
                 "full": "Full fine-tuning", "head": "Head only",
                 "lora-r1": "LoRA r=1", "lora-r2": "LoRA r=2", "vera": "VeRA r=256", "vera-r1024": "VeRA r=1024",
                 "fourierft": "FourierFT n=1000"}

# Published numbers (Kim et al., LREC-COLING 2024, Tables 2 and 4: roberta-base, GLUE dev).
# Only the 8-task averages, the trainable-parameter counts and the training speeds are given there; the
# per-task cells of the paper's Table 2 could not be found in a citable source (searched the pages/docs
# corpora and github.com/CyberAgentAILab/CondLoRA, whose README has no results), so they are left blank.
PUBLISHED_SOURCE = "published (Kim et al. 2024), roberta-base"
PUBLISHED_AVG = {"lora": 83.38, "condlora": 83.42}
PUBLISHED_PARAMS = {"lora": 294_912, "condlora": 24_576}
PUBLISHED_SPEED = {"lora": 39.7, "condlora": 40.3}
# Pairs compared with each other besides the reference when both are in a study (Table 2c): CondLoRA's two
# forms; Zhu et al.'s asymmetry claim, that training B (A frozen) beats training A (B frozen).
CONTRASTS = (("condlora-general", "condlora"), ("lora-frozen-a", "lora-frozen-b"),
             ("condlora-frozen-a", "condlora-frozen-b"))


@dataclass
class Table2:
    """Per-method, per-task scores (x100) over seeds with 95% CIs; comparisons with the reference (first method)
    and the sanity gate of each task."""

    tasks: list[str]
    methods: list[str]
    scores: dict[str, dict[str, dict[int, float]]]  # method -> task -> seed -> score x100
    summary: dict[str, dict[str, Summary]] = field(default_factory=dict)  # method -> task|"avg"
    comparison: dict[str, dict[str, Comparison]] = field(default_factory=dict)  # methods[1:] -> task|"avg"
    gates: dict[str, Gate] = field(default_factory=dict)  # task -> gate of the reference
    contrasts: dict[tuple[str, str], dict[str, Comparison]] = field(default_factory=dict)  # (a, b) -> a − b

    @property
    def learned(self) -> list[str]:
        """The tasks that pass the sanity gate (the ones averaged)."""
        return [k for k in self.tasks if self.gates[k].learned]


def mean_or_nan(xs: list[float]) -> float:
    """The mean of `xs`, NaN when empty."""
    return statistics.fmean(xs) if xs else math.nan


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


def _average(t: Table2, m: str) -> Summary:
    """Avg. over the learned tasks: the mean of their means; the CI from per-seed averages (common seeds)."""
    per_seed = mean_ci(list(seed_averages(t.scores[m], t.learned).values()))
    return Summary(per_seed.n, mean_or_nan([t.summary[m][k].mean for k in t.learned]), per_seed.half)


def build_table2(runs: list[dict], tasks: list[str], methods: list[str],
                 baselines: dict[str, float] | None = None) -> Table2:
    """Means ± CI, the sanity gate (vs `baselines`, x100 per task) and comparisons with methods[0]."""
    scores = collect_scores(runs)
    t = Table2(tasks, methods, {m: scores.get(m, {}) for m in methods})
    for m in methods:
        t.summary[m] = {k: mean_ci(list(t.scores[m].get(k, {}).values())) for k in tasks}
    ref = methods[0]
    t.gates = {k: gate(t.summary[ref][k], (baselines or {}).get(k, math.nan), METHOD_LABELS[ref]) for k in tasks}
    for m in methods:
        t.summary[m]["avg"] = _average(t, m)
    t.comparison = {m: _paired(t, m, ref) for m in methods[1:]}
    t.contrasts = {(a, b): _paired(t, a, b) for a, b in CONTRASTS if a in methods and b in methods}
    return t


def _paired(t: Table2, a: str, b: str) -> dict[str, Comparison]:
    """a − b per task and on the average over the learned tasks, paired by seed."""
    out = {k: compare(t.scores[b].get(k, {}), t.scores[a].get(k, {})) for k in t.tasks}
    out["avg"] = compare(seed_averages(t.scores[b], t.learned), seed_averages(t.scores[a], t.learned))
    return out


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


def _ints(xs: list[int]) -> str:
    return "" if not xs else (f"{xs[0]:,}" if len(xs) == 1 else f"{xs[0]:,}–{xs[-1]:,}")


def is_glue(tasks: list[str]) -> bool:
    """Whether every task is a GLUE task (own data: no published GLUE rows or columns beside ours)."""
    return all(t in TASK_LABELS for t in tasks)


def table4_rows(rows: list[Table4Row], published: bool = True) -> list[list[str]]:
    """Table 4 as display rows (header first), with the published values beside ours (GLUE studies)."""
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
    return out if published else [r[:-2] for r in out]


def markdown(rows: list[list[str]]) -> str:
    """A GitHub Markdown table from display rows (first row is the header)."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(["---"] * len(rows[0])) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def _no_runs_note(rows: list[Table4Row]) -> str:
    """A line under Table 4 naming the methods without a finished run (their rows are empty)."""
    empty = [METHOD_LABELS[r.method] for r in rows if not r.adapter_params]
    if not empty:
        return ""
    return (f"\nNo finished run of {', '.join(empty)} in this study (not trained yet, or skipped by "
            "--skip-unlearned on every task the reference did not learn): the row stays empty.\n")


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




def _ci_cell(s: Summary) -> str:
    if s.n == 0 or math.isnan(s.mean):
        return "–"
    return f"{s.mean:.2f}" if math.isnan(s.half) else f"{s.mean:.2f} ± {s.half:.2f}"


def _delta_cell(c: Comparison) -> str:
    d = c.diff
    if d.n == 0:
        return "–"
    return f"{d.mean:+.2f} [CI n/a]" if math.isnan(d.half) else f"{d.mean:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]"


def seeds_text(seeds: set[int] | list[int]) -> str:
    """Seeds as compact ranges: {0, 1, 2, 5} -> '0–2, 5'."""
    out, run = [], []
    for s in sorted(seeds):
        if run and s != run[-1] + 1:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}–{run[-1]}")
            run = []
        run.append(s)
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}–{run[-1]}")
    return ", ".join(out) or "none"


def _task_label(t: Table2, k: str) -> str:
    if k == "avg":
        return "Avg. (learned tasks)"
    return TASK_LABELS.get(k, k) + ("" if t.gates[k].learned else " †")


def table2_rows(t: Table2) -> list[list[str]]:
    """Table 2 in the paper's shape (methods x tasks, mean ± CI), the trivial baseline and published rows."""
    rows = [["Method", *(_task_label(t, k) for k in t.tasks), f"Avg. ({len(t.learned)} learned)"]]
    for m in t.methods:
        rows.append([METHOD_LABELS[m], *(_ci_cell(t.summary[m][k]) for k in [*t.tasks, "avg"])])
    rows.append(["Trivial baseline (majority class; 0 for MCC, Pearson)",
                 *(_num(t.gates[k].baseline) or "?" for k in t.tasks), ""])
    for m in t.methods if is_glue(t.tasks) else ():
        if m in PUBLISHED_AVG:
            rows.append([f"{METHOD_LABELS[m]} ({PUBLISHED_SOURCE})", *([""] * len(t.tasks)), f"{PUBLISHED_AVG[m]:.2f}"])
    return rows


def comparison_rows(t: Table2) -> list[list[str]]:
    """Table 2b: per task (and Avg.) and method: n, mean ± CI, Δ to the reference [CI], p-values, verdict."""
    ref = METHOD_LABELS[t.methods[0]]
    rows = [["Task", "Method", "n", "Score (95% CI)", f"Δ vs {ref} [95% CI]", "pairs", "p (t)", "p (Wilcoxon)",
             "Verdict"]]
    for k in [*t.tasks, "avg"]:
        for m in t.methods:
            s = t.summary[m][k]
            row = [_task_label(t, k), METHOD_LABELS[m], str(s.n), _ci_cell(s)]
            if m == t.methods[0]:
                rows.append(row + ["reference", "", "", "", ""])
                continue
            c = t.comparison[m][k]
            rows.append(row + [_delta_cell(c), str(c.diff.n), _pval(c.p_t), _pval(c.p_wilcoxon), _said(t, k, c)])
    return rows


def contrast_rows(t: Table2) -> list[list[str]]:
    """Table 2c: per task (and Avg.), each CONTRASTS pair a − b: Δ [CI], pairs, p-values, verdict."""
    rows = [["Task", "Contrast", "Δ [95% CI]", "pairs", "p (t)", "p (Wilcoxon)", "Verdict"]]
    for k in [*t.tasks, "avg"]:
        for (a, b), by_task in t.contrasts.items():
            c = by_task[k]
            rows.append([_task_label(t, k), f"{METHOD_LABELS[a]} − {METHOD_LABELS[b]}", _delta_cell(c),
                         str(c.diff.n), _pval(c.p_t), _pval(c.p_wilcoxon), _said(t, k, c)])
    return rows


def _said(t: Table2, k: str, c: Comparison) -> str:
    """The verdict shown for task (or "avg") k: n/a on a task the reference did not learn."""
    return c.verdict if k == "avg" or t.gates[k].learned else "n/a: not learned"


def gate_notes(t: Table2) -> str:
    """One line per task the sanity gate leaves out (or could not check), with the numbers."""
    lines = [f"† {TASK_LABELS.get(k, k)}: not learned at this budget ({t.gates[k].reason}); left out of Avg."
             for k in t.tasks if not t.gates[k].learned]
    lines += [f"{TASK_LABELS.get(k, k)}: {t.gates[k].reason}." for k in t.tasks
              if t.gates[k].learned and math.isnan(t.gates[k].baseline)]
    return "\n".join(lines) + ("\n" if lines else "")


def settings_line(run_cfg: dict[str, Any], seeds: set[int] | list[int]) -> str:
    """The header of Table 2: model, head, training budget (max epochs, patience, train size) and seeds."""
    patience, epochs = run_cfg.get("patience"), run_cfg.get("epochs", "?")
    budget = f"≤ {format(epochs, 'g') if isinstance(epochs, (int, float)) else epochs} epochs, " + (
        f"early stopping with patience {patience}" if patience else "no early stopping")
    if run_cfg.get("max_train_samples"):
        budget += f", ≤ {run_cfg['max_train_samples']} train examples"
    return (f"model {run_cfg.get('model', '?')} · head {run_cfg.get('head') or 'default'} · budget {budget} · "
            f"seeds {seeds_text(seeds)}")


def caption(t: Table2, header: str) -> str:
    """The text above Table 2: the settings line, metrics, and how to read the cells."""
    metrics = ", ".join(f"{TASK_LABELS.get(k, k)} {TASK_METRICS.get(k, 'main metric')}" for k in t.tasks)
    ref, conf = METHOD_LABELS[t.methods[0]], round(100 * CONFIDENCE)
    glue = is_glue(t.tasks)
    test = "official GLUE dev set" if glue else "--test-file"  # own data
    published = (" Published averages are over all 8 GLUE tasks on roberta-base: comparable only then." if glue
                 else "")
    return (f"Table 2: {header}.\nTest = {test}, x100 ({metrics}). Cells: mean ± half-width of the "
            f"{conf}% CI over seeds (t, n−1 df; no ± when n = 1). Avg.: over the tasks {ref} learned (its mean beats "
            "the trivial baseline by more than 1 point and by more than its CI half-width), CI from per-seed "
            f"averages. Δ: method − {ref}, paired by seed; p (t): paired t-test; p (Wilcoxon): signed-rank test; "
            f"verdict: on par if the Δ CI lies within ±{EQUIVALENCE_MARGIN:g} point, better / worse if it lies above "
            f"/ below 0, else undecided (n/a on tasks not learned).{published}\n")


def table2_csv(t: Table2) -> str:
    """Table 2 as tidy CSV, one row per task (or avg) x method, full precision; published averages last."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "method", "source", "n", "mean", "ci_low", "ci_high", "delta", "delta_ci_low",
                "delta_ci_high", "pairs", "p_t", "p_wilcoxon", "verdict", "baseline", "learned"])
    for k in [*t.tasks, "avg"]:
        g = t.gates.get(k)
        for m in t.methods:
            s = t.summary[m][k]
            c = t.comparison.get(m, {}).get(k)
            cmp = _comparison_cells(c) if c else [""] * 7
            w.writerow([k, m, "this study", s.n, repr(s.mean), repr(s.lo), repr(s.hi), *cmp,
                        repr(g.baseline) if g else "", g.learned if g else ""])
    for m in t.methods if is_glue(t.tasks) else ():
        if m in PUBLISHED_AVG:
            w.writerow(["avg_8_tasks", m, PUBLISHED_SOURCE, "", PUBLISHED_AVG[m], *[""] * 11])
    return buf.getvalue()


def contrasts_csv(t: Table2) -> str:
    """Table 2c as tidy CSV: one row per task (or avg) x pair, delta = method_a − method_b, full precision."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "method_a", "method_b", "delta", "delta_ci_low", "delta_ci_high", "pairs", "p_t",
                "p_wilcoxon", "verdict"])
    for k in [*t.tasks, "avg"]:
        for (a, b), by_task in t.contrasts.items():
            w.writerow([k, a, b, *_comparison_cells(by_task[k])])
    return buf.getvalue()


def _comparison_cells(c: Comparison) -> list:
    """CSV cells of a comparison: delta, its CI, pairs, p-values, verdict (full precision)."""
    return [repr(c.diff.mean), repr(c.diff.lo), repr(c.diff.hi), c.diff.n, repr(c.p_t), repr(c.p_wilcoxon), c.verdict]


def write_tables(runs: list[dict], tasks: list[str], methods: list[str], out_dir: str | Path, header: str = "",
                 baselines: dict[str, float] | None = None) -> tuple[str, Table2]:
    """Write table2/table4 .md and .csv (and table2_contrasts.csv, see CONTRASTS) under out_dir; returns both
    Markdown tables and Table 2."""
    out = Path(out_dir)
    t2 = build_table2(runs, tasks, methods, baselines)
    t4 = build_table4(runs, methods)
    md2 = (caption(t2, header) + "\n" + markdown(table2_rows(t2)) + "\n" + gate_notes(t2)
           + "\nTable 2b: each method against " + METHOD_LABELS[methods[0]] + ".\n\n" + markdown(comparison_rows(t2)))
    if t2.contrasts:
        md2 += ("\nTable 2c: pairs of rows against each other (Δ = first − second, paired by seed; verdicts as in "
                "Table 2b).\n\n" + markdown(contrast_rows(t2)))
        write_text(out / "table2_contrasts.csv", contrasts_csv(t2))
    md4 = ("Table 4: trainable parameters and training examples/s (mean over this study's runs, measured while "
           "the study's workers shared the cores; `condlora bench` measures speed alone).\n\n"
           + markdown(table4_rows(t4, published=is_glue(tasks))) + _no_runs_note(t4))
    write_text(out / "table2.md", md2)
    write_text(out / "table2.csv", table2_csv(t2))
    write_text(out / "table4.md", md4)
    write_text(out / "table4.csv", table4_csv(t4))
    return md2 + "\n" + md4, t2
