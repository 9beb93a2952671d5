"""scripts/study-common.sh, shared by the main job and the asymmetry study: the workers' `condlora study` calls
(through a stand-in `condlora` that records its arguments) and the choice of the better CondLoRA form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
"""


def run_common(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    """`script` run in bash after sourcing scripts/study-common.sh, with the stand-in condlora first on PATH."""
    bin_dir, glue = tmp_path / "bin", tmp_path / "glue"
    bin_dir.mkdir(exist_ok=True)
    glue.mkdir(exist_ok=True)
    (bin_dir / "condlora").write_text(FAKE)
    (bin_dir / "condlora").chmod(0o755)
    full = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
            "CONDLORA_GLUE_DIR": str(glue), "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source scripts/study-common.sh; {script}"],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def study_calls(tmp_path: Path) -> list[str]:
    """The recorded `condlora study` calls that train (not the --status ones), sorted."""
    return sorted(c for c in (tmp_path / "calls").read_text().splitlines() if "--status" not in c)


@pytest.mark.parametrize("env, tasks", [
    ({}, ["mrpc,stsb", "rte,cola,sst2"]),
    ({"WORKER_TASKS": "cola,sst2,rte mrpc,stsb"}, ["cola,sst2,rte", "mrpc,stsb"]),
    ({"WORKERS": "1"}, ["rte,mrpc,stsb,cola,sst2"]),
])
def test_run_part_starts_one_study_call_per_worker(tmp_path, env, tasks):
    done = run_common(tmp_path, "run_part lora,condlora 3", **env)
    assert done.returncode == 0, done.stderr
    calls = study_calls(tmp_path)
    assert [c.split("--tasks ")[1].split()[0] for c in calls] == tasks
    out = tmp_path / "out"
    for c in calls:
        assert c.startswith("study --model minilm --head dense --epochs 8 --patience 2 --group-by-length")
        assert f"--glue-dir {tmp_path / 'glue'} --skip-unlearned --output-dir {out}" in c
        assert c.endswith("--methods lora,condlora --seeds 3 --quiet")
    assert "training lora,condlora, seeds 0-2" in done.stdout


@pytest.mark.parametrize("workers, n", [("2", 2), ("1", 1)])
def test_run_part_with_share_gives_every_worker_every_task(tmp_path, workers, n):
    done = run_common(tmp_path, "run_part lora,condlora 3", SHARE="1", WORKERS=workers)
    assert done.returncode == 0, done.stderr
    calls = study_calls(tmp_path)
    assert len(calls) == n
    assert all(c.endswith("--tasks rte,mrpc,stsb,cola,sst2 --methods lora,condlora --share --seeds 3 --quiet")
               for c in calls)


def test_run_jobs_runs_a_workers_queue_in_order_and_skips_empty_calls(tmp_path):
    done = run_common(tmp_path, 'run_jobs q 3 "--tasks mrpc --methods lora; ;--tasks stsb --methods lora;"')
    assert done.returncode == 0, done.stderr
    calls = [c for c in (tmp_path / "calls").read_text().splitlines() if "--status" not in c]
    assert [c.split("--output-dir ")[1].split(" ", 1)[1] for c in calls] == [
        "--tasks mrpc --methods lora --seeds 3 --quiet", "--tasks stsb --methods lora --seeds 3 --quiet"]


def test_better_form_is_the_higher_average_over_tasks(tmp_path):
    scores = {("mrpc", "condlora"): [0.70, 0.72], ("mrpc", "condlora-general"): [0.74],
              ("cola", "condlora"): [0.30], ("cola", "condlora-general"): [0.20], ("mrpc", "lora"): [0.99],
              ("rte", "condlora-general"): [0.99]}  # a task the other form has not run: left out
    for (task, method), xs in scores.items():
        for seed, x in enumerate(xs):
            d = tmp_path / "out" / "runs" / task / method / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({"task": task, "method": method, "test_score": x}))
    aside = tmp_path / "out" / "runs" / "cola" / "condlora-general" / "seed1-lr0.002"  # another LR: left out
    aside.mkdir()
    (aside / "results.json").write_text(json.dumps({"task": "cola", "method": "condlora-general", "test_score": 1}))
    done = run_common(tmp_path, 'condlora_better_form "$OUT"')
    assert done.stdout.splitlines()[-1] == "condlora-paper"  # stored condlora/: (0.71 + 0.30) / 2 > (0.74 + 0.20) / 2
    (tmp_path / "out" / "runs" / "cola" / "condlora-general" / "seed0" / "results.json").write_text(
        json.dumps({"task": "cola", "method": "condlora-general", "test_score": 0.40}))
    assert run_common(tmp_path, 'condlora_better_form "$OUT"').stdout.splitlines()[-1] == "condlora"  # general form


