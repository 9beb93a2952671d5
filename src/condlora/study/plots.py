"""The study's figures, written atomically as PNG next to the tables: Table 2 as bars (mean ± 95% CI), every seed
as a dot per task and method, validation curves of the reference and CondLoRA, and the LR search."""

from __future__ import annotations

import math
from pathlib import Path

from ..fileio import atomic_write, read_jsonl
from .tables import METHOD_LABELS, TASK_LABELS, Table2


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colour(method: str) -> str:
    """A fixed colour per method, the same in every figure."""
    return f"C{list(METHOD_LABELS).index(method) % 10}"


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    _pyplot().close(fig)


def _panels(n: int, width: float = 3.2, height: float = 3.0):
    """A row of n panels (a figure and its axes list)."""
    fig, axes = _pyplot().subplots(1, max(n, 1), figsize=(width * max(n, 1), height), squeeze=False)
    return fig, list(axes[0])


def plot_table2(t: Table2, path: str | Path) -> None:
    """Grouped bar chart of Table 2: mean ± 95% CI over seeds per task (and Avg. of learned tasks) and method."""
    plt = _pyplot()
    cols = [*t.tasks, "avg"]
    width = 0.8 / len(t.methods)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(cols), 3.6))
    for i, m in enumerate(t.methods):
        xs = [j + (i - (len(t.methods) - 1) / 2) * width for j in range(len(cols))]
        errs = [0.0 if math.isnan(t.summary[m][k].half) else t.summary[m][k].half for k in cols]
        ax.bar(xs, [t.summary[m][k].mean for k in cols], width, yerr=errs, capsize=3, label=METHOD_LABELS[m],
               color=_colour(m))
    names = [TASK_LABELS.get(k, k) + ("" if t.gates[k].learned else " †") for k in t.tasks]
    ax.set_xticks(range(len(cols)), [*names, "Avg. (learned)"])
    ax.set_ylabel("score x100 (test = GLUE dev), 95% CI")
    ax.legend(fontsize=7)
    _save(fig, path)


def baseline_in_view(baseline: float, values: list[float]) -> bool:
    """Whether a baseline line fits a panel of `values` without squashing them: within one span of their range
    (at least 10 points) from it."""
    if math.isnan(baseline):
        return False
    if not values:
        return True
    lo, hi = min(values), max(values)
    room = max(hi - lo, 10.0)
    return lo - room <= baseline <= hi + room


def plot_seeds(t: Table2, path: str | Path) -> None:
    """One panel per task: every seed's score as a dot per method (x), the mean as a bar, the trivial baseline."""
    fig, axes = _panels(len(t.tasks), width=max(2.6, 0.8 + 0.5 * len(t.methods)), height=3.6)
    for ax, k in zip(axes, t.tasks, strict=False):
        for i, m in enumerate(t.methods):
            by_seed = t.scores[m].get(k, {})
            n = len(by_seed)
            xs = [i + 0.25 * (j - (n - 1) / 2) / max(n - 1, 1) for j in range(n)]
            ax.scatter(xs, [by_seed[s] for s in sorted(by_seed)], s=16, color=_colour(m), zorder=3)
            if n:
                ax.hlines(t.summary[m][k].mean, i - 0.3, i + 0.3, color="black", lw=1.5, zorder=4)
        base, note = t.gates[k].baseline, ""
        if baseline_in_view(base, [v for m in t.methods for v in t.scores[m].get(k, {}).values()]):
            ax.axhline(base, color="grey", ls=":", lw=1)
        elif not math.isnan(base):  # far from the dots: a line there would squash them together
            note = f"\ntrivial baseline {base:.2f}, off scale"
        ax.set_xticks(range(len(t.methods)), [METHOD_LABELS[m] for m in t.methods], rotation=40, ha="right",
                      fontsize=7)
        ax.set_xlim(-0.6, len(t.methods) - 0.4)
        ax.set_title(TASK_LABELS.get(k, k) + ("" if t.gates[k].learned else " († not learned)") + note, fontsize=9)
    axes[0].set_ylabel("test score x100")
    fig.suptitle("one dot per seed; bar: mean; dotted: trivial baseline", fontsize=8)
    _save(fig, path)


