"""Live progress of a long study. Every `condlora study` process (worker) writes `progress/<worker>.json` in the
study folder atomically: its plan (task x method pairs, search trials, seeds) and the run it is training now.
`status_line` reads those files and the finished runs on disk: trainings done of all planned, what each live
worker is training, and an ETA from the mean wall time of the finished runs (per task where there are some).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fileio import write_json
from .runs import RunFn, finished_run

PROGRESS_DIR = "progress"


def _alive(rec: dict[str, Any]) -> bool:
    """Whether a worker is still running: not finished, and (on this host) its process exists."""
    if rec.get("finished"):
        return False
    if rec.get("host") != socket.gethostname():
        return True  # cannot check another machine's processes
    try:
        os.kill(int(rec["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def read_progress(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every worker's progress record in the study folder, with `alive` added."""
    recs = []
    for path in sorted(Path(out_dir, PROGRESS_DIR).glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        recs.append({**rec, "alive": _alive(rec)})
    return recs


class Progress:
    """The progress file of this worker: the plan at start, the current run while training, done at the end."""

    def __init__(self, out_dir: str | Path, pairs: list[tuple[str, str]], n_trials: int, seeds: list[int],
                 reused_seed: int | None) -> None:
        self.path = Path(out_dir, PROGRESS_DIR, f"{socket.gethostname()}-{os.getpid()}.json")
        self.rec: dict[str, Any] = {
            "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "finished": False,
            "plan": {"pairs": [list(p) for p in pairs], "n_trials": n_trials, "seeds": list(seeds),
                     "reused_seed": reused_seed}, "current": None}
        for old in read_progress(out_dir):  # killed or failed workers on this host: their plans are stale
            if old.get("host") == socket.gethostname() and not old["alive"] and not old.get("ok"):
                Path(out_dir, PROGRESS_DIR, f"{old['host']}-{old['pid']}.json").unlink(missing_ok=True)
        self._write()

    def _write(self) -> None:
        write_json(self.path, {**self.rec, "updated": time.time()})

    def wrap(self, run_fn: RunFn) -> RunFn:
        """`run_fn` that records the run it trains as this worker's current run."""

        def run(cfg: dict[str, Any]) -> dict[str, Any]:
            kind = "search" if Path(cfg["output_dir"]).parent.parent.parent.name == "search" else "run"
            self.rec["current"] = {"task": cfg["task"], "method": cfg["method"], "seed": cfg["seed"],
                                   "kind": kind, "run_dir": cfg["output_dir"], "started": time.time()}
            self._write()
            try:
                return run_fn(cfg)
            finally:
                self.rec["current"] = None
                self._write()

        return run

    def drop(self, pairs: list[tuple[str, str]]) -> None:
        """Take task x method `pairs` out of the plan (they will not be trained)."""
        gone = {tuple(p) for p in pairs}
        self.rec["plan"]["pairs"] = [p for p in self.rec["plan"]["pairs"] if tuple(p) not in gone]
        self._write()

    def finish(self, ok: bool) -> None:
        """Mark this worker finished (ok) or stopped by an error."""
        self.rec.update(finished=True, ok=ok)
        self._write()


def union_plan(recs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(task, method) -> {n_trials, seeds, reused} over every worker's plan."""
    plan: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in recs:
        p = rec.get("plan", {})
        for t, m in p.get("pairs", []):
            e = plan.setdefault((t, m), {"n_trials": 0, "seeds": set(), "reused": set()})
            e["n_trials"] = max(e["n_trials"], int(p.get("n_trials") or 0))
            e["seeds"] |= set(p.get("seeds", []))
            if p.get("reused_seed") is not None:
                e["reused"].add(p["reused_seed"])
    return plan


def _pair_counts(out: Path, t: str, m: str, e: dict[str, Any]) -> tuple[int, int]:
    """(planned, done) trainings of one task x method: search trials (more where a grid was extended past its
    edge: every trial folder counts) plus seeds not copied from the search."""
    trial_dirs = list(Path(out, "search", t, m).glob("trial*")) if e["n_trials"] else []
    trials = sum(1 for d in trial_dirs if (d / "results.json").exists())
    seeds = e["seeds"] - e["reused"] if e["n_trials"] else e["seeds"]
    runs = sum(1 for s in seeds if (out / "runs" / t / m / f"seed{s}" / "results.json").exists())
    return max(e["n_trials"], len(trial_dirs)) + len(seeds), trials + runs


def _wall_times(out: Path) -> dict[str, list[float]]:
    """task -> wall times (s) of every finished run and trial in the study folder."""
    walls: dict[str, list[float]] = {}
    for path in [*out.glob("runs/*/*/seed*/results.json"), *out.glob("search/*/*/trial*/results.json")]:
        done = finished_run(path.parent)
        if done and isinstance(done.get("wall_time_s"), (int, float)):
            walls.setdefault(path.parts[-4], []).append(float(done["wall_time_s"]))
    return walls


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _estimate(walls: dict[str, list[float]]) -> Callable[[str], float] | None:
    """Seconds per training of a task: the mean over its finished runs, else over all (None without any)."""
    every = [w for ws in walls.values() for w in ws]
    if not every:
        return None
    return lambda task: sum(walls[task]) / len(walls[task]) if walls.get(task) else sum(every) / len(every)


def _eta(live: list[dict[str, Any]], counts: dict, estimate: Callable[[str], float] | None, now: float
         ) -> float | None:
    """Seconds until the slowest live worker is done: its remaining trainings (shared ones split) x estimate."""
    if estimate is None or not live:
        return None
    plans = [[tuple(p) for p in r.get("plan", {}).get("pairs", [])] for r in live]
    etas = []
    for rec, pairs in zip(live, plans, strict=True):
        left = sum((counts[p][0] - counts[p][1]) * estimate(p[0]) / sum(p in q for q in plans) for p in pairs)
        etas.append(max(left - (now - (rec.get("current") or {}).get("started", now)), 0.0))
    return max(etas)


def study_status(out_dir: str | Path, now: float | None = None) -> dict[str, Any]:
    """Planned and done trainings, live workers (with their current run), the ETA (s; None when unknown)."""
    out, now = Path(out_dir), time.time() if now is None else now
    recs = read_progress(out)
    counts = {pair: _pair_counts(out, *pair, e) for pair, e in union_plan(recs).items()}
    walls = _wall_times(out)
    every = [w for ws in walls.values() for w in ws]
    live = [r for r in recs if r["alive"]]
    return {"planned": sum(c[0] for c in counts.values()), "done": sum(c[1] for c in counts.values()),
            "workers": len(recs), "live": live, "eta_s": _eta(live, counts, _estimate(walls), now),
            "mean_wall_s": sum(every) / len(every) if every else None, "finished_on_disk": len(every)}


def _current(rec: dict[str, Any], now: float) -> str:
    cur = rec.get("current")
    if not cur:
        return "between runs"
    what = "search trial" if cur["kind"] == "search" else f"seed {cur['seed']}"
    return f"{cur['task']}/{cur['method']} {what} ({clock(now - cur['started'])})"


def status_line(out_dir: str | Path, now: float | None = None, stamp: Callable[[], str] | None = None,
                st: dict[str, Any] | None = None) -> str:
    """One line: trainings done/planned, what every live worker trains now, ETA (`st`: a study_status result)."""
    now = time.time() if now is None else now
    st = study_status(out_dir, now) if st is None else st
    head = (stamp or (lambda: time.strftime("%H:%M:%S")))() + f" {out_dir}: "
    if not st["workers"]:
        return head + f"no progress files yet ({st['finished_on_disk']} finished runs on disk)"
    pct = f" ({100 * st['done'] / st['planned']:.0f}%)" if st["planned"] else ""
    parts = [f"{st['done']}/{st['planned']} trainings done{pct}"]
    if st["live"]:
        parts.append("now: " + ", ".join(_current(r, now) for r in st["live"]))
        eta = "after the first finished run" if st["eta_s"] is None else clock(st["eta_s"])
        mean = f" (mean {st['mean_wall_s']:.0f} s/run)" if st["mean_wall_s"] else ""
        parts.append(f"ETA {eta}{mean}")
    else:
        parts.append("no worker running")
    return head + " · ".join(parts)


def watch(out_dir: str | Path, every: float, print_fn: Callable[[str], None] = print) -> None:
    """Print `status_line` every `every` seconds; return once workers were seen running and none is left."""
    seen_live = False
    while True:
        st = study_status(out_dir)
        print_fn(status_line(out_dir, st=st))
        seen_live = seen_live or bool(st["live"])
        if seen_live and not st["live"]:
            return
        time.sleep(every)
