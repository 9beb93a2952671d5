"""Resumable training checkpoints: safetensors for tensors, JSON for the rest; no pickle.

A checkpoint folder holds the current and the best trainable weights, the optimizer state, the RNG
states and `state.json` (step, best score, scheduler, counters). It is written into a temporary folder
and swapped in whole, so a kill leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import CondLoRAError
from ..fileio import existing_dir, replace_dir, write_json
from ..serialization import copy_weights, write_safetensors
from .methods import trainable_state

CHECKPOINT_DIR = "checkpoint"


@dataclass
class RunState:
    """A run's bookkeeping, saved in checkpoint/state.json (same keys as ever: old checkpoints resume).

    Attributes:
        step: optimizer steps done.
        best_score, best_step, best_val: the best validation score so far, its step and all its metrics.
        train_time_s, examples: seconds spent in training steps and examples seen (for examples/s).
        wall_time_s: wall time of earlier sessions (up to their last checkpoint).
        loss_sum, loss_count: training loss summed since the last evaluation, and over how many steps.
        bad_evals, stopped_early: evaluations without a better score since the best; whether patience ran out.
    """

    step: int = 0
    best_score: float | None = None
    best_step: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    train_time_s: float = 0.0
    examples: int = 0
    wall_time_s: float = 0.0
    loss_sum: float = 0.0
    loss_count: int = 0
    bad_evals: int = 0  # missing in checkpoints written before early stopping existed
    stopped_early: bool = False

    @classmethod
    def from_dict(cls, saved: dict) -> RunState:
        """The state of a checkpoint's state.json (keys it lacks take their defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Torch (CPU and CUDA) RNG states as tensors; Python and NumPy states as JSON-ready data."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors["numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore the states saved by `rng_state`."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_py = meta["python"]
    random.setstate((version, tuple(internal), gauss_py))


def save_checkpoint(output_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, best: dict[str, torch.Tensor],
                    state: RunState) -> None:
    """Write the whole training state to `output_dir/checkpoint` (swapped in atomically)."""
    opt_tensors, opt_meta = _optimizer_parts(optimizer)
    rng_tensors, rng_meta = rng_state()
    meta = {**asdict(state), "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_meta}

    def write(tmp: Path) -> None:
        write_safetensors(tmp / "trainable.safetensors", trainable_state(model))
        write_safetensors(tmp / "best.safetensors", best)
        write_safetensors(tmp / "optimizer.safetensors", opt_tensors)
        write_safetensors(tmp / "rng.safetensors", rng_tensors)
        write_json(tmp / "state.json", meta)

    replace_dir(output_dir / CHECKPOINT_DIR, write)


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved trainable tensors into `model`; the names must match its trainable parameters exactly."""
    copy_weights(trainable_state(model), tensors, source, expected="this run's trainable parameters")


def load_checkpoint(output_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[RunState, dict[str, torch.Tensor]] | None:
    """Restore a checkpoint into model, optimizer, scheduler and RNGs; returns (state, best weights) or None."""
    folder = existing_dir(output_dir / CHECKPOINT_DIR)
    if folder is None or not (folder / "state.json").is_file():
        return None
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        trainable = load_file(str(folder / "trainable.safetensors"))
        best = load_file(str(folder / "best.safetensors"))
        opt_tensors = load_file(str(folder / "optimizer.safetensors"))
        rng_tensors = load_file(str(folder / "rng.safetensors"))
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CondLoRAError(f"checkpoint {folder} is unreadable ({e}); rerun with --overwrite") from None
    load_trainable(model, trainable, str(folder / "trainable.safetensors"))
    optimizer.load_state_dict(_optimizer_state(opt_tensors, meta.pop("optimizer")))  # moves state to the params
    scheduler.load_state_dict(meta.pop("scheduler"))
    set_rng_state(rng_tensors, meta.pop("rng"))
    return RunState.from_dict(meta), best
