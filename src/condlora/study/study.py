"""`condlora study`: the paper's comparison. LR per task x method (Optuna TPE search, a grid searched through
Optuna, the authors' preset or fixed), any set of seeds at that LR, Tables 2 (mean ± 95% CI, paired differences,
t-test and Wilcoxon p, verdicts, sanity gate), 3 and 4, figures, and study.json.

Layout under --output-dir: `search/optuna.db` (the default Optuna storage), `search/<task>/<method>/trial<k>`,
`runs/<task>/<method>/seed<k>`, `progress/<worker>.json`, `study.json`, `table2.{md,csv}` with `table2.png`,
`table2_seeds.png`, `table2_curves.png`, `table3.*`, `table4.{md,csv}`, `figure1.{md,csv}` with
`figure1_<task>_<type>_<A|B>.png`. Re-running skips finished runs and continues
unfinished searches; the tables use every finished seed found on disk, so adding seeds is one more call. Several
workers (processes or machines) can share one search through `--storage URL` (any Optuna RDB URL); workers
on one machine started with the same flags and `--share` split the task x method pairs (study/share.py).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import CondLoRAError, ConfigError
from ..fileio import write_json
from ..runner.method_defaults import method_defaults
from .plots import plot_search, write_plots
from .progress import Progress
from .runs import (
    RunFn,
    finished_run,
    found_runs,
    read_study_record,
    run_config,
    run_once,
    run_seeds,
    same_run,
    train_run,
)
from .search import NOT_IDENTITY, SearchSetup, search_grid, search_lr
from .settings import FIGURE1_METHOD, PAPER_LR, PRESETS, TASKS, StudySettings, parse_seeds
from .share import train_shared
from .stats import Gate, gate, mean_ci, own_trivial_baseline, trivial_baseline
from .tables import METHOD_LABELS, paired_ttest, settings_line, table_score, write_tables

__all__ = ["PAPER_LR", "StudySettings", "paired_ttest", "parse_seeds", "run_once", "run_seeds", "run_study",
           "search_lr", "tables_only", "write_tables"]


def _progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=quiet, leave=False)


def choose_lr(task: str, method: str, s: StudySettings, base_cfg: dict[str, Any], run_fn: RunFn,
              progress=None) -> dict[str, Any]:
    """The LR of task x method: searched, from the preset, or fixed (--lr, else the train default)."""
    if s.searched:
        storage = s.storage or f"sqlite:///{Path(s.output_dir).resolve() / 'search' / 'optuna.db'}"
        Path(s.output_dir, "search").mkdir(parents=True, exist_ok=True)
        setup = SearchSetup(storage, s.output_dir, run_fn, seed=s.search_seed, progress=progress)
        if s.grid(method):  # the grid grows past an edge where the best LR sits
            return search_grid(task, method, base_cfg, s.grid(method), setup)
        return search_lr(task, method, base_cfg, s.n_trials, setup, lr_range=s.lr_range)
    if s.lr_preset and (task, method) in PRESETS[s.lr_preset]:
        return {"lr": PRESETS[s.lr_preset][(task, method)], "source": f"preset {s.lr_preset}"}
    if s.lr is not None:
        return {"lr": s.lr, "source": "--lr"}
    return {"lr": method_defaults(method).lr, "source": "default (the method's own)"}


def _versions() -> dict[str, str]:
    from ..runner.train import versions

    return versions()


def _check_same_study(path: Path, s: StudySettings, hint: str = "use another --output-dir") -> dict[str, Any]:
    """The saved study.json record (empty if none); an error if its run settings differ (seeds may differ)."""
    if not path.exists():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    old = saved.get("settings", {}).get("run_args", {})
    new = json.loads(json.dumps(s.run_args, default=str))
    diff = sorted(k for k in set(old) | set(new) if k not in NOT_IDENTITY and old.get(k) != new.get(k))
    if diff:
        raise CondLoRAError(f"{path} was made with other run settings ({', '.join(diff)}); {hint}")
    return saved


def baselines(tasks: list[str], run_args: dict[str, Any], cached: dict[str, float]) -> dict[str, float]:
    """The trivial baseline (x100) of each task on its test set; cached ones kept; unreadable data left out."""
    out = {}
    for t in tasks:
        if t in cached:
            out[t] = cached[t]
            continue
        try:
            out[t] = (trivial_baseline(t, run_args.get("glue_dir"), run_args.get("max_eval_samples")) if t in TASKS
                      else own_trivial_baseline(run_args))
        except (CondLoRAError, OSError, ImportError) as e:
            warnings.warn(f"no trivial baseline for {t} (the sanity gate is skipped there): {e}", stacklevel=2)
    return out


def _header(runs: list[dict[str, Any]], run_args: dict[str, Any]) -> str:
    """Table 2's settings line, from the first run's recorded config (else the study's run arguments)."""
    cfg = next((c for r in runs if (c := run_config(r["run_dir"])) is not None), None)
    return settings_line(cfg or {"model": "minilm", **run_args}, {int(r["seed"]) for r in runs})


def save_record(out: Path, record: dict[str, Any]) -> None:
    """Write study.json, keeping the LRs that other studies in the folder (other workers) chose for pairs whose LR
    this one has not chosen (yet)."""
    saved = read_study_record(out).get("lr")
    for t, by_m in saved.items() if isinstance(saved, dict) else ():
        for m, v in by_m.items() if isinstance(by_m, dict) else ():
            record["lr"].setdefault(t, {}).setdefault(m, v)
    write_json(out / "study.json", record)


def write_outputs(s: StudySettings, record: dict[str, Any], cached: dict[str, float]) -> dict[str, Any]:
    """Tables 2, 3, 4 and the figures from every finished seed on disk; fills record's runs/baselines/tables."""
    out = Path(s.output_dir)
    runs = [r for t in s.tasks for m in s.methods if m in record["lr"].get(t, {})
            for r in _runs_on_disk(out, t, m, record["lr"][t][m], s.search_seed if s.tables_only else None)]
    record["runs"], record["baselines"] = runs, baselines(s.tasks, s.run_args, cached)
    record["tables"], t2 = write_tables(runs, s.tasks, s.methods, out, _header(runs, s.run_args),
                                        record["baselines"])
    record["figures"] = write_plots(t2, runs, out)
    # Table 3 sets LoRA against CondLoRA: the paper's form where the study has it (as before), else the general
    cond = next((m for m in ("condlora", "condlora-general") if m in s.methods), None)
    if "lora" in s.methods and cond:
        from ..analyze.report import torch_threads
        from ..runner.models import quiet_loading
        from .table3 import write_study_table3

        seeds = sorted({r["seed"] for r in runs if r["method"] in ("lora", cond)})
        with quiet_loading(s.quiet), torch_threads(1):
            table3 = write_study_table3(out, s.tasks, seeds, str(s.run_args.get("model", "minilm")), y=cond,
                                        trust_remote_code=bool(s.run_args.get("trust_remote_code")))
        record["tables"] += "\n" + (table3 or "")
    if FIGURE1_METHOD in s.methods:
        record["tables"] += _figure1(s, runs)
    return record


def _runs_on_disk(out: Path, task: str, method: str, chosen: dict[str, Any], search_seed: int | None) -> list[dict]:
    """The finished seeds at the chosen LR; with a `search_seed` (--tables-only, while workers run), the search
    trial of the chosen LR stands in for that seed until the study has copied it."""
    runs = found_runs(out, task, method, chosen["lr"])
    trial = finished_run(chosen["run_dir"]) if chosen.get("run_dir") and search_seed is not None else None
    want = {"seed": search_seed, "method": method, "lr": chosen["lr"]}
    if trial is not None and search_seed not in {r["seed"] for r in runs} and same_run(trial, want):
        runs = sorted([*runs, {**trial, "task": task, "run_dir": chosen["run_dir"]}], key=lambda r: r["seed"])
    return runs


def _cached_baselines(saved: dict[str, Any]) -> dict[str, float]:
    """The trivial baselines a saved study.json holds (unknown ones left out, to be read again)."""
    return {t: v for t, v in saved.get("baselines", {}).items() if isinstance(v, (int, float)) and not math.isnan(v)}


def tables_only(s: StudySettings) -> dict[str, Any]:
    """--tables-only: Tables 2-4 and the figures from the finished runs on disk, at the LRs study.json records
    or, for pairs it lacks (all of them in a folder of copied records), their finished seeds' LR (pairs without
    either are left empty); trains nothing and leaves study.json to the workers."""
    out = Path(s.output_dir)
    saved = _check_same_study(out / "study.json", s, "pass the flags the study was run with")
    cached = _cached_baselines(saved)
    lrs = saved.get("lr") or {}
    record = {"settings": asdict(s), "lr": {t: {m: v for m, v in lrs.get(t, {}).items() if m in s.methods}
                                            for t in s.tasks}, "runs": []}
    for t in s.tasks:  # --share workers record a pair's LR when they reach it; its finished seeds tell it before
        for m in s.methods:
            if m not in record["lr"][t] and (lr := _lr_of_seeds(out, t, m)) is not None:
                record["lr"][t][m] = {"lr": lr, "source": "the LR its finished seeds were trained at"}
    if not saved and not any(record["lr"].values()):
        raise ConfigError(f"--tables-only: no study.json and no finished seed run in {out}; run the study first")
    return write_outputs(s, record, cached)


def _lr_of_seeds(out: Path, task: str, method: str) -> float | None:
    """The one LR at which the finished seeds of task x method were trained (seeds train only at the chosen LR);
    None if there are none, or if they disagree."""
    lrs = {done.get("lr") for d in Path(out, "runs", task, method).glob("seed*")
           if d.name[4:].isdigit() and (done := finished_run(d)) is not None}
    return lrs.pop() if len(lrs) == 1 and None not in lrs else None


def _figure1(s: StudySettings, runs: list[dict[str, Any]]) -> str:
    """Figure 1 (figure1.md/.csv/.png) from the reference LoRA's best adapters; its markdown, or ''."""
    from ..analyze.report import torch_threads
    from ..runner.models import quiet_loading
    from .figure1 import write_study_figure1

    seeds = sorted({r["seed"] for r in runs if r["method"] == FIGURE1_METHOD})
    with quiet_loading(s.quiet), torch_threads(1):
        md = write_study_figure1(s.output_dir, s.tasks, seeds, str(s.run_args.get("model", "minilm")),
                                 FIGURE1_METHOD, bool(s.run_args.get("trust_remote_code")))
    return "\n" + md if md else ""


def run_study(s: StudySettings, run_fn: RunFn = train_run) -> dict[str, Any]:
    """Choose LRs, run the seeds, write study.json, the tables and figures; returns the study.json record."""
    if s.tables_only:
        return tables_only(s)
    out = Path(s.output_dir)
    cached = _cached_baselines(_check_same_study(out / "study.json", s))
    record: dict[str, Any] = {"settings": asdict(s), "versions": _versions(), "lr": {}, "runs": [], "complete": False}
    pairs = [(t, m) for t in s.tasks for m in s.methods]
    reused = s.search_seed if s.searched and s.search_seed in s.seeds else None
    progress = Progress(out, pairs, s.n_trials, [] if s.search_only else s.seeds, reused)
    run_fn, ok = progress.wrap(run_fn), False
    try:
        if s.share:
            _train_shared(s, record, run_fn, cached, progress)
        elif s.gated:
            _train_gated(s, record, run_fn, cached, progress)
        else:
            _train(s, record, pairs, run_fn)
        if not s.search_only:
            write_outputs(s, record, cached)
            record["complete"] = True
            save_record(out, record)
        ok = True
    finally:
        progress.finish(ok)
    return record


def _train(s: StudySettings, record: dict[str, Any], pairs: list[tuple[str, str]], run_fn: RunFn) -> None:
    """The LR of every pair (search, preset or fixed), then its seeds (unless --search-only)."""
    out = Path(s.output_dir)
    base = {**s.run_args, "quiet": s.quiet or not s.run_progress}
    with _progress(len(pairs) * s.n_trials, "LR search", s.quiet or not s.searched) as bar:
        for t, m in pairs:
            record["lr"].setdefault(t, {})[m] = choose_lr(t, m, s, base, run_fn, bar)
            save_record(out, record)
    if s.searched:
        ticks = sorted({lr for m in s.methods for lr in s.grid(m) or ()}) or None
        lo, hi = (ticks[0], ticks[-1]) if ticks else s.lr_range
        plot_search(record["lr"], out / "search.png", (lo / 1.5, hi * 1.5), ticks=ticks)
    if s.search_only:
        return
    with _progress(len(pairs) * len(s.seeds), "runs", s.quiet) as bar:
        for t, m in pairs:
            chosen = record["lr"][t][m]
            reuse = {s.search_seed: chosen["run_dir"]} if chosen.get("run_dir") else None
            record["runs"] += run_seeds(t, m, chosen["lr"], base, s.seeds, out, run_fn, bar, reuse)
            save_record(out, record)


def reference_gate(s: StudySettings, record: dict[str, Any], task: str, cached: dict[str, float]) -> Gate:
    """Table 2's sanity gate of `task`: whether the reference (first method) clearly beat the trivial baseline."""
    ref = s.methods[0]
    runs = found_runs(s.output_dir, task, ref, record["lr"][task][ref]["lr"])
    baseline = baselines([task], s.run_args, cached).get(task, math.nan)
    return gate(mean_ci([100.0 * table_score(r) for r in runs]), baseline, METHOD_LABELS[ref])


def _learned(s: StudySettings, record: dict[str, Any], task: str, cached: dict[str, float],
             progress: Progress) -> bool:
    """Whether the reference learned `task` (Table 2's gate); if not, the task's other methods are left out."""
    g = reference_gate(s, record, task, cached)
    if g.learned:
        return True
    others = s.methods[1:]
    record.setdefault("skipped", {})[task] = g.reason
    progress.drop([(task, m) for m in others])
    save_record(Path(s.output_dir), record)
    warnings.warn(f"{task}: not learned at this budget ({g.reason}); {', '.join(others)} not trained there "
                  "(--skip-unlearned)", stacklevel=2)
    return False


def _train_gated(s: StudySettings, record: dict[str, Any], run_fn: RunFn, cached: dict[str, float],
                 progress: Progress) -> None:
    """--skip-unlearned: per task the reference first (LR and seeds); the other methods only if it passed the gate."""
    ref, others = s.methods[0], s.methods[1:]
    for t in s.tasks:
        _train(s, record, [(t, ref)], run_fn)
        if _learned(s, record, t, cached, progress):
            _train(s, record, [(t, m) for m in others], run_fn)


def _train_shared(s: StudySettings, record: dict[str, Any], run_fn: RunFn, cached: dict[str, float],
                  progress: Progress) -> None:
    """--share: each task x method pair trained by the first worker to claim it (study/share.py); with
    --skip-unlearned a task's other methods wait for its reference and its gate."""
    ref, gated = s.methods[0], s.gated

    def train(pair: tuple[str, str]) -> list[tuple[str, str]]:
        _train(s, record, [pair], run_fn)
        if gated and pair[1] == ref and not _learned(s, record, pair[0], cached, progress):
            return [(pair[0], m) for m in s.methods[1:]]
        return []

    def ready(pair: tuple[str, str], pending: list[tuple[str, str]]) -> bool:
        return not gated or pair[1] == ref or (pair[0], ref) not in pending

    train_shared(s.output_dir, [(t, m) for t in s.tasks for m in s.methods], train, ready)
