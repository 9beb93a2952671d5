"""The run folder of `condlora train`: refuse another run's folder, reuse a finished identical run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import __version__
from ..errors import CondLoRAError
from ..fileio import existing_dir
from .checkpoint import CHECKPOINT_DIR
from .train_config import NEW_FIELD_DEFAULTS, TrainConfig, cpu_bf16_flags

RUN_FILES = ("config.json", "metrics.jsonl", "results.json", CHECKPOINT_DIR, "best_adapter", "best_adapter_peft",
             "best_model", "best_head", f".{CHECKPOINT_DIR}.old")
# where a run's folder and its GLUE files lie and how often it checkpoints, not what the run is: a run folder
# copied elsewhere (carried to another machine by scripts/save-records.sh), reading the same GLUE files from
# another folder or checkpointing more often is the same run
NOT_IDENTITY_FIELDS = ("output_dir", "glue_dir", "save_every")


def versions() -> dict[str, str]:
    """Versions of Python and of every library that shapes a result."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "condlora": __version__}
    for pkg in ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "numpy",
                "scikit-learn", "scipy", "optuna", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what `platform` knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, object]:
    """The CPU a run trained on: model, logical cores and its native bf16 flags (a result's machine)."""
    import os

    return {"model": cpu_name(), "logical_cores": os.cpu_count(), "bf16_flags": cpu_bf16_flags()}


def check_output_dir(cfg: TrainConfig, out: Path) -> dict | None:
    """Refuse a folder holding another run; return the results of an identical finished run."""
    if out.exists() and not out.is_dir():
        raise CondLoRAError(f"output folder {out} is a file")
    if cfg.overwrite or not out.exists():
        return None
    config_file = out / "config.json"
    if not config_file.is_file():
        if any(out.iterdir()):
            raise CondLoRAError(f"output folder {out} is not empty and holds no condlora run; "
                                "choose another --output-dir or pass --overwrite")
        return None
    try:
        old = json.loads(config_file.read_text(encoding="utf-8")).get("run", {})
    except json.JSONDecodeError:
        old = {}
    new = {k: v for k, v in json.loads(json.dumps(cfg.run_dict())).items() if k not in NOT_IDENTITY_FIELDS}
    if old:  # a setting added after that run was written had its default then
        old = {**{k: v for k, v in NEW_FIELD_DEFAULTS.items() if k in new}, **old}
    old = {k: v for k, v in old.items() if k not in NOT_IDENTITY_FIELDS}
    if old != new:
        diff = next((k for k in new if old.get(k) != new[k]), "run")
        raise CondLoRAError(f"output folder {out} holds a different run ({diff}: {old.get(diff)!r} there, "
                            f"{new.get(diff)!r} now); pass --overwrite to replace it or choose another folder")
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text(encoding="utf-8"))
    if existing_dir(out / CHECKPOINT_DIR) is not None and not cfg.resume:
        raise CondLoRAError(f"output folder {out} holds an unfinished run of this config; "
                            "pass --resume to continue it or --overwrite to start again")
    return None


def clear_run_files(out: Path) -> None:
    """Delete the files a run writes into `out`."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
