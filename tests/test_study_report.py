"""`condlora study --status --report FILE`: the markdown report of a study's finished trainings, built from a fake
study folder (results.json / config.json / metrics.jsonl written by hand), and the CLI flag with its errors."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from condlora import cli
from condlora.study.report import build_report, scan_study

GRID = [1e-3, 2e-3, 5e-3]
RUN = {"model": "minilm", "head": "dense", "epochs": 8.0, "patience": 2, "group_by_length": True, "max_length": 128,
       "batch_size": 16, "max_train_samples": 8000, "lr": 1e-3, "seed": 0}


def result(task: str, method: str, lr: float, seed: int, val: float, test: float, **kw) -> dict:
    """A results.json as train() writes it (only the fields the report reads, plus a few)."""
    return {"task": task, "method": method, "lr": lr, "seed": seed, "val_score": val, "test_score": test,
            "metric": "accuracy", "best_step": 100, "steps_run": 150, "epochs_run": 3.0, "stopped_early": True,
            "wall_time_s": 600.0, **kw}


def put(out: Path, rel: str, res: dict | str | None = None, run: dict | None = None, evals: list | None = None
        ) -> Path:
    """A run folder under `out` with results.json (a dict, or raw text), config.json and metrics.jsonl."""
    d = out / rel
    d.mkdir(parents=True)
    if res is not None:
        (d / "results.json").write_text(res if isinstance(res, str) else json.dumps(res))
    if run is not None:
        (d / "config.json").write_text(json.dumps({"run": run, "params": {}}))
    if evals is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    return d


@pytest.fixture
def study(tmp_path) -> Path:
    """rte: lora's grid complete with seeds 0 (copied trial), 1, 3 (other LR) and 2 (unfinished); condlora with one
    trial, a corrupt one and a missing one; mrpc planned but nothing on disk."""
    out = tmp_path / "study"
    put(out, "search/rte/lora/trial0", result("rte", "lora", 1e-3, 0, 0.60, 0.58, stopped_early=False), RUN)
    best = result("rte", "lora", 2e-3, 0, 0.70, 0.64, best_step=250, steps_run=400, epochs_run=5.0, wall_time_s=900.0)
    put(out, "search/rte/lora/trial1", best, {**RUN, "lr": 2e-3})
    put(out, "search/rte/lora/trial2", result("rte", "lora", 5e-3, 0, 0.65, 0.66), {**RUN, "lr": 5e-3})
    put(out, "runs/rte/lora/seed0", best, {**RUN, "lr": 2e-3})
    put(out, "runs/rte/lora/seed1", result("rte", "lora", 2e-3, 1, 0.69, 0.66, wall_time_s=630.0))
    put(out, "runs/rte/lora/seed2", None, {**RUN, "seed": 2},
        [{"epoch": 1.0, "step": 80, "val_score": 0.55}, {"epoch": 2.0, "step": 160, "val_score": 0.6125}])
    put(out, "runs/rte/lora/seed3", result("rte", "lora", 1e-3, 3, 0.50, 0.50))
    put(out, "search/rte/condlora/trial0", result("rte", "condlora", 1e-3, 0, 0.68, 0.69))
    put(out, "search/rte/condlora/trial1", '{"lr": 0.002, "val_sc')  # torn write
    put(out, "search/rte/condlora/trial2")  # started, nothing written yet
    settings = {"tasks": ["rte", "mrpc"], "methods": ["lora", "condlora"], "lr_grid": GRID, "lr_search": None,
                "search_seed": 0}
    (out / "study.json").write_text(json.dumps({"settings": settings, "lr": {"rte": {"lora": {"lr": 2e-3}}}}))
    return out


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `out` with its bytes and mtime."""
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def test_scan_sorts_finished_unfinished_and_corrupt_runs(study):
    scan = scan_study(study)
    assert [(f.method, f.kind, f.index) for f in scan.finished] == [
        ("condlora", "trial", 0), ("lora", "trial", 0), ("lora", "trial", 1), ("lora", "trial", 2),
        ("lora", "seed", 0), ("lora", "seed", 1), ("lora", "seed", 3)]
    assert [str(d.relative_to(study)) for d in scan.unfinished] == ["search/rte/condlora/trial2",
                                                                     "runs/rte/lora/seed2"]
    assert [str(d.relative_to(study)) for d in scan.unreadable] == ["search/rte/condlora/trial1"]


