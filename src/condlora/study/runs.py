"""Finished-run bookkeeping shared by the study and its LR search: train one run, or reuse a finished one."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CondLoRAError

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


def same_run(done: dict[str, Any], cfg: dict[str, Any]) -> bool:
    """Whether the finished results `done` were trained with cfg's seed, method and LR."""
    same_lr = math.isclose(float(done.get("lr", math.nan)), cfg["lr"], rel_tol=1e-9)
    return done.get("seed") == cfg["seed"] and done.get("method") == cfg["method"] and same_lr


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
