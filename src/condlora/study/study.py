"""`condlora study`: the paper's comparison. LR per task x method (Optuna TPE search, a grid searched through
Optuna, the authors' preset or fixed), any set of seeds at that LR, Tables 2 (mean ± 95% CI, paired differences,
t-test and Wilcoxon p, verdicts, sanity gate), 3 and 4, figures, and study.json.

Layout under --output-dir: `search/optuna.db` (the default Optuna storage), `search/<task>/<method>/trial<k>`,
`runs/<task>/<method>/seed<k>`, `progress/<worker>.json`, `study.json`, `table2.{md,csv}` with `table2.png`,
`table2_seeds.png`, `table2_curves.png`, `table3.*`, `table4.{md,csv}`, `figure1.{md,csv}` with
`figure1_<task>_<type>_<A|B>.png`. Re-running skips finished runs and continues
unfinished searches; the tables use every finished seed found on disk, so adding seeds is one more call. Several
workers (processes or machines) can share one search through `--storage URL` (any Optuna RDB URL).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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
from .search import LR_RANGE, NOT_IDENTITY, SearchSetup, parse_lrs, search_grid, search_lr
from .stats import Gate, gate, mean_ci, own_trivial_baseline, trivial_baseline
from .tables import METHOD_LABELS, TASK_LABELS, paired_ttest, settings_line, table_score, write_tables

__all__ = ["PAPER_LR", "StudySettings", "paired_ttest", "parse_seeds", "run_once", "run_seeds", "run_study",
           "search_lr", "tables_only", "write_tables"]

TASKS = tuple(TASK_LABELS)
STUDY_METHODS = tuple(METHOD_LABELS)  # the methods a study can compare: each has its table label
# Learning rates hard-coded by the authors, per task: (LoRA, CondLoRA). Source: github.com/CyberAgentAILab/
# CondLoRA, experiments/<task>/train.sh (commit 07589eb), `LR=` for lora_type lora / conditional_lora.
PAPER_LR = {
    "mnli": (0.000757809165465913, 0.000105521999043283),
    "sst2": (0.000253267522217202, 0.00041369967560273),
    "mrpc": (0.0000836641968785768, 0.000191170236576257),
    "cola": (0.0004862585643, 0.000602555587379099),
    "qnli": (0.000115530990829162, 0.000291557968964229),
    "qqp": (0.000199807699090228, 0.000242588482184581),
    "rte": (0.0000770943216980477, 0.000161750047409374),
    "stsb": (0.00161048057994754, 0.000164898943982061),
}
PRESETS = {"paper": {(t, m): lr for t, lrs in PAPER_LR.items()
                     for m, lr in zip(("lora", "condlora"), lrs, strict=True)}}
PASS_THROUGH = ("model", "glue_dir", "epochs", "batch_size", "max_length", "max_train_samples",
                "max_eval_samples", "r", "alpha", "head_lr", "target_modules", "cond_form", "head", "patience",
                "group_by_length", "precision", "trust_remote_code")
AUTO_GRID = "auto"  # --lr-grid auto: every method its own default grid (runner.method_defaults)
FIGURE1_METHOD = "lora"  # whose adapters Figure 1 analyses (study/figure1.py)
SEEDS_HELP = ("a count N (seeds 0..N-1) or a list of seeds and ranges: 3,4,5 or 3-5 or 0-2,7 (one seed: 7-7); "
              "finished seeds are reused, so --seeds 5 after --seeds 3 trains seeds 3 and 4 only")


def parse_names(text: str | list[str], known: tuple[str, ...], what: str) -> list[str]:
    """Comma-separated task or method names, normalized ('SST-2' -> 'sst2'); errors name the unknown one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for raw in (s.strip() for s in items if s.strip()):
        name = raw.lower().replace("_", "-")
        name = name.replace("-", "") if what == "task" else name
        if name not in known:
            raise ConfigError(f"unknown {what} {raw!r}; choose from {', '.join(known)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError(f"--{what}s: give at least one {what}")
    return out


def _seed_range(part: str) -> range:
    lo, _, hi = part.partition("-")
    if not (lo.strip().isdigit() and (not hi or hi.strip().isdigit())):
        raise ValueError(part)
    a, b = int(lo), int(hi or lo)
    if b < a:
        raise ValueError(part)
    return range(a, b + 1)


def parse_seeds(spec: int | str | Sequence[int]) -> list[int]:
    """Sorted unique seeds from a count N (0..N-1), a list of ints, or '3,4,5' / '3-5' / '0-2,7' (see SEEDS_HELP)."""
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec)
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ConfigError(f"--seeds must be >= 1, got {spec}")
        return list(range(spec))
    try:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        seeds = sorted({s for part in items if str(part).strip() for s in _seed_range(str(part).strip())})
    except (TypeError, ValueError):
        raise ConfigError(f"--seeds: expected {SEEDS_HELP.split(';')[0]}; got {spec!r}") from None
    if not seeds:
        raise ConfigError(f"--seeds: give at least one seed, got {spec!r}")
    return seeds


