"""`condlora study`: the paper's comparison. LR per task x method (Optuna TPE search or the authors' preset),
N seeds at that LR, paired t-tests, Tables 2 and 4, and study.json.

Layout under --output-dir: `search/optuna.db` (the default Optuna storage), `search/<task>/<method>/trial<k>`,
`runs/<task>/<method>/seed<k>`, `study.json`, `table2.{md,csv,png}`, `table4.{md,csv}`. Re-running skips
finished runs and continues unfinished searches. Several workers (processes or machines) can share one search
through `--storage URL` (any Optuna RDB URL); together they run exactly --lr-search trials per study.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CondLoRAError, ConfigError
from .fileio import write_json
from .tables import METHOD_LABELS, TASK_LABELS, paired_ttest, plot_search, write_tables

__all__ = ["PAPER_LR", "StudySettings", "add_arguments", "main", "paired_ttest", "run_seeds", "run_study",
           "search_lr", "write_tables"]

TASKS = tuple(TASK_LABELS)
METHODS = tuple(METHOD_LABELS)
LR_RANGE = (1e-5, 3e-3)
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
                "max_eval_samples", "r", "alpha", "target_modules", "trust_remote_code")
# run arguments that may differ between workers or re-runs of one study
NOT_IDENTITY = ("quiet", "glue_dir", "trust_remote_code")
RunFn = Callable[[dict[str, Any]], dict[str, Any]]


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


@dataclass
class StudySettings:
    """Everything that defines a study; `run_args` are passed to every run (TrainConfig fields)."""

    tasks: list[str]
    methods: list[str]
    output_dir: str
    seeds: int = 3
    lr_search: int | None = None  # trials per task x method
    lr_preset: str | None = None
    lr: float | None = None  # fixed LR; with a preset, the fallback where the preset has none
    storage: str | None = None  # Optuna RDB URL; default sqlite under output_dir/search
    search_seed: int = 0  # training seed of the search runs and seed of the TPE sampler
    search_only: bool = False
    quiet: bool = False  # no study progress bars
    run_progress: bool = False  # show each run's own progress bar and summary line
    run_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tasks = parse_names(self.tasks, TASKS, "task")
        self.methods = parse_names(self.methods, METHODS, "method")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {self.seeds}")
        if self.lr_search is not None and self.lr_search < 1:
            raise ConfigError(f"--lr-search must be >= 1 trial, got {self.lr_search}")
        if self.lr_search is not None and (self.lr_preset or self.lr is not None):
            raise ConfigError("--lr-search cannot be combined with --lr-preset or --lr")
        if (self.storage or self.search_only) and not self.lr_search:
            raise ConfigError("--storage and --search-only only make sense with --lr-search N_TRIALS")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.lr_preset is not None:
            if self.lr_preset not in PRESETS:
                raise ConfigError(f"unknown --lr-preset {self.lr_preset!r}; choose from {', '.join(PRESETS)}")
            missing = [f"{t}/{m}" for t in self.tasks for m in self.methods if (t, m) not in PRESETS[self.lr_preset]]
            if missing and self.lr is None:
                raise ConfigError(f"--lr-preset {self.lr_preset} has no learning rate for {', '.join(missing)}; "
                                  "pass --lr X to use X there, or drop those tasks/methods")


def train_run(cfg: dict[str, Any]) -> dict[str, Any]:
    """The real runner: `condlora.train.train(TrainConfig(**cfg))`, resuming a run that was interrupted."""
    try:
        from .train import TrainConfig, train
    except ImportError as e:
        raise CondLoRAError(f"condlora.train is not available ({e}); cannot run trainings") from None
    return train(TrainConfig(**{"resume": True, **cfg}))


def run_once(cfg: dict[str, Any], run_fn: RunFn) -> dict[str, Any]:
    """Return the finished results.json in cfg's output_dir if it matches cfg, else run `run_fn(cfg)`."""
    path = Path(cfg["output_dir"]) / "results.json"
    if path.exists():
        try:
            done = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            done = None
        if done is not None:
            same_lr = math.isclose(float(done.get("lr", math.nan)), cfg["lr"], rel_tol=1e-9)
            if done.get("seed") == cfg["seed"] and done.get("method") == cfg["method"] and same_lr:
                return done
            raise CondLoRAError(f"{path} holds a run with seed={done.get('seed')}, method={done.get('method')}, "
                                f"lr={done.get('lr')}, not seed={cfg['seed']}, method={cfg['method']}, "
                                f"lr={cfg['lr']}: use another --output-dir or delete that folder")
    return run_fn(dict(cfg))


