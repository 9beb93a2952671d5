"""The size frontier of a study: each row's test score (mean ± 95% CI over seeds, as Table 2 computes it) against
its trainable adapter parameters, per task and on the average over the learned tasks, as a table (frontier.md,
frontier.csv) and a figure (frontier.png); with, per row, how many of its runs were still improving when they
hit the epoch cap (their score is then a lower bound).

Works on partial results (a row with one seed is a point without a CI; a row with none is left out, with a note).
Rows of other studies (e.g. the asymmetry study's frozen-factor rows) come in with --extra-runs.

    python -m condlora.study.frontier runs/frontier --extra-runs docs/results/asymmetry --output runs/frontier
    python -m condlora.study.frontier runs/frontier --near 1.5   # rows within 1.5 points of the reference's Avg.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import CondLoRAError, ConfigError
from ..fileio import read_jsonl, write_text
from .frontier_points import Frontier, Point
from .runs import finished_run, read_study_record
from .stats import Summary
from .tables import METHOD_LABELS, TASK_LABELS, build_table2, markdown

__all__ = ["Frontier", "Point", "build_frontier", "frontier_csv", "frontier_markdown", "near_reference",
           "study_runs", "still_improving", "write_frontier"]


def _last_eval_is_best(run_dir: str | None) -> bool:
    """From metrics.jsonl: whether the last evaluation was the best so far (False when there is none)."""
    path = Path(run_dir or "/nonexistent") / "metrics.jsonl"
    evals = [r for r in read_jsonl(path) if "val_score" in r] if path.exists() else []
    return bool(evals) and bool(evals[-1].get("best"))


def still_improving(run: dict[str, Any]) -> bool:
    """Whether a finished run was still improving when it hit the epoch cap: it ran all its steps (no early stop)
    and its best checkpoint is its last evaluation."""
    if run.get("stopped_early"):
        return False
    best, steps, total = run.get("best_step"), run.get("steps_run"), run.get("total_steps")
    if best is None or steps is None:  # an older record: read the evaluations
        return _last_eval_is_best(run.get("run_dir"))
    return (total is None or steps >= total) and best == steps


def _seed_dirs(out: Path) -> list[dict[str, Any]]:
    """Every finished run under out/runs/<task>/<method>/seed<k> (folders moved aside, seed<k>-lr..., left out)."""
    runs = []
    for d in sorted(out.glob("runs/*/*/seed*")):
        if d.name[4:].isdigit() and "test_score" in (done := finished_run(d) or {}):
            runs.append({**done, "task": d.parent.parent.name, "method": d.parent.name, "seed": int(d.name[4:]),
                         "run_dir": str(d)})
    return runs


def _one_lr(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task x method, the runs at the LR most of its seeds were trained with."""
    keep = []
    for pair in sorted({(r["task"], r["method"]) for r in runs}):
        mine = [r for r in runs if (r["task"], r["method"]) == pair]
        lr = Counter(r.get("lr") for r in mine).most_common(1)[0][0]
        keep += [r for r in mine if r.get("lr") == lr]
    return keep


def study_runs(out: str | Path) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """The runs Table 2 of the study in `out` uses (the seeds at the LRs study.json records; while it runs, the
    search trial of a chosen LR stands in for its seed), its rows (reference first) and study.json's record.

    Pairs study.json has no LR for yet (copied records; a folder without study.json): every finished seed<k>
    run at the LR most of its seeds used."""
    from .study import _runs_on_disk  # the study's own rule: the same runs as its --tables-only

    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"no study folder at {out}")
    rec = read_study_record(out)
    lrs = rec.get("lr") if isinstance(rec.get("lr"), dict) else {}
    seed = rec.get("settings", {}).get("search_seed", 0)
    runs = [r for t, by_m in lrs.items() for m, v in by_m.items() for r in _runs_on_disk(out, t, m, v, seed)]
    runs += _one_lr([r for r in _seed_dirs(out) if r["method"] not in lrs.get(r["task"], {})])
    listed = rec.get("settings", {}).get("methods") or []
    methods = [*listed, *(m for m in METHOD_LABELS if m not in listed and any(r["method"] == m for r in runs))]
    return runs, methods, rec