def test_frontier_copies_the_converged_records_and_gives_each_row_its_own_grid(tmp_path):
    main = tmp_path / "converged"
    for kind, leaf in (("runs", "seed0"), ("search", "trial0")):
        for method in ("lora", "condlora-general", "lora-frozen-a"):
            d = main / kind / "mrpc" / method / leaf
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({"method": method}))
    (tmp_path / "pip-calls").write_text("")
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/usr/bin/env bash\necho "$*" >> {tmp_path / "pip-calls"}\n')
    fake_python.chmod(0o755)
    records = tmp_path / "records"  # this study's own committed records: finished ones are copied back
    for leaf, finished in (("trial0", True), ("trial1", False)):
        d = records / "search" / "mrpc" / "lora-r1" / leaf
        d.mkdir(parents=True)
        (d / ("results.json" if finished else "config.json")).write_text(json.dumps({"method": "lora-r1"}))
    env = {"SKIP_INSTALL": "1", "MAIN": str(main), "RECORDS": str(records)}
    done = run_common(tmp_path, f"PYTHON={fake_python} bash scripts/frontier.sh", **env)
    assert done.returncode == 0, done.stderr
    assert "pip" not in (tmp_path / "pip-calls").read_text()  # SKIP_INSTALL=1: no scripts/install.sh
    out = tmp_path / "out"
    assert json.loads((out / "runs/mrpc/lora/seed0/results.json").read_text()) == {"method": "lora"}
    assert (out / "search/mrpc/condlora-general/trial0/results.json").is_file()
    assert not (out / "runs/mrpc/lora-frozen-a").exists() and not (out / "runs/mrpc/lora").is_symlink()
    assert (out / "search/mrpc/lora-r1/trial0/results.json").is_file()  # a finished trial resumes from its record
    assert not (out / "search/mrpc/lora-r1/trial1").exists()  # an unfinished one trains again
    calls = study_calls(tmp_path)  # two workers sharing every task, then the tables over all of them
    assert [c.split("--tasks ")[1].split()[0] for c in calls] == ["mrpc,stsb,cola,sst2"] * 3
    methods = "condlora,lora,condlora-paper,lora-r1,lora-r2,vera,vera-r1024,fourierft"
    for c in calls:
        assert "--lr-grid auto " in c and "1e-3" not in c and f"--output-dir {out} " in c
    assert sum(c.endswith(f"--methods {methods} --share --seeds 3 --quiet") for c in calls) == 2
    assert sum(c.endswith(f"--methods {methods} --seeds 3 --quiet") for c in calls) == 1
    (tmp_path / "calls").unlink()  # SHARE=0: each worker its own tasks (WORKER_TASKS)
    assert run_common(tmp_path, f"PYTHON={fake_python} bash scripts/frontier.sh", SHARE="0", **env).returncode == 0
    calls = study_calls(tmp_path)
    assert [c.split("--tasks ")[1].split()[0] for c in calls] == ["cola,sst2", "mrpc,stsb", "mrpc,stsb,cola,sst2"]
    assert not any("--share" in c for c in calls)
    (out / "runs/mrpc/lora/seed0/results.json").write_text("{}")  # a re-run keeps what is there
    assert run_common(tmp_path, f"PYTHON={fake_python} bash scripts/frontier.sh", **env).returncode == 0
    assert (out / "runs/mrpc/lora/seed0/results.json").read_text() == "{}"


FAKE_FRONTIER = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in *--near*) echo "$NEAR";; esac
"""


def frontier_stand_in(tmp_path, near: str):
    """A stand-in python for frontier.sh whose `--near` answers `near`, and the script's environment."""
    fake_python = tmp_path / "python"
    fake_python.write_text(FAKE_FRONTIER)
    fake_python.chmod(0o755)
    none = str(tmp_path / "none")
    return fake_python, {"SKIP_INSTALL": "1", "MAIN": none, "RECORDS": none, "NEAR": near}