def _progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=quiet, leave=False)


def _storage(url: str, heartbeat: int = 60):
    """An Optuna RDB storage with heartbeats: trials of killed workers are failed and retried by the others."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(6):
        try:
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
        except Exception as e:  # bad URL, missing driver, unreachable server; or workers racing to create tables
            if type(e).__name__ not in ("OperationalError", "IntegrityError") or attempt == 5:
                raise CondLoRAError(f"cannot open Optuna storage {url!r}: {type(e).__name__}: {e}") from None
            time.sleep(0.2 * (attempt + 1))


def _open_study(task: str, method: str, base_cfg: dict, storage, seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=f"condlora-{task}-{method}", direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed), load_if_exists=True)
    run_args = {k: v for k, v in base_cfg.items() if k not in NOT_IDENTITY}
    fingerprint = json.loads(json.dumps({**run_args, "search_seed": seed}, sort_keys=True, default=str))
    stored = study.user_attrs.get("run_args")
    if stored is None:
        study.set_user_attr("run_args", fingerprint)
    elif stored != fingerprint:
        diff = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        raise CondLoRAError(f"study {study.study_name!r} in this storage was run with other settings "
                            f"({', '.join(diff)}); use another --output-dir or --storage")
    return study


def _wait_for_others(study, poll_s: float) -> None:
    """Block while other workers still run trials of `study` (stale ones are failed by the heartbeat)."""
    import optuna
    from optuna.trial import TrialState

    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll_s)


def _diverged_errors() -> tuple[type[Exception], ...]:
    """Errors that end one search trial (marked failed) instead of the whole search: a diverged training."""
    try:
        from .train import TrainingDiverged
    except ImportError:
        return ()
    return (TrainingDiverged,)


def _summary(study, task: str, method: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise CondLoRAError(f"LR search for {task}/{method} has no completed trial")
    best = max(done, key=lambda t: (t.value, -t.number))
    trials = [{"number": t.number, "lr": t.params.get("lr"), "val_score": t.value, "state": t.state.name,
               **t.user_attrs} for t in study.get_trials(deepcopy=False)]
    return {"lr": best.params["lr"], "val_score": best.value, "best_trial": best.number, "n_complete": len(done),
            "source": "search", "study_name": study.study_name, "trials": trials}


def search_lr(task: str, method: str, base_cfg: dict[str, Any], n_trials: int, storage: str,
              output_dir: str | Path, run_fn: RunFn = train_run, seed: int = 0, progress=None,
              heartbeat: int = 60, poll_s: float = 5.0, catch: tuple[type[Exception], ...] | None = None
              ) -> dict[str, Any]:
    """Optuna TPE search of the LR (log-uniform 1e-5..3e-3) maximizing the validation score.

    Resumable and shareable: the study lives in `storage`; every worker calling this with the same arguments
    adds trials until `n_trials` are complete in total. Trials raising `catch` (default: a diverged training)
    fail and are replaced. Returns the best LR, its score and every trial.
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    study = _open_study(task, method, base_cfg, _storage(storage, heartbeat), seed)
    root = Path(output_dir) / "search" / task / method
    live = (TrialState.COMPLETE, TrialState.RUNNING)

    def objective(trial: optuna.Trial) -> float:
        ahead = sum(t.number < trial.number for t in study.get_trials(deepcopy=False, states=live))
        if ahead >= n_trials:  # another worker took the last trial meanwhile
            study.stop()
            raise optuna.TrialPruned("trial budget reached")
        # a sampler seeded per trial number: workers started together (same --search-seed) do not draw the
        # same LRs in lockstep, and a resumed or single-worker search stays reproducible
        study.sampler = optuna.samplers.TPESampler(seed=seed * 1_000_003 + trial.number)
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)
        cfg = {**base_cfg, "task": task, "method": method, "seed": seed, "lr": lr,
               "output_dir": str(root / f"trial{trial.number}")}
        trial.set_user_attr("run_dir", cfg["output_dir"])
        result = run_once(cfg, run_fn)
        for key in ("test_score", "examples_per_sec"):
            if key in result:
                trial.set_user_attr(key, result[key])
        if progress is not None:
            progress.update(1)
        return float(result["val_score"])

    count = lambda *states: len(study.get_trials(deepcopy=False, states=states))  # noqa: E731
    if progress is not None:
        progress.update(min(n_trials, count(TrialState.COMPLETE)))
    while (remaining := n_trials - count(TrialState.COMPLETE)) > 0:
        if count(TrialState.FAIL) > 2 * n_trials:
            raise CondLoRAError(f"LR search for {task}/{method}: {count(TrialState.FAIL)} trials failed; "
                                "see the run folders under " + str(root))
        study.optimize(objective, n_trials=remaining, catch=_diverged_errors() if catch is None else catch,
                       callbacks=[MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))])
        _wait_for_others(study, poll_s)  # their trials may fail (dead worker): then the loop retries them
    return _summary(study, task, method)


