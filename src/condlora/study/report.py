"""A report of what a study has finished so far (`condlora study --status --report FILE`): every finished training
(search trials and seed runs) per task, the LR search of each task x method, the mean over the finished seeds at the
chosen LR, and a one-seed direction against LoRA. Pure functions over the study folder: nothing is trained and
nothing in the folder is written (the caller writes the report where the user asked).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileio import read_jsonl, write_text
from .progress import read_progress, status_line, union_plan
from .runs import finished_run, read_study_record, run_config, same_run
from .stats import mean_ci
from .tables import TASK_LABELS, markdown, table_score

__all__ = ["REFERENCE", "Finished", "Scan", "build_report", "check_target", "scan_study", "study_plan", "write_report"]

REFERENCE = "lora"  # the method the one-seed directions compare with
SETTINGS = ("model", "head", "epochs", "patience", "group_by_length", "max_length", "batch_size",
            "max_train_samples")
REQUIRED = ("lr", "val_score", "test_score")  # fields a results.json needs to be reported
STUDY_FILES = ("study.json", "table2.md", "table2.csv", "table3.md", "table3.csv", "table4.md", "table4.csv",
               "figure1.md", "figure1.csv")  # the study's own outputs: never a report's name
COLUMNS = ["Method", "Kind", "LR", "Seed", "Val", "Test", "Best step / steps", "Epochs run", "Stopped early",
           "Wall (min)"]


@dataclass(frozen=True)
class Finished:
    """One finished training on disk: its results.json and where it lies (a search trial or a seed run)."""

    task: str
    method: str
    kind: str  # "trial" or "seed"
    index: int  # trial number or seed, from the folder name
    run_dir: Path
    result: dict[str, Any]

    @property
    def test(self) -> float:
        """The test score x100 Table 2 would use (MNLI: matched accuracy)."""
        return 100.0 * table_score({**self.result, "task": self.task})

    @property
    def val(self) -> float:
        """The validation score x100."""
        return 100.0 * float(self.result["val_score"])


@dataclass
class Scan:
    """The run folders of a study: finished ones, ones without results.json, ones whose results.json is unreadable."""

    finished: list[Finished] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)


def _run_dirs(out: Path) -> list[tuple[str, str, str, int, Path]]:
    """(task, method, kind, index, folder) of every trial<k> and seed<k> folder, sorted."""
    found = []
    for kind, root, prefix in (("trial", "search", "trial"), ("seed", "runs", "seed")):
        for d in out.glob(f"{root}/*/*/{prefix}*"):
            if d.is_dir() and d.name[len(prefix):].isdigit():
                found.append((d.parts[-3], d.parts[-2], kind, int(d.name[len(prefix):]), d))
    return sorted(found, key=lambda f: (f[0], f[1], f[2] != "trial", f[3]))


def scan_study(out_dir: str | Path) -> Scan:
    """Every run folder of the study, sorted by task, method, kind (trials first) and number."""
    scan = Scan()
    for task, method, kind, index, d in _run_dirs(Path(out_dir)):
        if not (d / "results.json").exists():
            scan.unfinished.append(d)
        elif isinstance(done := finished_run(d), dict) and all(k in done for k in REQUIRED):
            scan.finished.append(Finished(task, method, kind, index, d, done))
        else:
            scan.unreadable.append(d)
    return scan


def study_plan(out_dir: str | Path) -> dict[str, Any]:
    """Pairs in plan order, trials planned per pair, whether LRs are searched, the search seed and chosen LRs."""
    out = Path(out_dir)
    rec = read_study_record(out)
    s = rec.get("settings", {})
    pairs = [(t, m) for t in s.get("tasks", []) for m in s.get("methods", [])]
    planned = len(s["lr_grid"]) if s.get("lr_grid") else s.get("lr_search")
    grids = s.get("lr_grids") or {}  # --lr-grid auto: each method its own grid
    n_trials = {p: planned or len(grids[p[1]]) for p in pairs if planned or grids.get(p[1])}
    for p, e in union_plan(read_progress(out)).items():
        pairs += [] if p in pairs else [p]
        if e["n_trials"]:
            n_trials.setdefault(p, e["n_trials"])
    chosen = {(t, m): v for t, by_m in rec.get("lr", {}).items() for m, v in by_m.items() if "lr" in v}
    return {"pairs": pairs, "n_trials": n_trials, "searched": bool(planned or grids) if s else None,
            "search_seed": s.get("search_seed", 0), "chosen": chosen}


def _order(pairs: list[tuple[str, str]], scan: Scan) -> dict[str, list[str]]:
    """task -> methods: the planned ones in plan order, then any others found on disk."""
    on_disk = sorted({(f.task, f.method) for f in scan.finished}
                     | {(d.parts[-3], d.parts[-2]) for d in scan.unfinished + scan.unreadable})
    order: dict[str, list[str]] = {}
    for t, m in pairs + [p for p in on_disk if p not in pairs]:
        order.setdefault(t, []).append(m)
    return order


def _fmt(x: Any, spec: str = "g") -> str:
    """A number formatted by `spec`, a bool as yes/no, '?' when missing."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)) and not math.isnan(x):
        return format(x, spec)
    return "?" if x is None else str(x)