def test_frontier_part_b_extends_the_rows_near_the_reference_once_and_draws_the_frontier(tmp_path):
    fake_python, env = frontier_stand_in(tmp_path, "condlora-general,lora-r2,vera")
    done = run_common(tmp_path, f"PYTHON={fake_python} bash scripts/frontier.sh", **env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    calls = [c for c in (tmp_path / "calls").read_text().splitlines() if "--status" not in c]
    assert calls[2] == f"-m condlora.study.frontier {out} --tasks mrpc,stsb,cola,sst2 --near 1.5"
    assert [c.split("--methods ")[1] for c in calls[3:5]] == ["condlora,lora-r2,vera --share --seeds 5 --quiet"] * 2
    assert calls[5].startswith("study ") and "--seeds 3" in calls[5]  # the tables over every seed on disk
    assert calls[6] == (f"-m condlora.study.frontier {out} --tasks mrpc,stsb,cola,sst2 "
                        f"--extra-runs docs/results/asymmetry --output {out}")
    assert (out / "part-b-methods").read_text() == "condlora-general,lora-r2,vera\n"
    (tmp_path / "calls").unlink()  # a re-run extends the same rows, whatever the averages say now
    env.update(NEAR="condlora-general", EXTRA_RUNS=str(tmp_path / "none"))
    assert run_common(tmp_path, f"PYTHON={fake_python} bash scripts/frontier.sh", **env).returncode == 0
    calls = [c for c in (tmp_path / "calls").read_text().splitlines() if "--status" not in c]
    assert not any("--near" in c for c in calls)
    assert sum("--methods condlora,lora-r2,vera --share --seeds 5" in c for c in calls) == 2
    assert calls[-1] == f"-m condlora.study.frontier {out} --tasks mrpc,stsb,cola,sst2 --output {out}"


def test_frontier_part_a_alone_draws_the_tables_and_leaves_part_b(tmp_path):
    fake_python, env = frontier_stand_in(tmp_path, "condlora-general,lora-r2,vera")
    done = run_common(tmp_path, f"PYTHON={fake_python} bash scripts/frontier.sh", PART="a", **env)
    assert done.returncode == 0, done.stderr
    calls = [c for c in (tmp_path / "calls").read_text().splitlines() if "--status" not in c]
    assert sum("--share --seeds 3" in c for c in calls) == 2 and not any("--near" in c for c in calls)
    assert "--seeds 5" not in "".join(calls) and not (tmp_path / "out" / "part-b-methods").exists()
    assert calls[-1].startswith("-m condlora.study.frontier") and "--output" in calls[-1]
    done = run_common(tmp_path, f"PYTHON={fake_python} bash scripts/frontier.sh", PART="b", **env)
    assert done.returncode == 2 and "PART must be a or all; got 'b'" in done.stderr


def test_frontier_part_b_is_skipped_when_no_row_is_near(tmp_path):
    fake_python, env = frontier_stand_in(tmp_path, "condlora-general")
    assert run_common(tmp_path, f"PYTHON={fake_python} bash scripts/frontier.sh", **env).returncode == 0
    assert "--seeds 5" not in (tmp_path / "calls").read_text()


def test_save_records_copies_finished_runs_only_records_only(tmp_path):
    """scripts/save-records.sh: finished seeds and trials (results.json present) are copied as config, metrics and
    results; unfinished runs, adapters and checkpoints stay behind; a METHOD list limits the rows; a record
    already saved is kept."""
    study, records = tmp_path / "study", tmp_path / "records"
    done = [study / "runs/mrpc/vera/seed1", study / "search/cola/lora-r1/trial0", study / "runs/mrpc/lora/seed0"]
    for d in done:
        (d / "best_adapter").mkdir(parents=True)
        (d / "checkpoint").mkdir()
        for f in ("config.json", "metrics.jsonl", "results.json", "best_adapter/adapter_model.safetensors"):
            (d / f).write_text(f"{d.name} {f}")
    running = study / "runs/mrpc/vera/seed2"
    running.mkdir(parents=True)
    (running / "config.json").write_text("{}")

    def save(*methods: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "scripts/save-records.sh", str(study), str(records), *methods], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=True)

    got = save("vera", "lora-r1")
    assert sorted(got.stdout.split()) == ["runs/mrpc/vera/seed1", "search/cola/lora-r1/trial0"]
    saved = sorted(str(p.relative_to(records)) for p in records.rglob("*") if p.is_file())
    assert saved == [f"{r}/{f}" for r in ("runs/mrpc/vera/seed1", "search/cola/lora-r1/trial0")
                     for f in ("config.json", "metrics.jsonl", "results.json")]
    assert (records / "runs/mrpc/vera/seed1/results.json").read_text() == "seed1 results.json"
    (done[0] / "results.json").write_text("changed")
    assert save().stdout.split() == ["runs/mrpc/lora/seed0"]  # every row; the saved vera record is kept
    assert (records / "runs/mrpc/vera/seed1/results.json").read_text() == "seed1 results.json"
    assert subprocess.run(["bash", "scripts/save-records.sh", str(tmp_path / "nope"), str(records)], cwd=ROOT,
                          capture_output=True, text=True).returncode == 2


