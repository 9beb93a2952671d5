"""`condlora study`'s settings: the tasks and methods a study can compare, the authors' learning rates, the
seed syntax and StudySettings, checked where they are made so that a bad flag fails before any training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..fileio import HAVE_FILE_LOCKS
from ..runner.method_defaults import method_defaults
from .search import LR_RANGE, parse_lrs
from .tables import METHOD_LABELS, TASK_LABELS

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
                "group_by_length", "precision", "trust_remote_code", "save_every")
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
    share: bool = False  # workers with the same tasks and methods split the pairs between them (study/share.py)
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
        if self.share and not HAVE_FILE_LOCKS:
            raise ConfigError("--share needs file locks (flock), which this system lacks; give each worker its "
                              "own tasks instead")
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
    def gated(self) -> bool:
        """Whether --skip-unlearned applies: a task's other methods train only where the reference learned it."""
        return self.skip_unlearned and not self.search_only and len(self.methods) > 1

    @property
    def n_trials(self) -> int:
        """Search trials per task x method (before any grid extension; the most over the methods)."""
        if self.lr_grids:
            return max(len(g) for g in self.lr_grids.values())
        return len(self.lr_grid) if self.lr_grid else (self.lr_search or 0)

    def grid(self, method: str) -> list[float] | None:
        """The LR grid `method` searches: --lr-grid's list, else its own default (--lr-grid auto), else None."""
        return self.lr_grid or (self.lr_grids or {}).get(method)