@dataclass
class StudySettings:
    """Everything that defines a study; `run_args` are passed to every run (TrainConfig fields)."""

    tasks: list[str]
    methods: list[str]
    output_dir: str
    seeds: int | str | list[int] = 3  # a count or a list (see SEEDS_HELP); a sorted list after validation
    lr_search: int | None = None  # TPE trials per task x method
    lr_range: tuple[float, float] = LR_RANGE  # TPE range (log-uniform)
    lr_grid: list[float] | str | None = None  # search every LR of this list instead of TPE; "auto": lr_grids
    lr_grids: dict[str, list[float]] | None = None  # per method: its own default grid (--lr-grid auto)
    lr_preset: str | None = None
    lr: float | None = None  # fixed LR; with a preset, the fallback where the preset has none
    storage: str | None = None  # Optuna RDB URL; default sqlite under output_dir/search
    search_seed: int = 0  # training seed of the search runs and seed of the TPE sampler
    search_only: bool = False
    tables_only: bool = False  # write the tables from the finished runs on disk; train nothing
    quiet: bool = False  # no study progress bars
    run_progress: bool = False  # show each run's own progress bar and summary line
    skip_unlearned: bool = False  # train the other methods of a task only where the reference learned it
    run_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.run_args.get("train_file"):  # own data files: one task (runner/owndata.py)
            from ..runner.train_config import study_task

            self.tasks = study_task(self.tasks, self.run_args)
        else:
            self.tasks = parse_names(self.tasks, TASKS, "task")
        self.methods = parse_names(self.methods, STUDY_METHODS, "method")
        self.seeds = parse_seeds(self.seeds)
        if self.lr_search is not None and self.lr_search < 1:
            raise ConfigError(f"--lr-search must be >= 1 trial, got {self.lr_search}")
        if isinstance(self.lr_grid, str) and self.lr_grid.strip().lower() == AUTO_GRID:
            self.lr_grid, self.lr_grids = None, {m: list(method_defaults(m).lr_grid) for m in self.methods}
        if self.lr_grid is not None:
            self.lr_grid = parse_lrs(self.lr_grid, "--lr-grid")
        self.lr_range = tuple(parse_lrs(self.lr_range, "--lr-range") if isinstance(self.lr_range, str)
                              else self.lr_range)
        if len(self.lr_range) != 2 or not 0 < self.lr_range[0] < self.lr_range[1]:
            raise ConfigError(f"--lr-range needs two learning rates LO,HI with LO < HI, got {self.lr_range}")
        searches = [f for f, v in (("--lr-search", self.lr_search), ("--lr-grid", self.lr_grid or self.lr_grids),
                                   ("--lr-preset", self.lr_preset), ("--lr", self.lr)) if v is not None]
        if self.searched and len(searches) > 1:
            raise ConfigError(f"{' and '.join(searches)} cannot be combined: choose one way to set the LR")
        if self.tables_only and self.search_only:
            raise ConfigError("--tables-only and --search-only cannot be combined")
        if (self.storage or self.search_only) and not self.searched:
            raise ConfigError("--storage and --search-only only make sense with --lr-search N or --lr-grid")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.lr_preset is not None:
            if self.lr_preset not in PRESETS:
                raise ConfigError(f"unknown --lr-preset {self.lr_preset!r}; choose from {', '.join(PRESETS)}")
            missing = [f"{t}/{m}" for t in self.tasks for m in self.methods if (t, m) not in PRESETS[self.lr_preset]]
            if missing and self.lr is None:
                raise ConfigError(f"--lr-preset {self.lr_preset} has no learning rate for {', '.join(missing)}; "
                                  "pass --lr X to use X there, or drop those tasks/methods")

    @property
    def searched(self) -> bool:
        """Whether the LR of each task x method comes from a search (TPE or grid)."""
        return bool(self.lr_search or self.lr_grid or self.lr_grids)

    @property
    def n_trials(self) -> int:
        """Search trials per task x method (before any grid extension; the most over the methods)."""
        if self.lr_grids:
            return max(len(g) for g in self.lr_grids.values())
        return len(self.lr_grid) if self.lr_grid else (self.lr_search or 0)

    def grid(self, method: str) -> list[float] | None:
        """The LR grid `method` searches: --lr-grid's list, else its own default (--lr-grid auto), else None."""
        return self.lr_grid or (self.lr_grids or {}).get(method)


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
    """Write study.json, keeping the LRs that other studies in the folder (other workers) chose for other pairs."""
    mine = record["settings"]
    saved = read_study_record(out).get("lr")
    for t, by_m in saved.items() if isinstance(saved, dict) else ():
        for m, v in by_m.items() if isinstance(by_m, dict) else ():
            if not (t in mine["tasks"] and m in mine["methods"]):
                record["lr"].setdefault(t, {})[m] = v
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
        from ..runner.models import quiet_loading
        from .table3 import write_study_table3

        seeds = sorted({r["seed"] for r in runs if r["method"] in ("lora", cond)})
        with quiet_loading(s.quiet):
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
    (pairs whose LR is not chosen yet are left empty); trains nothing and leaves study.json to the workers."""
    out = Path(s.output_dir)
    saved = _check_same_study(out / "study.json", s, "pass the flags the study was run with")
    if not saved:
        raise ConfigError(f"--tables-only: no study.json in {out}; run the study first")
    cached = _cached_baselines(saved)
    lrs = saved.get("lr") or {}
    record = {"settings": asdict(s), "lr": {t: {m: v for m, v in lrs.get(t, {}).items() if m in s.methods}
                                            for t in s.tasks}, "runs": []}
    return write_outputs(s, record, cached)


def _figure1(s: StudySettings, runs: list[dict[str, Any]]) -> str:
    """Figure 1 (figure1.md/.csv/.png) from the reference LoRA's best adapters; its markdown, or ''."""
    from ..runner.models import quiet_loading
    from .figure1 import write_study_figure1

    seeds = sorted({r["seed"] for r in runs if r["method"] == FIGURE1_METHOD})
    with quiet_loading(s.quiet):
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
        if s.skip_unlearned and not s.search_only and len(s.methods) > 1:
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


def _train_gated(s: StudySettings, record: dict[str, Any], run_fn: RunFn, cached: dict[str, float],
                 progress: Progress) -> None:
    """--skip-unlearned: per task the reference first (LR and seeds); the other methods only if it passed the gate."""
    ref, others = s.methods[0], s.methods[1:]
    for t in s.tasks:
        _train(s, record, [(t, ref)], run_fn)
        g = reference_gate(s, record, t, cached)
        if g.learned:
            _train(s, record, [(t, m) for m in others], run_fn)
            continue
        record.setdefault("skipped", {})[t] = g.reason
        progress.drop([(t, m) for m in others])
        save_record(Path(s.output_dir), record)
        warnings.warn(f"{t}: not learned at this budget ({g.reason}); {', '.join(others)} not trained there "
                      "(--skip-unlearned)", stacklevel=2)