def _copy_of(f: Finished, trials: list[Finished]) -> Finished | None:
    """The search trial a seed run was copied from (same method, LR, seed and scores), if any."""
    keys = ("seed", "lr", "val_score", "test_score", "best_step")
    return next((t for t in trials if t.method == f.method and all(t.result.get(k) == f.result.get(k) for k in keys)),
                None)


def _row(f: Finished, trials: list[Finished]) -> list[str]:
    """One finished training as a table row."""
    r, src = f.result, _copy_of(f, trials) if f.kind == "seed" else None
    kind = f"{f.kind} {f.index}" + (f" (copy of trial {src.index})" if src else "")
    wall = r.get("wall_time_s")
    return [f.method, kind, _fmt(r["lr"], ".4g"), _fmt(r.get("seed")), f"{f.val:.2f}", f"{f.test:.2f}",
            f"{_fmt(r.get('best_step'))} / {_fmt(r.get('steps_run'))}", _fmt(r.get("epochs_run")),
            _fmt(r.get("stopped_early")), _fmt(wall / 60 if isinstance(wall, (int, float)) else None, ".1f")]


def _best(runs: list[Finished]) -> Finished | None:
    """The run with the highest validation score (ties: the first, i.e. the lowest trial number)."""
    return max(runs, key=lambda f: f.val, default=None)


def _search_text(trials: list[Finished], planned: int | None, searched: bool | None) -> str:
    """The LR search of one task x method so far: best LR by validation and how many trials finished."""
    if not trials and searched is False:
        return "no LR search in this study"
    count = f"{len(trials)}/{planned} trials finished" if planned else f"{len(trials)} trials finished"
    if planned:
        count += " (search complete)" if len(trials) >= planned else " (search in progress)"
    best = _best(trials)
    if best is None:
        return count
    return f"best LR {best.result['lr']:.4g} (val {best.val:.2f}, trial {best.index}) · {count}"


def _chosen_lr(trials: list[Finished], planned: int | None, chosen: dict[str, Any] | None) -> float | None:
    """The LR the seeds run at: study.json's choice, else the best trial's once the search is complete."""
    if chosen is not None:
        return float(chosen["lr"])
    best = _best(trials)
    return float(best.result["lr"]) if best and planned and len(trials) >= planned else None


def _seeds_text(seeds: list[Finished], lr: float | None) -> str:
    """Mean test score over the finished seeds at the chosen LR (± 95% CI from n = 2), or what is missing."""
    if lr is None:
        return f"{len(seeds)} seed runs finished, chosen LR not known yet" if seeds else "no chosen LR yet"
    mine = [f for f in seeds if same_run(f.result, {"seed": f.index, "method": f.method, "lr": lr})]
    other = f" (+{len(seeds) - len(mine)} at another LR, left out)" if len(mine) < len(seeds) else ""
    if not mine:
        return f"chosen LR {lr:.4g}: no seed run finished yet" + other
    s = mean_ci([f.test for f in mine])
    ci = "" if math.isnan(s.half) else f" ± {s.half:.2f} (95% CI)"
    which = ", ".join(str(f.index) for f in mine)
    return f"chosen LR {lr:.4g}: test {s.mean:.2f}{ci} over n={s.n} seeds ({which})" + other


def _pair_line(task: str, method: str, mine: list[Finished], plan: dict[str, Any], running: int) -> str:
    """One bullet: the LR search and the seed runs of task x method (`running`: its unfinished trials)."""
    trials = [f for f in mine if f.kind == "trial"]
    seeds = [f for f in mine if f.kind == "seed"]
    planned = plan["n_trials"].get((task, method))
    planned = max(planned, len(trials) + running) if planned else planned
    lr = _chosen_lr(trials, planned, plan["chosen"].get((task, method)))
    return f"- {method}: {_search_text(trials, planned, plan['searched'])} · {_seeds_text(seeds, lr)}"


def _direction(methods: list[str], done: list[Finished], seed: int) -> str:
    """Each method's best-by-validation run with the search seed against the reference's (one seed each)."""
    best = {m: _best([f for f in done if f.method == m and f.result.get("seed") == seed]) for m in methods}
    ref = best.get(REFERENCE)
    parts = [f"{m} {b.test - ref.test:+.2f} ({b.test:.2f} vs {ref.test:.2f})"
             for m, b in best.items() if m != REFERENCE and b is not None and ref is not None]
    if not parts:
        return ""
    return (f"Direction only, one seed each (the best-by-validation run with seed {seed}; Δ test vs {REFERENCE}, "
            f"not a significance test): {' · '.join(parts)}\n")