def test_report_rows_and_numbers(study):
    before = snapshot(study)
    md = build_report(study, status="STATUS", now=0.0)
    assert snapshot(study) == before  # read-only
    lines = md.splitlines()
    assert lines[0] == f"# Partial study report: `{study}`"
    assert ("Run settings (from `search/rte/condlora/trial0/config.json`)" not in md
            and "Run settings (from `search/rte/lora/trial0/config.json`): model minilm · head dense · epochs 8 · "
                "patience 2 · group_by_length yes · max_length 128 · batch_size 16 · max_train_samples 8000" in lines)
    assert "Status: STATUS" in lines
    # 4 trials (600 + 900 + 600 + 600 s) and seeds 1, 3 (630 + 600 s); seed 0 is trial 1 copied
    assert ("Compute: 6 trainings finished, 1.1 h of training wall time in all (summed over trainings; seed runs "
            "copied from a search trial counted once)") in lines
    rte = lines.index("## RTE (`rte`, metric: accuracy)")
    assert lines[rte + 2:rte + 11] == [
        "| Method | Kind | LR | Seed | Val | Test | Best step / steps | Epochs run | Stopped early | Wall (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| lora | trial 0 | 0.001 | 0 | 60.00 | 58.00 | 100 / 150 | 3 | no | 10.0 |",
        "| lora | trial 1 | 0.002 | 0 | 70.00 | 64.00 | 250 / 400 | 5 | yes | 15.0 |",
        "| lora | trial 2 | 0.005 | 0 | 65.00 | 66.00 | 100 / 150 | 3 | yes | 10.0 |",
        "| lora | seed 0 (copy of trial 1) | 0.002 | 0 | 70.00 | 64.00 | 250 / 400 | 5 | yes | 15.0 |",
        "| lora | seed 1 | 0.002 | 1 | 69.00 | 66.00 | 100 / 150 | 3 | yes | 10.5 |",
        "| lora | seed 3 | 0.001 | 3 | 50.00 | 50.00 | 100 / 150 | 3 | yes | 10.0 |",
        "| condlora | trial 0 | 0.001 | 0 | 68.00 | 69.00 | 100 / 150 | 3 | yes | 10.0 |"]
    # seeds 0 and 1 at the chosen 2e-3: mean 65, half-width t(0.975, 1) * sd(64, 66) / sqrt(2) = 12.706 * 1
    assert ("- lora: best LR 0.002 (val 70.00, trial 1) · 3/3 trials finished (search complete) · chosen LR 0.002: "
            "test 65.00 ± 12.71 (95% CI) over n=2 seeds (0, 1) (+1 at another LR, left out)") in lines
    assert ("- condlora: best LR 0.001 (val 68.00, trial 0) · 1/3 trials finished (search in progress) · "
            "no chosen LR yet") in lines
    assert ("Direction only, one seed each (the best-by-validation run with seed 0; Δ test vs lora, not a "
            "significance test): condlora +5.00 (69.00 vs 64.00)") in lines
    mrpc = lines.index("## MRPC (`mrpc`, metric: ?)")
    assert lines[mrpc + 2] == "No finished training yet."
    assert lines[lines.index("## Left out") + 2:] == [
        "- not finished (no results.json: running, interrupted or diverged): `search/rte/condlora/trial2`",
        "- not finished (no results.json: running, interrupted or diverged): `runs/rte/lora/seed2` "
        "(last evaluation: epoch 2, step 160, val 61.25)",
        "- skipped: `search/rte/condlora/trial1/results.json` is unreadable (corrupt JSON or missing "
        "lr/val_score/test_score)"]


def test_a_grid_extended_past_its_edge_plans_more_trials(study):
    put(study, "search/rte/lora/trial3", result("rte", "lora", 5e-4, 0, 0.50, 0.50), {**RUN, "lr": 5e-4})
    assert "- lora: best LR 0.002 (val 70.00, trial 1) · 4/4 trials finished (search complete)" in build_report(study)
    put(study, "search/rte/lora/trial4")  # extended again: training
    assert "· 4/5 trials finished (search in progress) ·" in build_report(study)