def run_seeds(task: str, method: str, lr: float, base_cfg: dict[str, Any], seeds: int, output_dir: str | Path,
              run_fn: RunFn = train_run, progress=None) -> list[dict[str, Any]]:
    """Seeds 0..seeds-1 at `lr` under output_dir/runs/<task>/<method>/seed<k>; finished runs are reused."""
    results = []
    for seed in range(seeds):
        cfg = {**base_cfg, "task": task, "method": method, "seed": seed, "lr": lr,
               "output_dir": str(Path(output_dir) / "runs" / task / method / f"seed{seed}")}
        results.append({**run_once(cfg, run_fn), "task": task, "method": method, "seed": seed})
        if progress is not None:
            progress.update(1)
    return results


def choose_lr(task: str, method: str, s: StudySettings, base_cfg: dict[str, Any], run_fn: RunFn,
              progress=None) -> dict[str, Any]:
    """The LR of task x method: searched, from the preset, or fixed (--lr, else the train default)."""
    if s.lr_search:
        storage = s.storage or f"sqlite:///{Path(s.output_dir).resolve() / 'search' / 'optuna.db'}"
        Path(s.output_dir, "search").mkdir(parents=True, exist_ok=True)
        return search_lr(task, method, base_cfg, s.lr_search, storage, s.output_dir, run_fn,
                         seed=s.search_seed, progress=progress)
    if s.lr_preset and (task, method) in PRESETS[s.lr_preset]:
        return {"lr": PRESETS[s.lr_preset][(task, method)], "source": f"preset {s.lr_preset}"}
    if s.lr is not None:
        return {"lr": s.lr, "source": "--lr"}
    try:
        from .train import TrainConfig
    except ImportError as e:
        raise CondLoRAError(f"condlora.train is not available ({e}); pass --lr") from None
    return {"lr": TrainConfig.lr, "source": "default (TrainConfig.lr)"}


def _versions() -> dict[str, str]:
    from .train import versions

    return versions()


def _check_same_study(path: Path, s: StudySettings) -> None:
    if not path.exists():
        return
    old = json.loads(path.read_text(encoding="utf-8")).get("settings", {}).get("run_args", {})
    new = json.loads(json.dumps(s.run_args, default=str))
    diff = sorted(k for k in set(old) | set(new) if k not in NOT_IDENTITY and old.get(k) != new.get(k))
    if diff:
        raise CondLoRAError(f"{path} was made with other run settings ({', '.join(diff)}); "
                            "use another --output-dir")


def run_study(s: StudySettings, run_fn: RunFn = train_run) -> dict[str, Any]:
    """Choose LRs, run the seeds, write study.json and the tables; returns the study.json record."""
    out = Path(s.output_dir)
    _check_same_study(out / "study.json", s)
    record: dict[str, Any] = {"settings": asdict(s), "versions": _versions(), "lr": {}, "runs": [], "complete": False}
    pairs = [(t, m) for t in s.tasks for m in s.methods]
    base = {**s.run_args, "quiet": s.quiet or not s.run_progress}
    with _progress(len(pairs) * (s.lr_search or 0), "LR search", s.quiet or not s.lr_search) as bar:
        for t, m in pairs:
            record["lr"].setdefault(t, {})[m] = choose_lr(t, m, s, base, run_fn, bar)
            write_json(out / "study.json", record)
    if s.lr_search:
        plot_search(record["lr"], out / "search.png", LR_RANGE)
    if s.search_only:
        return record
    with _progress(len(pairs) * s.seeds, "runs", s.quiet) as bar:
        for t, m in pairs:
            record["runs"] += run_seeds(t, m, record["lr"][t][m]["lr"], base, s.seeds, out, run_fn, bar)
            write_json(out / "study.json", record)
    record["tables"] = write_tables(record["runs"], s.tasks, s.methods, out,
                                    model=str(s.run_args.get("model", "minilm")), n_seeds=s.seeds)
    if {"lora", "condlora"} <= set(s.methods):
        from .models import quiet_loading
        from .table3 import write_study_table3

        with quiet_loading(s.quiet):
            table3 = write_study_table3(out, s.tasks, s.seeds, str(s.run_args.get("model", "minilm")),
                                        trust_remote_code=bool(s.run_args.get("trust_remote_code")))
        record["tables"] += "\n" + (table3 or "")
    record["complete"] = True
    write_json(out / "study.json", record)
    return record