def _improving(runs: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """task | "all" -> (runs still improving at the cap, runs)."""
    out = {}
    for k in sorted({r["task"] for r in runs}) + ["all"]:
        mine = [r for r in runs if k in ("all", r["task"])]
        out[k] = (sum(still_improving(r) for r in mine), len(mine))
    return out


def _params(runs: list[dict[str, Any]]) -> int | None:
    """The trainable adapter parameters most of `runs` recorded (None when none did)."""
    counts = Counter(int(r["trainable_params"]) for r in runs if r.get("trainable_params") is not None)
    return counts.most_common(1)[0][0] if counts else None


def build_frontier(out: str | Path, extra: list[str | Path] = (), tasks: list[str] | None = None) -> Frontier:
    """The frontier of the study in `out` plus the rows of `extra` folders it lacks (on the tasks they measured;
    Avg. only over all of the study's learned tasks, as in Table 2, so rows missing a task have none)."""
    from .study import baselines  # the trivial baselines of Table 2's sanity gate

    runs, methods, rec = study_runs(out)
    for folder in extra:
        more, extra_methods, _ = study_runs(folder)
        new = [m for m in extra_methods if m not in methods]
        runs += [r for r in more if r["method"] in new]
        methods += new
    present = {r["task"] for r in runs}
    tasks = tasks or [k for k in TASK_LABELS if k in present] + sorted(present - set(TASK_LABELS))
    if not methods:
        raise ConfigError(f"no rows in {out}: no study.json and no finished runs under runs/")
    runs = [r for r in runs if r["task"] in tasks]
    cached = {t: v for t, v in (rec.get("baselines") or {}).items() if isinstance(v, (int, float))}
    run_args = rec.get("settings", {}).get("run_args") or {}
    with warnings.catch_warnings():  # a task without readable labels is simply not gated
        warnings.simplefilter("ignore")
        table = build_table2(runs, tasks, methods, baselines(tasks, run_args, cached))
    points, missing = [], []
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        if not mine:
            missing.append(m)
            continue
        points.append(Point(m, _params(mine), table.summary[m], _improving(mine)))
    points.sort(key=lambda p: (p.params is None, p.params or 0, p.method))
    return Frontier(tasks, points, missing, table)


def near_reference(f: Frontier, margin: float) -> list[str]:
    """The reference (the study's first row) and every row whose Avg. lies within `margin` points of its Avg."""
    ref = f.table.methods[0]
    ref_avg = f.table.summary[ref]["avg"].mean
    if math.isnan(ref_avg):
        raise ConfigError(f"{METHOD_LABELS.get(ref, ref)} has no average over the learned tasks yet")
    near = [p.method for p in f.points if p.method != ref and abs(p.summary["avg"].mean - ref_avg) <= margin]
    return [ref, *near]


def _cell(s: Summary, improving: tuple[int, int] | None = None) -> str:
    """'mean ± half (n)'; '↑' where most of its runs were still improving; '' without runs."""
    if s.n == 0:
        return ""
    ci = "" if math.isnan(s.half) else f" ± {s.half:.2f}"
    up = " ↑" if improving and 2 * improving[0] > improving[1] else ""
    return f"{s.mean:.2f}{ci} (n={s.n}){up}"


def frontier_markdown(f: Frontier) -> str:
    """The frontier table as markdown, rows by adapter size, with its caption and notes."""
    learned = ", ".join(TASK_LABELS.get(k, k) for k in f.table.learned)
    rows = [["Row", "Adapter params", *(TASK_LABELS.get(k, k) for k in f.tasks), f"Avg. ({learned})",
             "Still improving at the cap"]]
    for p in f.points:
        k, n = p.improving["all"]
        rows.append([METHOD_LABELS.get(p.method, p.method), f"{p.params:,}" if p.params else "?",
                     *(_cell(p.summary[t], p.improving.get(t)) for t in f.tasks), _cell(p.summary["avg"]),
                     f"{k}/{n}" + (": score is a lower bound" if p.lower_bound else "")])
    text = ("Frontier: test score x100 (mean ± 95% CI over seeds, t with n−1 df, as in Table 2) against trainable "
            "adapter parameters (the head apart). Avg.: over the learned tasks of Table 2, CI from per-seed "
            "averages; blank where a row lacks a task. ↑: most runs of that cell were still improving when they "
            "hit the epoch cap (best checkpoint at the last evaluation, no early stop). Still improving: such "
            "runs / runs of the row.\n\n" + markdown(rows))
    if f.missing:
        text += "\nNo finished run yet (left out): " + ", ".join(METHOD_LABELS.get(m, m) for m in f.missing) + ".\n"
    return text


def frontier_csv(f: Frontier) -> str:
    """One row per frontier row x task (and avg): params, n, mean, CI ends, still-improving runs, full precision."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "params", "task", "n", "mean", "ci_low", "ci_high", "still_improving", "runs"])
    for p in f.points:
        for k in [*f.tasks, "avg"]:
            s = p.summary[k]
            k_imp, n_runs = p.improving.get("all" if k == "avg" else k, (0, 0))
            w.writerow([p.method, p.params if p.params else "", k, s.n, repr(s.mean), repr(s.lo), repr(s.hi),
                        k_imp, n_runs])
    return buf.getvalue()


def write_frontier(f: Frontier, out_dir: str | Path) -> list[str]:
    """frontier.md, frontier.csv and frontier.png under out_dir; returns their names."""
    from .frontier_plot import plot_frontier

    out = Path(out_dir)
    write_text(out / "frontier.md", frontier_markdown(f))
    write_text(out / "frontier.csv", frontier_csv(f))
    plot_frontier(f, out / "frontier.png")
    return ["frontier.md", "frontier.csv", "frontier.png"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m condlora.study.frontier", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="the study folder (study.json, runs/)")
    p.add_argument("--extra-runs", action="append", default=[], metavar="DIR",
                   help="another study's folder whose rows the study lacks are added (repeatable)")
    p.add_argument("--tasks", help="comma-separated tasks, in panel order (default: every task with runs)")
    p.add_argument("--output", help="where frontier.md/.csv/.png go (default: the study folder)")
    p.add_argument("--near", type=float, metavar="POINTS",
                   help="only print the reference and the rows whose Avg. lies within POINTS of its Avg., "
                        "comma-separated; write nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write the frontier table and figure (or, with --near, print the rows near the reference)."""
    args = _parser().parse_args(argv)
    try:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        f = build_frontier(args.study, args.extra_runs, tasks)
        if args.near is not None:
            print(",".join(near_reference(f, args.near)))
            return 0
        names = write_frontier(f, args.output or args.study)
    except CondLoRAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(frontier_markdown(f))
    print(f"wrote {', '.join(str(Path(args.output or args.study) / n) for n in names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
