"""`condlora study --share`: workers started with the same tasks and methods split the task x method pairs, so
none idles while another still has a long task ahead of it.

A pair (its LR search, then its seeds) is trained by the worker holding its lock, `claims/<task>__<method>.lock`
in the study folder; the other workers go on to the next free pair. Once every pair left is held by others, a
worker waits for the first of them and then reads its finished runs back from disk, so every worker ends with the
whole study's record and tables. The locks are flocks: a killed worker's claim ends with it, and the next worker
to take that pair resumes it from its checkpoints. Workers must share one file system with working flocks (one
machine, or a file system that supports them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..fileio import file_lock

Pair = tuple[str, str]
CLAIMS_DIR = "claims"


def claim_path(out_dir: str | Path, pair: Pair) -> Path:
    """The lock file of task x method `pair` in the study folder."""
    return Path(out_dir, CLAIMS_DIR, f"{pair[0]}__{pair[1]}.lock")


def train_shared(out_dir: str | Path, pairs: list[Pair], train: Callable[[Pair], list[Pair]],
                 ready: Callable[[Pair, list[Pair]], bool] | None = None) -> list[Pair]:
    """Train every pair once among the sharing workers: the first free one in order, under its lock.

    `train(pair)` trains (or reads back) one pair and returns the pairs no longer to train (a task found not
    learned); `ready(pair, pending)` says whether a pair may start yet (default: always). Returns the pairs this
    worker went through, in order.
    """
    Path(out_dir, CLAIMS_DIR).mkdir(parents=True, exist_ok=True)
    pending, order = list(pairs), []
    while pending:
        now = [p for p in pending if ready is None or ready(p, pending)] or pending[:1]
        done, dropped = None, []
        for pair in now:
            with file_lock(claim_path(out_dir, pair), wait=False) as held:
                if held:
                    done, dropped = pair, train(pair)
            if done is not None:
                break
        if done is None:  # all held by other workers: wait for the first, then read it back
            done = now[0]
            with file_lock(claim_path(out_dir, done)):
                dropped = train(done)
        order.append(done)
        pending = [p for p in pending if p != done and p not in dropped]
    return order