EPILOG = """examples:
  condlora study --tasks rte,mrpc,stsb,cola --methods lora,condlora --seeds 3 --lr-preset paper \\
      --model minilm --output-dir runs/study
  condlora study --lr-search 20 --seeds 5 --output-dir runs/study        # resumable; re-run to continue

several workers on one search (processes or machines; same flags everywhere):
  condlora study --lr-search 20 --storage postgresql://u:p@host/db --search-only --output-dir DIR   # on each
  condlora study --lr-search 20 --storage postgresql://u:p@host/db --output-dir DIR   # then seeds + tables
Together the workers run exactly 20 completed trials per task x method; a killed worker's trial is failed
after 3 heartbeats (3 min) and retried with the same LR."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `condlora study`."""
    p.epilog, p.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("--tasks", default="rte,mrpc,stsb,cola", help=f"comma-separated GLUE tasks ({', '.join(TASKS)})")
    p.add_argument("--methods", default="lora,condlora",
                   help=f"comma-separated methods ({', '.join(METHODS)}); Δ and p-values compare with the first")
    p.add_argument("--seeds", type=int, default=3, help="seeds per task x method at the chosen LR (default 3)")
    p.add_argument("--output-dir", required=True, help="study folder (runs, search, tables, study.json)")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--lr-search", type=int, metavar="N_TRIALS",
                    help="Optuna TPE search over LR in [1e-5, 3e-3] (log), N_TRIALS per task x method")
    lr.add_argument("--lr-preset", choices=sorted(PRESETS),
                    help="learning rates hard-coded in the authors' scripts (LoRA and CondLoRA only)")
    p.add_argument("--lr", type=float, help="fixed LR for every run, or the fallback where the preset has none")
    p.add_argument("--storage", help="Optuna storage URL shared by several workers, e.g. postgresql://... "
                   "(default: sqlite under OUTPUT_DIR/search)")
    p.add_argument("--search-seed", type=int, default=0, help="training seed of search runs and TPE seed (default 0)")
    p.add_argument("--search-only", action="store_true",
                   help="stop after the LR search (for extra workers sharing --storage)")
    g = p.add_argument_group("passed to every run (condlora train; default: train's own)")
    g.add_argument("--model", help="base model (alias, local folder or hub id)")
    g.add_argument("--glue-dir", help="folder with GLUE TSVs (default: $CONDLORA_GLUE_DIR)")
    g.add_argument("--epochs", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--max-length", type=int)
    g.add_argument("--max-train-samples", type=int)
    g.add_argument("--max-eval-samples", type=int)
    g.add_argument("--r", type=int)
    g.add_argument("--alpha", type=float)
    g.add_argument("--target-modules", help="comma-separated, e.g. query,value")
    g.add_argument("--trust-remote-code", action="store_true", help="let transformers run the model's own code")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--run-progress", action="store_true", help="show each run's own progress bar too")


def settings_from_args(args: argparse.Namespace) -> StudySettings:
    """StudySettings from parsed CLI arguments (pass-through flags only when given)."""
    run_args = {k: getattr(args, k) for k in PASS_THROUGH if getattr(args, k, None) not in (None, False)}
    if "target_modules" in run_args:
        run_args["target_modules"] = [m.strip() for m in run_args["target_modules"].split(",") if m.strip()]
    return StudySettings(tasks=args.tasks, methods=args.methods, output_dir=args.output_dir, seeds=args.seeds,
                         lr_search=args.lr_search, lr_preset=args.lr_preset, lr=args.lr, storage=args.storage,
                         search_seed=args.search_seed, search_only=args.search_only, quiet=args.quiet,
                         run_progress=args.run_progress,
                         run_args=run_args)


def main(args: argparse.Namespace) -> int:
    """Run the study and print the tables."""
    s = settings_from_args(args)
    record = run_study(s)
    if s.search_only:
        for t, by_m in record["lr"].items():
            print(", ".join(f"{t}/{m}: lr={v['lr']:.4g} ({v['source']})" for m, v in by_m.items()))
        return 0
    print(record["tables"])
    print(f"wrote {Path(s.output_dir) / 'study.json'}, table2.md/.csv/.png, table4.md/.csv")
    return 0
