"""`condlora study --share`: workers with the same flags split the task x method pairs (study/share.py), with
the file locks of fileio.file_lock, which end with their process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from condlora.errors import ConfigError
from condlora.fileio import file_lock
from condlora.study.share import claim_path, train_shared
from condlora.study.study import run_study
from test_study import SRC, FakeRun, settings

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="--share needs POSIX file locks")
PAIRS = [(t, m) for t in ("rte", "mrpc", "cola") for m in ("lora", "condlora")]


def test_file_lock_is_exclusive_and_can_be_tried_without_waiting(tmp_path):
    path = tmp_path / "x.lock"
    with file_lock(path) as held:
        assert held
        with file_lock(path, wait=False) as other:  # another open file: as another process sees it
            assert not other
    with file_lock(path, wait=False) as again:
        assert again


def test_the_lock_of_a_killed_process_is_free(tmp_path):
    path = tmp_path / "x.lock"
    code = f"from condlora.fileio import file_lock\nimport os\nwith file_lock({str(path)!r}):\n    os._exit(9)\n"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, timeout=60)
    assert done.returncode == 9
    with file_lock(path, wait=False) as held:
        assert held


def test_two_workers_train_every_pair_once_and_each_goes_through_all(tmp_path):
    """Both workers start together; a pair held by one is skipped by the other (the barrier proves both trained
    at the same time), and each worker ends having read every pair."""
    finished: set = set()
    trained: dict[str, list] = {"a": [], "b": []}
    both_busy = threading.Barrier(2, timeout=20)
    guard = threading.Lock()

    def worker(name: str) -> None:
        def train(pair):
            with guard:
                new = pair not in finished
                finished.add(pair)
            if new:
                trained[name].append(pair)
                if len(trained[name]) == 1:
                    both_busy.wait()  # a worker that waited on the other's pair instead would break the barrier
            return []

        orders[name] = train_shared(tmp_path, PAIRS, train)

    orders: dict[str, list] = {}
    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(trained["a"] + trained["b"]) == sorted(PAIRS)  # each pair trained once, none lost
    assert trained["a"] and trained["b"]
    assert sorted(orders["a"]) == sorted(orders["b"]) == sorted(PAIRS)
    assert {p.name for p in (tmp_path / "claims").iterdir()} == {claim_path(tmp_path, p).name for p in PAIRS}


def test_dropped_pairs_are_not_trained_and_unready_ones_wait(tmp_path):
    seen = []

    def train(pair):
        seen.append(pair)
        return [("cola", "condlora")] if pair == ("cola", "lora") else []

    def ready(pair, pending):  # the others of a task after its reference (lora)
        return pair[1] == "lora" or (pair[0], "lora") not in pending

    order = train_shared(tmp_path, [("cola", "condlora"), ("cola", "lora"), ("rte", "condlora"), ("rte", "lora")],
                         train, ready)
    assert order == seen == [("cola", "lora"), ("rte", "lora"), ("rte", "condlora")]


def test_shared_study_with_the_gate_trains_what_the_plain_study_trains(tmp_path):
    plain, shared = FakeRun(), FakeRun()
    with pytest.warns(UserWarning, match="cola: not learned"):
        a = run_study(settings(tmp_path / "a", tasks="cola,rte", skip_unlearned=True), run_fn=plain)
    with pytest.warns(UserWarning, match="cola: not learned"):
        b = run_study(settings(tmp_path / "b", tasks="cola,rte", skip_unlearned=True, share=True), run_fn=shared)
    key = [(c["task"], c["method"], c["seed"], c["lr"]) for c in plain.calls]
    assert [(c["task"], c["method"], c["seed"], c["lr"]) for c in shared.calls] == key
    assert b["skipped"] == a["skipped"] and b["tables"] == a["tables"] and b["complete"]


WORKER = """
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
from condlora.study.study import run_study
from test_study import FakeRun, settings
from pathlib import Path

class Logged(FakeRun):
    def __call__(self, cfg):
        time.sleep(0.3)
        with open(os.path.join(sys.argv[1], "calls.jsonl"), "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "task": cfg["task"], "method": cfg["method"],
                                "seed": cfg["seed"]}) + "\\n")
        return super().__call__(cfg)

record = run_study(settings(Path(sys.argv[1]), tasks="rte,mrpc", share=True), run_fn=Logged())
print(json.dumps({"complete": record["complete"], "runs": len(record["runs"]), "tables": record["tables"]}))
"""


def test_two_worker_processes_share_a_study(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    env = {**os.environ, "PYTHONPATH": SRC}
    tests = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), tests], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    runs = sorted((c["task"], c["method"], c["seed"]) for c in calls)
    assert runs == sorted((t, m, s) for t in ("rte", "mrpc") for m in ("lora", "condlora") for s in range(3))
    assert len({c["pid"] for c in calls}) == 2  # both trained
    results = [json.loads(o.splitlines()[-1]) for o, _ in outs]
    assert all(r["complete"] and r["runs"] == 12 for r in results) and results[0]["tables"] == results[1]["tables"]



def test_share_without_file_locks_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("condlora.study.settings.HAVE_FILE_LOCKS", False)
    with pytest.raises(ConfigError, match="--share needs file locks"):
        settings(tmp_path, share=True)