def _task_section(task: str, methods: list[str], scan: Scan, plan: dict[str, Any]) -> str:
    """The markdown of one task: finished trainings, the search per method, the one-seed direction."""
    done = [f for m in methods for f in scan.finished if (f.task, f.method) == (task, m)]
    metric = next((f.result["metric"] for f in done if f.result.get("metric")), "?")
    head = f"## {TASK_LABELS.get(task, task)} (`{task}`, metric: {metric})\n\n"
    if not done:
        return head + "No finished training yet.\n"
    trials = [f for f in done if f.kind == "trial"]
    table = markdown([COLUMNS, *(_row(f, trials) for f in done)])
    running = {m: sum(1 for d in scan.unfinished + scan.unreadable if d.parts[-4:-1] == ("search", task, m))
               for m in methods}
    pairs = "\n".join(_pair_line(task, m, [f for f in done if f.method == m], plan, running[m]) for m in methods)
    direction = _direction(methods, done, plan["search_seed"])
    return (head + table + "\nLR search and seeds (x100; val = validation, test = test set):\n\n" + pairs + "\n"
            + ("\n" + direction if direction else ""))


def _settings_text(scan: Scan, out: Path) -> str:
    """The run settings of the first finished run (config.json "run"), or a note that none is readable."""
    for f in scan.finished:
        if (cfg := run_config(f.run_dir)) is not None:
            items = " · ".join(f"{k} {_fmt(cfg.get(k))}" for k in SETTINGS)
            return f"Run settings (from `{(f.run_dir / 'config.json').relative_to(out)}`): {items}"
    return "Run settings: no finished run with a readable config.json yet"


def _compute_text(scan: Scan) -> str:
    """The trainings finished so far and their summed wall time (seed runs copied from a search trial once)."""
    trials = [f for f in scan.finished if f.kind == "trial"]
    trained = [f for f in scan.finished if f.kind == "trial" or _copy_of(f, trials) is None]
    hours = sum(w for f in trained if isinstance(w := f.result.get("wall_time_s"), (int, float))) / 3600
    return (f"Compute: {len(trained)} trainings finished, {hours:.1f} h of training wall time in all (summed over "
            "trainings; seed runs copied from a search trial counted once)")


def _last_eval(d: Path) -> str:
    """The last evaluation of an unfinished run (from metrics.jsonl), or ''."""
    evals = [r for r in read_jsonl(d / "metrics.jsonl") if "val_score" in r]
    if not evals:
        return ""
    r = evals[-1]
    where = f"epoch {_fmt(r.get('epoch'))}, step {_fmt(r.get('step'))}"
    return f" (last evaluation: {where}, val {_fmt(100 * r['val_score'], '.2f')})"


def _notes(scan: Scan, out: Path) -> str:
    """Run folders left out: not finished (yet), or with an unreadable results.json."""
    lines = [f"- not finished (no results.json: running, interrupted or diverged): `{d.relative_to(out)}`"
             + _last_eval(d) for d in scan.unfinished]
    lines += [f"- skipped: `{(d / 'results.json').relative_to(out)}` is unreadable (corrupt JSON or missing "
              f"{'/'.join(REQUIRED)})" for d in scan.unreadable]
    return "## Left out\n\n" + "\n".join(lines) + "\n" if lines else ""


def build_report(out_dir: str | Path, status: str | None = None, now: float | None = None) -> str:
    """The markdown report of the study in `out_dir` (`status`: its status line; default: computed now)."""
    out = Path(out_dir)
    if not out.is_dir():
        raise ConfigError(f"study folder {out} does not exist")
    scan, plan = scan_study(out), study_plan(out)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() if now is None else now))
    head = (f"# Partial study report: `{out}`\n\nWritten {stamp}; finished trainings only (nothing trained). "
            f"Scores x100.\n\n{_settings_text(scan, out)}\n\n{_compute_text(scan)}\n\n"
            f"Status: {status or status_line(out)}\n\n")
    order = _order(plan["pairs"], scan)
    body = "\n".join(_task_section(t, ms, scan, plan) for t, ms in order.items()) or "No run folder yet.\n"
    notes = _notes(scan, out)
    return head + body + ("\n" + notes if notes else "")


def check_target(out_dir: str | Path, path: str | Path) -> None:
    """ConfigError unless `out_dir` is a folder and `path` can hold a report (not a folder, not a study file)."""
    path, out = Path(path), Path(out_dir)
    if not out.is_dir():
        raise ConfigError(f"study folder {out} does not exist")
    if path.is_dir():
        raise ConfigError(f"--report {path} is a folder; give a file name such as partial.md")
    if path.name in STUDY_FILES and path.resolve().parent == out.resolve():
        raise ConfigError(f"--report {path} would overwrite the study's own {path.name}; choose another name")


def write_report(out_dir: str | Path, path: str | Path, status: str | None = None) -> str:
    """Build the report and write it atomically to `path` (checked by `check_target`); returns it."""
    check_target(out_dir, path)
    text = build_report(out_dir, status)
    write_text(path, text)
    return text
