"""The learning-rate search of `condlora study`: one Optuna study per task x method, resumable and shareable.

Two kinds: TPE over a log-uniform range (`--lr-search N`, `--lr-range LO,HI`), or every LR of a fixed grid
(`--lr-grid a,b,c`, enqueued as trials of the same Optuna study, so resuming and sharing work the same way).
Trials train with the search seed under `<output_dir>/search/<task>/<method>/trial<k>`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import mix_seed
from ..errors import CondLoRAError, ConfigError
from .runs import RunFn, finished_run, run_config, run_once, same_lr, same_run, train_run

__all__ = ["LR_RANGE", "SearchSetup", "parse_lrs", "search_grid", "search_lr"]

LR_RANGE = (1e-5, 3e-3)
MAX_EXTEND = 2  # LRs a grid search adds past its edges when the best LR sits at one
# run arguments that may differ between workers or re-runs of one study
NOT_IDENTITY = ("quiet", "glue_dir", "trust_remote_code", "save_every")  # no bearing on a run's result


@dataclass
class SearchSetup:
    """Where and how LR searches run (the same for every task x method of one study).

    Attributes:
        storage: Optuna storage URL (the study is resumable and shared through it).
        output_dir: the study folder; trials train under `<output_dir>/search/<task>/<method>/trial<k>`.
        run_fn: trains one run from its config dict (default: `condlora train` in this process).
        seed: the search seed (the seed every trial trains with, and the TPE sampler's).
        progress: a tqdm-like bar updated once per completed trial, or None.
        heartbeat: seconds between a trial's heartbeats; trials silent for 3 heartbeats are failed and retried.
        poll_s: seconds between checks for other workers' running trials.
        catch: errors that end one trial instead of the search (default: a diverged training).
    """

    storage: str
    output_dir: str | Path
    run_fn: RunFn | None = None
    seed: int = 0
    progress: Any = None
    heartbeat: int = 60
    poll_s: float = 5.0
    catch: tuple[type[Exception], ...] | None = None


def parse_lrs(text: str | Sequence[float], flag: str) -> list[float]:
    """Positive learning rates, sorted and unique, from '1e-3,2e-3' or a list (ConfigError naming `flag`)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [float(v) for v in items if str(v).strip()]
    except (TypeError, ValueError):
        raise ConfigError(f"{flag}: expected comma-separated numbers such as 1e-4,3e-4, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{flag}: every learning rate must be a positive number, got {text!r}")
    return sorted(set(values))


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


def _open_study(task: str, method: str, base_cfg: dict, storage, seed: int, space: dict[str, Any]):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=f"condlora-{task}-{method}", direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed), load_if_exists=True)
    run_args = {k: v for k, v in base_cfg.items() if k not in NOT_IDENTITY}
    fingerprint = json.loads(json.dumps({**run_args, "search_seed": seed, **space}, sort_keys=True, default=str))
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
    """Errors that end one search trial instead of the whole search: a diverged training."""
    try:
        from ..runner.train import TrainingDiverged
    except ImportError:
        return ()
    return (TrainingDiverged,)