def validation_curves(runs: list[dict], tasks: list[str], methods: list[str]
                      ) -> dict[str, tuple[int, dict[str, list[tuple[int, float]]]]]:
    """task -> (seed, method -> [(step, val score x100)]) from metrics.jsonl of the lowest seed all `methods` have."""
    files = {(r["task"], r["method"], int(r["seed"])): Path(r["run_dir"]) / "metrics.jsonl"
             for r in runs if r.get("run_dir")}
    out = {}
    for k in tasks:
        seeds = sorted(s for (t, m, s) in files if t == k and m == methods[0]
                       and all(files.get((k, x, s), Path("/nonexistent")).exists() for x in methods))
        if seeds:
            curves = {m: [(int(r["step"]), 100 * float(r["val_score"])) for r in read_jsonl(files[k, m, seeds[0]])]
                      for m in methods}
            out[k] = (seeds[0], curves)
    return out


def plot_curves(curves: dict[str, tuple[int, dict[str, list[tuple[int, float]]]]], path: str | Path) -> bool:
    """Validation score against step, one panel per task, one line per method; False (no file) without curves."""
    if not curves:
        return False
    fig, axes = _panels(len(curves))
    for ax, (k, (seed, by_m)) in zip(axes, curves.items(), strict=True):
        for m, pts in by_m.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=_colour(m),
                    label=METHOD_LABELS[m])
        ax.set_title(f"{TASK_LABELS.get(k, k)}, seed {seed}", fontsize=9)
        ax.set_xlabel("step")
    axes[0].set_ylabel("validation score x100")
    axes[0].legend(fontsize=7)
    _save(fig, path)
    return True


def curve_methods(methods: list[str]) -> list[str]:
    """The methods whose validation curves are drawn: the reference and CondLoRA (else the second method)."""
    other = "condlora" if "condlora" in methods[1:] else (methods[1] if len(methods) > 1 else None)
    return [methods[0]] + ([other] if other else [])


def write_plots(t: Table2, runs: list[dict], out_dir: str | Path) -> list[str]:
    """table2.png, table2_seeds.png and (where runs wrote metrics.jsonl) table2_curves.png; returns the names."""
    out = Path(out_dir)
    plot_table2(t, out / "table2.png")
    plot_seeds(t, out / "table2_seeds.png")
    names = ["table2.png", "table2_seeds.png"]
    if plot_curves(validation_curves(runs, t.tasks, curve_methods(t.methods)), out / "table2_curves.png"):
        names.append("table2_curves.png")
    return names


def plot_search(lrs: dict[str, dict[str, dict]], path: str | Path,
                lr_range: tuple[float, float] = (1e-5, 3e-3), ticks: list[float] | None = None) -> None:
    """Validation score against learning rate of every search trial, one panel per task, written as PNG.

    `ticks`: label these learning rates on the x axis (a grid search's LRs)."""
    import matplotlib.ticker

    tasks = [t for t, by_m in lrs.items() if any("trials" in v for v in by_m.values())]
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks, strict=False):
        for m, v in sorted(lrs[task].items(), key=lambda mv: list(METHOD_LABELS).index(mv[0])):
            done = [t for t in v.get("trials", []) if t["state"] == "COMPLETE"]
            ax.scatter([t["lr"] for t in done], [100 * t["val_score"] for t in done], s=14, color=_colour(m),
                       label=METHOD_LABELS[m])
            ax.axvline(v["lr"], color=_colour(m), lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(*lr_range)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if ticks:
            ax.set_xticks(ticks, [f"{t:.0e}" for t in ticks], fontsize=7)
        ax.set_title(f"{TASK_LABELS.get(task, task)} (dashed: chosen LR)", fontsize=9)
        ax.set_xlabel("learning rate")
    axes[0].set_ylabel("validation score x100")
    axes[0].legend(fontsize=7)
    _save(fig, path)
