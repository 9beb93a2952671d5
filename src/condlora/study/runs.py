"""Finished-run bookkeeping shared by the study and its LR search: train one run, reuse a finished one, run the
seeds of a task x method, find its finished runs on disk."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import CondLoRAError
from ..fileio import replace_dir

RunFn = Callable[[dict[str, Any]], dict[str, Any]]


def train_run(cfg: dict[str, Any]) -> dict[str, Any]:
    """The real runner: `condlora.runner.train.train(TrainConfig(**cfg))`, resuming a run that was interrupted."""
    try:
        from ..runner.train import TrainConfig, train
    except ImportError as e:
        raise CondLoRAError(f"condlora.runner.train is not available ({e}); cannot run trainings") from None
    return train(TrainConfig(**{"resume": True, **cfg}))


def finished_run(run_dir: str | Path) -> dict[str, Any] | None:
    """The results.json of a finished run in `run_dir` (None if absent or unreadable)."""
    path = Path(run_dir) / "results.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except json.JSONDecodeError:
        return None


def same_lr(recorded: Any, lr: float) -> bool:
    """Whether a recorded LR (None or missing: no) is `lr`, up to float round-off."""
    return math.isclose(float(math.nan if recorded is None else recorded), lr, rel_tol=1e-9)


def same_run(done: dict[str, Any], cfg: dict[str, Any]) -> bool:
    """Whether the finished results `done` were trained with cfg's seed, method and LR."""
    same_seed_method = done.get("seed") == cfg["seed"] and done.get("method") == cfg["method"]
    return same_seed_method and same_lr(done.get("lr"), cfg["lr"])


def run_once(cfg: dict[str, Any], run_fn: RunFn) -> dict[str, Any]:
    """Return the finished results.json in cfg's output_dir if it matches cfg, else run `run_fn(cfg)`."""
    path = Path(cfg["output_dir"]) / "results.json"
    if (done := finished_run(cfg["output_dir"])) is not None:
        if same_run(done, cfg):
            return done
        raise CondLoRAError(f"{path} holds a run with seed={done.get('seed')}, method={done.get('method')}, "
                            f"lr={done.get('lr')}, not seed={cfg['seed']}, method={cfg['method']}, "
                            f"lr={cfg['lr']}: use another --output-dir or delete that folder")
    return run_fn(dict(cfg))


def found_runs(out_dir: str | Path, task: str, method: str, lr: float) -> list[dict[str, Any]]:
    """Every finished run of task x method at `lr` under out_dir/runs (any seed), with its `run_dir`, by seed."""
    found = []
    for d in sorted(Path(out_dir, "runs", task, method).glob("seed*")):
        done = finished_run(d)
        seed = d.name[4:]
        if done is None or not seed.isdigit():
            continue
        if same_run(done, {"seed": int(seed), "method": method, "lr": lr}) and done.get("task", task) == task:
            found.append({**done, "task": task, "method": method, "seed": int(seed), "run_dir": str(d)})
        else:
            warnings.warn(f"{d} holds another run (seed={done.get('seed')}, method={done.get('method')}, "
                          f"lr={done.get('lr')}); left out of the tables", stacklevel=2)
    return sorted(found, key=lambda r: r["seed"])


def run_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The run settings a finished run recorded (config.json's "run"), None when absent or unreadable."""
    try:
        return json.loads(Path(run_dir, "config.json").read_text(encoding="utf-8"))["run"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def set_aside_other_lr(cfg: dict[str, Any]) -> Path | None:
    """Move cfg's run folder aside (to `<folder>-lr<old LR>`) when it holds a run, finished or not, at another LR.

    A study's chosen LR can change after seeds were trained (a grid extended past its edge, a search given more
    trials); those seeds are kept beside the new ones, out of the tables. Returns where they went, if moved.
    """
    run_dir = Path(cfg["output_dir"])
    old = (run_config(run_dir) or {}).get("lr")
    if old is None or same_lr(old, cfg["lr"]):
        return None
    dst, k = run_dir.with_name(f"{run_dir.name}-lr{old:g}"), 1
    while dst.exists():
        dst, k = run_dir.with_name(f"{run_dir.name}-lr{old:g}-{k}"), k + 1
    run_dir.rename(dst)
    warnings.warn(f"{run_dir} held a run at lr={old:g}, not the chosen lr={cfg['lr']:g}; moved it to {dst.name}",
                  stacklevel=2)
    return dst


def read_study_record(out_dir: str | Path) -> dict[str, Any]:
    """The study folder's study.json as a dict (empty when absent or unreadable: it is written once the first LR
    is chosen, and a worker may be replacing it)."""
    try:
        rec = json.loads(Path(out_dir, "study.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _copy_finished_run(src: str | None, cfg: dict[str, Any]) -> None:
    """Copy the run folder `src` to cfg's output_dir if it finished with cfg's seed, method and LR."""
    dst = Path(cfg["output_dir"])
    if src is None or (dst / "results.json").exists():
        return
    done = finished_run(src)
    if done is not None and same_run(done, cfg):
        replace_dir(dst, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))


def run_seeds(task: str, method: str, lr: float, base_cfg: dict[str, Any], seeds: int | Sequence[int],
              output_dir: str | Path, run_fn: RunFn = train_run, progress=None, reuse: dict[int, str] | None = None
              ) -> list[dict[str, Any]]:
    """`seeds` (a count N: 0..N-1, or a list) at `lr` under output_dir/runs/<task>/<method>/seed<k>; finished
    runs are reused.

    `reuse` maps a seed to the folder of a finished identical run (the search trial of the chosen LR, trained
    with the search seed): it is copied instead of trained again.
    """
    results = []
    for seed in range(seeds) if isinstance(seeds, int) else sorted(set(seeds)):
        cfg = {**base_cfg, "task": task, "method": method, "seed": seed, "lr": lr,
               "output_dir": str(Path(output_dir) / "runs" / task / method / f"seed{seed}")}
        set_aside_other_lr(cfg)  # seeds of an LR the study no longer uses
        _copy_finished_run((reuse or {}).get(seed), cfg)
        results.append({**run_once(cfg, run_fn), "task": task, "method": method, "seed": seed})
        if progress is not None:
            progress.update(1)
    return results