def test_save_records_with_adapters_and_restore_records_round_trip(tmp_path):
    """ADAPTERS=1 also saves each finished seed's and trial's best_adapter/ (a seed 0 is a copy of its trial),
    also into a record saved before without it; restore_records copies the saved runs into a study folder that
    lacks them, and leaves alone what the folder already holds."""
    study, records = tmp_path / "study", tmp_path / "records"
    trial = study / "search/stsb/lora/trial0"
    for d in (study / "runs/stsb/lora/seed0", trial):
        (d / "best_adapter").mkdir(parents=True)
        for f in ("config.json", "results.json", "best_adapter/adapter_model.safetensors"):
            (d / f).write_text(f"{d.name} {f}")

    def save(**env: str) -> list[str]:
        return subprocess.run(["bash", "scripts/save-records.sh", str(study), str(records)], cwd=ROOT, check=True,
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=60).stdout.split()

    assert save() == ["runs/stsb/lora/seed0", "search/stsb/lora/trial0"]
    assert not list(records.rglob("best_adapter"))
    (trial / "results.json").write_text("changed")
    assert save(ADAPTERS="1") == ["runs/stsb/lora/seed0/best_adapter", "search/stsb/lora/trial0/best_adapter"]
    assert (records / "runs/stsb/lora/seed0/best_adapter/adapter_model.safetensors").read_text().startswith("seed0")
    assert (records / "search/stsb/lora/trial0/best_adapter/adapter_model.safetensors").is_file()
    assert (records / "search/stsb/lora/trial0/results.json").read_text() == "trial0 results.json"  # kept
    assert save(ADAPTERS="1") == []
    out = tmp_path / "out"
    (out / "runs/stsb/lora/seed0").mkdir(parents=True)
    (out / "runs/stsb/lora/seed0/results.json").write_text("kept")
    done = run_common(tmp_path, f"restore_records {records}")
    assert done.returncode == 0, done.stderr
    assert (out / "runs/stsb/lora/seed0/results.json").read_text() == "kept"
    assert (out / "search/stsb/lora/trial0/results.json").read_text() == "trial0 results.json"
    assert not list(out.rglob("*.tmp"))
    (out / "runs/stsb/lora/seed0/results.json").unlink()
    (out / "runs/stsb/lora/seed0").rmdir()
    assert run_common(tmp_path, f"restore_records {records}").returncode == 0
    assert (out / "runs/stsb/lora/seed0/best_adapter/adapter_model.safetensors").is_file()


def test_save_records_carries_unfinished_checkpoints_and_restore_resumes_them(tmp_path):
    """CHECKPOINTS=1: an unfinished run's checkpoint is carried (again only once it has gone further), then gives
    way to the run's finished records; restore_records brings a carried run back only where OUT lacks it, and a
    finished record replaces an unfinished run in OUT."""
    study, records, out = tmp_path / "study", tmp_path / "records", tmp_path / "out"
    run = study / "runs/stsb/lora/seed1"

    def at_step(step: int) -> None:
        (run / "checkpoint").mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text("{}")
        (run / "checkpoint/state.json").write_text(json.dumps({"step": step, "best_step": 99}))
        (run / "checkpoint/trainable.safetensors").write_text(f"weights at {step}")

    def save(**env: str) -> list[str]:
        done = subprocess.run(["bash", "scripts/save-records.sh", str(study), str(records)], cwd=ROOT,
                              env={**os.environ, "PYTHON": sys.executable, **env}, capture_output=True, text=True,
                              timeout=60, check=True)
        return done.stdout.splitlines()

    at_step(6)
    assert save() == [] and not records.exists()  # without CHECKPOINTS=1 nothing unfinished is saved
    assert save(CHECKPOINTS="1") == ["checkpoint runs/stsb/lora/seed1 (step 6)"]
    assert save(CHECKPOINTS="1") == []  # the same step: kept
    carried = records / "runs/stsb/lora/seed1"
    assert (carried / "checkpoint/trainable.safetensors").read_text() == "weights at 6"
    at_step(9)
    assert save(CHECKPOINTS="1") == ["checkpoint runs/stsb/lora/seed1 (step 9)"]
    assert (carried / "checkpoint/trainable.safetensors").read_text() == "weights at 9"
    assert run_common(tmp_path, f"restore_records {records}").returncode == 0
    assert (out / "runs/stsb/lora/seed1/checkpoint/state.json").is_file()
    at_step(12)
    (out / "runs/stsb/lora/seed1/checkpoint/trainable.safetensors").write_text("further here")
    assert run_common(tmp_path, f"restore_records {records}").returncode == 0  # OUT's own run is left alone
    assert (out / "runs/stsb/lora/seed1/checkpoint/trainable.safetensors").read_text() == "further here"
    (run / "results.json").write_text("finished")
    assert save(CHECKPOINTS="1") == ["runs/stsb/lora/seed1"]
    assert sorted(p.name for p in carried.iterdir()) == ["config.json", "results.json"]
    assert run_common(tmp_path, f"restore_records {records}").returncode == 0
    assert sorted(p.name for p in (out / "runs/stsb/lora/seed1").iterdir()) == ["config.json", "results.json"]
    assert not list(records.rglob("*.tmp")) and not list(out.rglob("*.tmp"))