def _summary(study, task: str, method: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise CondLoRAError(f"LR search for {task}/{method} has no completed trial")
    best = max(done, key=lambda t: (t.value, -t.number))
    if best.value == -math.inf:
        raise CondLoRAError(f"LR search for {task}/{method}: training diverged at every learning rate tried; "
                            "try lower ones")
    trials = [{"number": t.number, "lr": t.params.get("lr"), "val_score": t.value, "state": t.state.name,
               **t.user_attrs} for t in study.get_trials(deepcopy=False)]
    return {"lr": best.params["lr"], "val_score": best.value, "best_trial": best.number, "n_complete": len(done),
            "source": "search", "study_name": study.study_name, "run_dir": best.user_attrs.get("run_dir"),
            "trials": trials}


def search_lr(task: str, method: str, base_cfg: dict[str, Any], n_trials: int, setup: SearchSetup, *,
              lr_range: tuple[float, float] = LR_RANGE, grid: Sequence[float] | None = None,
              extra: Sequence[float] = ()) -> dict[str, Any]:
    """Search the LR maximizing the validation score: TPE (log-uniform in `lr_range`), or every LR of `grid`.

    Resumable and shareable: the study lives in `setup.storage`; every worker calling this with the same
    arguments adds trials until `n_trials` (with a grid: one per grid LR) are complete in total. In a TPE search
    a trial raising `setup.catch` (default: a diverged training) fails and is replaced; in a grid it scores -inf.
    `extra`: LRs tried after the grid's in the same search (`search_grid` extends a grid past its edge).
    Returns the best LR, its score, the run folder of the best trial and every trial.
    """
    import optuna
    from optuna.trial import TrialState

    run_fn, seed = setup.run_fn or train_run, setup.seed
    grid = sorted(set(grid)) if grid else None
    queue = [*grid, *(lr for lr in extra if lr not in grid)] if grid else []
    lo, hi = (min(queue), max(queue)) if grid else lr_range
    n_trials = len(queue) if grid else n_trials
    space = {"lr_grid": grid} if grid else {"lr_range": list(lr_range)}
    study = _open_study(task, method, base_cfg, _storage(setup.storage, setup.heartbeat), seed, space)
    catch = _diverged_errors() if setup.catch is None else setup.catch
    for lr in queue:
        study.enqueue_trial({"lr": lr}, skip_if_exists=True)
    root = Path(setup.output_dir) / "search" / task / method
    live = (TrialState.COMPLETE, TrialState.RUNNING)

    def objective(trial: optuna.Trial) -> float:
        ahead = sum(t.number < trial.number for t in study.get_trials(deepcopy=False, states=live))
        if ahead >= n_trials:  # another worker took the last trial meanwhile
            study.stop()
            raise optuna.TrialPruned("trial budget reached")
        # a sampler seeded per trial number: workers started together (same --search-seed) do not draw the
        # same LRs in lockstep, and a resumed or single-worker search stays reproducible
        study.sampler = optuna.samplers.TPESampler(seed=mix_seed(seed, trial.number))
        lr = trial.suggest_float("lr", lo, hi, log=True)  # a grid LR comes from the queue
        run_dir = trial_dir(root, trial.number, method, seed, lr, trial.user_attrs.get("run_dir"))
        cfg = {**base_cfg, "task": task, "method": method, "seed": seed, "lr": lr, "output_dir": run_dir}
        score = _run_trial(trial, cfg, run_fn, catch if grid else ())
        if setup.progress is not None:
            setup.progress.update(1)
        return score

    _optimize(study, objective, n_trials, catch, setup, f"{task}/{method}", root)
    return _summary(study, task, method)


def trial_dir(root: Path, number: int, method: str, seed: int, lr: float, inherited: str | None = None) -> str:
    """The folder of trial `number` at `lr`: a trial folder under `root` that finished this very run (a search
    whose storage is new or was lost reuses it); else `inherited` (a retry of a killed worker's trial resumes
    from its checkpoint); else `trial<number>`, or `trial<number>-<k>` when that one holds a run at another LR."""
    want = {"seed": seed, "method": method, "lr": lr}
    for d in sorted(root.glob("trial*")):
        if (done := finished_run(d)) is not None and same_run(done, want):
            return str(d)
    if inherited:
        return inherited
    d, k = root / f"trial{number}", 1
    while (cfg := run_config(d)) is not None and not same_lr(cfg.get("lr"), lr):
        d, k = root / f"trial{number}-{k}", k + 1
    return str(d)


def next_lr(best: float, lrs: Sequence[float]) -> float | None:
    """The LR one grid step past the edge where `best` sits (the step of the two edge LRs), else None."""
    lrs = sorted(lrs)
    if len(lrs) < 2 or lrs[0] < best < lrs[-1]:
        return None
    a, b = (lrs[0], lrs[1]) if best == lrs[0] else (lrs[-1], lrs[-2])
    return float(f"{a * a / b:.3g}")


def search_grid(task: str, method: str, base_cfg: dict[str, Any], grid: Sequence[float], setup: SearchSetup,
                max_extend: int = MAX_EXTEND) -> dict[str, Any]:
    """`search_lr` over `grid`, extended one LR at a time while the best sits at an edge (`max_extend` at most).

    Resumes like `search_lr`: LRs added by an earlier call are found again, in the same order, and completed
    first when that call was killed before they finished.
    """
    extra: list[float] = []
    while True:
        found = search_lr(task, method, base_cfg, 0, setup, grid=grid, extra=extra)
        trials = sorted((t for t in found["trials"] if t["lr"] is not None), key=lambda t: t["number"])
        earlier = list(dict.fromkeys(t["lr"] for t in trials if t["lr"] not in grid))
        if earlier != extra:  # an earlier call's extension, maybe unfinished: complete it before deciding
            extra = earlier
            continue
        step = next_lr(found["lr"], [*grid, *extra])
        if step is None or len(extra) >= max_extend or step in extra:
            if step is not None:
                warnings.warn(f"{task}/{method}: the best LR, {found['lr']:g}, sits at the edge of the grid "
                              f"{sorted({*grid, *extra})} after {len(extra)} extensions; it may lie further out: "
                              "pass a wider --lr-grid", stacklevel=2)
            return {**found, "grid": sorted(set(grid)), "extended": extra, "bracketed": step is None}
        extra.append(step)


def _run_trial(trial, cfg: dict[str, Any], run_fn: RunFn, diverged: tuple[type[Exception], ...]) -> float:
    """Train one trial's run; its validation score (-inf if it raised one of `diverged`)."""
    trial.set_user_attr("run_dir", cfg["output_dir"])
    try:
        result = run_once(cfg, run_fn)
    except diverged as e:
        trial.set_user_attr("diverged", str(e)[:200])
        return -math.inf
    for key in ("test_score", "examples_per_sec"):
        if key in result:
            trial.set_user_attr(key, result[key])
    return float(result["val_score"])


def _optimize(study, objective, n_trials: int, catch, setup: SearchSetup, what: str, root: Path) -> None:
    """Run trials until `n_trials` are complete in the storage (with every worker), retrying failed ones."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    count = lambda *states: len(study.get_trials(deepcopy=False, states=states))  # noqa: E731
    if setup.progress is not None:
        setup.progress.update(min(n_trials, count(TrialState.COMPLETE)))
    while (remaining := n_trials - count(TrialState.COMPLETE)) > 0:
        if count(TrialState.FAIL) > 2 * n_trials:
            raise CondLoRAError(f"LR search for {what}: {count(TrialState.FAIL)} trials failed; "
                                f"see the run folders under {root}")
        study.optimize(objective, n_trials=remaining, catch=catch,
                       callbacks=[MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))])
        _wait_for_others(study, setup.poll_s)  # their trials may fail (dead worker): then the loop retries them