def test_one_seed_has_no_ci_and_no_direction_without_the_reference(tmp_path):
    out = tmp_path / "study"
    put(out, "search/cola/condlora/trial0", result("cola", "condlora", 1e-3, 0, 0.30, 0.25, metric="mcc"))
    put(out, "runs/cola/condlora/seed0", result("cola", "condlora", 1e-3, 0, 0.30, 0.25, metric="mcc"))
    settings = {"tasks": ["cola"], "methods": ["lora", "condlora"], "lr_grid": [1e-3], "search_seed": 0}
    (out / "study.json").write_text(json.dumps({"settings": settings, "lr": {"cola": {"condlora": {"lr": 1e-3}}}}))
    lines = build_report(out, status="S").splitlines()
    assert ("- condlora: best LR 0.001 (val 30.00, trial 0) · 1/1 trials finished (search complete) · chosen LR "
            "0.001: test 25.00 over n=1 seeds (0)") in lines
    assert "- lora: 0/1 trials finished (search in progress) · no chosen LR yet" in lines
    assert not any(line.startswith("Direction") for line in lines)


def progress_file(out: Path, n_trials: int) -> None:
    """A finished worker's progress record planning cola x lora with `n_trials` trials."""
    rec = {"host": socket.gethostname(), "pid": 1, "finished": True, "ok": True, "current": None,
           "plan": {"pairs": [["cola", "lora"]], "n_trials": n_trials, "seeds": [0], "reused_seed": 0}}
    (out / "progress").mkdir(parents=True)
    (out / "progress" / "w.json").write_text(json.dumps(rec))


@pytest.mark.parametrize("planned, want", [(4, "2/4 trials finished (search in progress)"),
                                           (None, "2 trials finished")])
def test_trials_planned_from_progress_files_or_unknown(tmp_path, planned, want):
    out = tmp_path / "study"
    for k, (lr, val) in enumerate([(1e-3, 0.4), (3e-4, 0.5)]):
        put(out, f"search/cola/lora/trial{k}", result("cola", "lora", lr, 0, val, val))
    if planned:
        progress_file(out, planned)
    md = build_report(out, status="S")
    assert f"- lora: best LR 0.0003 (val 50.00, trial 1) · {want} · no chosen LR yet" in md.splitlines()


def test_cli_writes_the_report(study, tmp_path, capsys):
    path = tmp_path / "reports" / "partial.md"
    assert cli.main(["study", "--status", "--report", str(path), "--output-dir", str(study)]) == 0
    status = capsys.readouterr().out.strip()
    md = path.read_text()
    assert f"Status: {status}" in md and "| lora | trial 1 | 0.002 | 0 | 70.00 | 64.00 |" in md
    assert not list(study.rglob("partial.md"))


def test_watch_rewrites_the_report_every_tick(study, tmp_path, capsys):
    rec = {"host": socket.gethostname(), "pid": os.getpid(), "finished": False, "current": None,
           "plan": {"pairs": [["rte", "lora"]], "n_trials": 3, "seeds": [0, 1, 2], "reused_seed": 0}}
    (study / "progress").mkdir()
    worker = study / "progress" / "w.json"
    worker.write_text(json.dumps(rec))
    path = tmp_path / "partial.md"

    def finish_worker() -> None:  # once the first report is there, the worker ends
        deadline = time.time() + 30
        while not path.exists() and time.time() < deadline:
            time.sleep(0.01)
        worker.write_text(json.dumps({**rec, "finished": True}))

    t = threading.Thread(target=finish_worker)
    t.start()
    rc = cli.main(["study", "--status", "--watch", "0.05", "--report", str(path), "--output-dir", str(study)])
    t.join()
    printed = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(printed) >= 2 and "now: between runs" in printed[0]
    assert printed[-1].endswith("no worker running") and f"Status: {printed[-1]}" in path.read_text()


@pytest.mark.parametrize("argv, message", [
    (["--status", "--report", "{tmp}/r.md", "--output-dir", "{tmp}/nowhere"], "does not exist"),
    (["--report", "{tmp}/r.md", "--output-dir", "{study}"], "--report needs --status"),
    (["--status", "--report", "{study}/study.json", "--output-dir", "{study}"], "would overwrite the study's own"),
    (["--status", "--report", "{tmp}", "--output-dir", "{study}"], "is a folder"),
])
def test_cli_errors_exit_2_with_one_line(study, tmp_path, capsys, argv, message):
    before = snapshot(study)
    argv = [a.format(tmp=tmp_path, study=study) for a in argv]
    assert cli.main(["study", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and message in captured.err
    assert snapshot(study) == before and not (tmp_path / "r.md").exists()
