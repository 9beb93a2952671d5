"""`condlora study` outputs with the fake runner of test_study.py: any set of seeds and extending a study, tables
over every seed found, the sanity gate, the figures, and the live progress (`--status`)."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from condlora import cli
from condlora.errors import CondLoRAError, ConfigError
from condlora.study.plots import baseline_in_view, validation_curves
from condlora.study.progress import status_line, study_status, watch
from condlora.study.study import PAPER_LR, parse_seeds, run_study
from test_study import TEST, FakeRun, glue_dir, settings


def table2(tmp_path) -> dict[tuple[str, str], dict]:
    """table2.csv rows by (task, method)."""
    return {(r["task"], r["method"]): r for r in csv.DictReader((tmp_path / "study" / "table2.csv").open())}


@pytest.mark.parametrize("spec, want", [
    (3, [0, 1, 2]), ("3", [0, 1, 2]), ("3,4,5", [3, 4, 5]), ("3-5", [3, 4, 5]), ("0-2,7", [0, 1, 2, 7]),
    ("7-7", [7]), ("7,", [7]), ([5, 3, 5], [3, 5]), (" 4 - 5 , 1", [1, 4, 5]),
])
def test_parse_seeds(spec, want):
    assert parse_seeds(spec) == want


@pytest.mark.parametrize("spec", ["0", 0, "-1", "x", "5-3", "1-2-3", ",", "", "1.5"])
def test_parse_seeds_errors(spec):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(spec)


def test_extending_seeds_trains_only_the_new_ones_and_tables_use_all(tmp_path):
    run_study(settings(tmp_path), run_fn=FakeRun())
    more = FakeRun()
    record = run_study(settings(tmp_path, seeds="3-4"), run_fn=more)  # same study, more seeds: not refused
    assert sorted({c["seed"] for c in more.calls}) == [3, 4] and len(more.calls) == 8
    rows = table2(tmp_path)
    assert {rows[t, m]["n"] for t in ("rte", "mrpc", "avg") for m in ("lora", "condlora")} == {"5"}
    assert rows["rte", "condlora"]["pairs"] == "5" and len(record["runs"]) == 20
    md = (tmp_path / "study" / "table2.md").read_text()
    assert "· seeds 0–4." in md
    assert json.loads((tmp_path / "study" / "study.json").read_text())["settings"]["seeds"] == [3, 4]
    again = FakeRun()
    run_study(settings(tmp_path, seeds=5), run_fn=again)
    assert again.calls == []


def test_paired_statistics_only_over_common_seeds(tmp_path):
    run_study(settings(tmp_path, methods="condlora", seeds=5), run_fn=FakeRun())
    fake = FakeRun()
    run_study(settings(tmp_path, methods="lora,condlora", seeds=3), run_fn=fake)
    assert {(c["method"], c["seed"]) for c in fake.calls} == {("lora", s) for s in range(3)}
    rows = table2(tmp_path)
    assert (rows["rte", "lora"]["n"], rows["rte", "condlora"]["n"], rows["rte", "condlora"]["pairs"]) == ("3", "5", "3")
    scores = {m: [100 * TEST["rte", m][s % 3] for s in range(5)] for m in ("lora", "condlora")}
    assert float(rows["rte", "condlora"]["mean"]) == pytest.approx(sum(scores["condlora"]) / 5)
    assert float(rows["rte", "condlora"]["delta"]) == pytest.approx(
        sum(scores["condlora"][s] - scores["lora"][s] for s in range(3)) / 3)


def test_sanity_gate_leaves_unlearned_tasks_out_of_the_average(tmp_path):
    run_study(settings(tmp_path, tasks="rte,mrpc,cola"), run_fn=FakeRun())
    md = (tmp_path / "study" / "table2.md").read_text()
    # CoLA LoRA MCC 2, -1, 3: mean 1.33 is not clearly above the trivial 0; RTE, MRPC (majority 53.85) are
    assert "| Method | RTE | MRPC | CoLA † | Avg. (2 learned) |" in md
    assert "| LoRA | 69.67 ± 3.79 | 84.67 ± 3.79 | 1.33 ± 5.17 | 77.17 ± 3.79 |" in md  # avg as without CoLA
    assert ("† CoLA: not learned at this budget (LoRA 1.33 (95% CI ± 5.17) vs trivial baseline 0.00: +1.33, "
            "not above max(1 point, CI half-width)); left out of Avg.") in md
    assert "| CoLA † | CondLoRA (paper form) | 3 |" in md and md.count("| n/a: not learned |") == 1  # CoLA only
    rows = table2(tmp_path)
    assert rows["cola", "lora"]["learned"] == "False" and float(rows["cola", "lora"]["baseline"]) == 0.0
    assert float(rows["avg", "lora"]["mean"]) == pytest.approx((69 + 2 / 3 + 84 + 2 / 3) / 2)


def test_skip_unlearned_trains_other_methods_only_where_the_reference_learned(tmp_path):
    fake = FakeRun()
    with pytest.warns(UserWarning, match=r"cola: not learned at this budget \(LoRA 1.33 .*condlora not trained"):
        record = run_study(settings(tmp_path, tasks="cola,rte", skip_unlearned=True), run_fn=fake)
    order = [(c["task"], c["method"], c["seed"]) for c in fake.calls]
    assert order == [("cola", "lora", s) for s in range(3)] + [("rte", m, s) for m in ("lora", "condlora")
                                                                 for s in range(3)]  # reference first per task
    assert list(record["skipped"]) == ["cola"] and "LoRA 1.33" in record["skipped"]["cola"]
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert saved["complete"] and list(saved["skipped"]) == ["cola"]
    plan = [json.loads(p.read_text())["plan"]["pairs"] for p in (tmp_path / "study" / "progress").glob("*.json")]
    assert plan == [[["cola", "lora"], ["rte", "lora"], ["rte", "condlora"]]]  # nothing left to wait for
    md = (tmp_path / "study" / "table2.md").read_text()
    assert "| LoRA | 1.33 ± 5.17 | 69.67 ± 3.79 | 69.67 ± 3.79 |" in md and "† CoLA: not learned" in md
    again = FakeRun()
    with pytest.warns(UserWarning, match="cola: not learned"):
        run_study(settings(tmp_path, tasks="cola,rte", skip_unlearned=True), run_fn=again)
    assert again.calls == []
    run_study(settings(tmp_path, tasks="cola,rte"), run_fn=again)  # without the flag: every pair
    assert sorted({(c["task"], c["method"]) for c in again.calls}) == [("cola", "condlora")]


def test_study_json_keeps_the_lrs_other_workers_chose(tmp_path):
    run_study(settings(tmp_path, tasks="rte"), run_fn=FakeRun())  # worker 1
    run_study(settings(tmp_path, tasks="mrpc", seeds=1), run_fn=FakeRun())  # worker 2, same folder
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert {t: {m: v["lr"] for m, v in by_m.items()} for t, by_m in saved["lr"].items()} == {
        t: dict(zip(("lora", "condlora"), PAPER_LR[t], strict=True)) for t in ("rte", "mrpc")}
    assert saved["settings"]["tasks"] == ["mrpc"] and {r["task"] for r in saved["runs"]} == {"mrpc"}
    run_study(settings(tmp_path, tasks="rte", lr_preset=None, lr=1e-4, seeds=1), run_fn=FakeRun())
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert saved["lr"]["rte"] == {m: {"lr": 1e-4, "source": "--lr"} for m in ("lora", "condlora")}
    assert saved["lr"]["mrpc"]["lora"]["lr"] == PAPER_LR["mrpc"][0]


def test_unknown_baseline_is_not_gated(tmp_path):
    run_args = {"model": "fake", "epochs": 1, "glue_dir": str(tmp_path / "no-glue")}
    with pytest.warns(UserWarning, match="no trivial baseline for rte"):
        run_study(settings(tmp_path, tasks="rte", run_args=run_args), run_fn=FakeRun())
    md = (tmp_path / "study" / "table2.md").read_text()
    assert "| Method | RTE | Avg. (1 learned) |" in md and "RTE: trivial baseline unknown" in md


def test_figures_are_written(tmp_path):
    record = run_study(settings(tmp_path), run_fn=FakeRun())
    out = tmp_path / "study"
    assert record["figures"] == ["table2.png", "table2_seeds.png", "table2_curves.png"]
    for name in record["figures"]:
        data = (out / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 5000
    curves = validation_curves(record["runs"], ["rte", "mrpc"], ["lora", "condlora"])
    seed, by_method = curves["rte"]
    assert seed == 0 and [step for step, _ in by_method["lora"]] == [5, 10, 15]


def test_seed_plot_leaves_out_a_baseline_that_would_squash_the_dots():
    assert baseline_in_view(68.38, [76.0, 77.5, 78.4])  # MRPC: majority class within reach, drawn
    assert not baseline_in_view(0.0, [82.6, 83.4, 85.6])  # STS-B: Pearson 0 far below, left as a note
    assert baseline_in_view(0.0, [-2.0, 15.0, 27.7])  # CoLA: MCC 0 among the seeds, drawn
    assert baseline_in_view(50.0, []) and not baseline_in_view(math.nan, [1.0])


def write_progress(out: Path, pid: int, current: dict | None, pairs: list, seeds: list[int], n_trials: int = 0,
                   reused: int | None = None) -> None:
    """A worker's progress file as Progress writes it."""
    rec = {"host": socket.gethostname(), "pid": pid, "finished": False, "current": current,
           "plan": {"pairs": pairs, "n_trials": n_trials, "seeds": seeds, "reused_seed": reused}}
    (out / "progress").mkdir(parents=True, exist_ok=True)
    (out / "progress" / f"{socket.gethostname()}-{pid}.json").write_text(json.dumps(rec))


def finish_run(out: Path, kind: str, task: str, method: str, name: str, wall: float) -> None:
    """A finished run's results.json under runs/ or search/."""
    d = out / kind / task / method / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"wall_time_s": wall}))


def test_status_of_a_running_study(tmp_path):
    out, now = tmp_path / "study", 1_000_000.0
    current = {"task": "rte", "method": "condlora", "seed": 1, "kind": "run", "started": now - 30}
    write_progress(out, os.getpid(), current, [["rte", "lora"], ["rte", "condlora"]], [0, 1, 2])
    for s in range(3):
        finish_run(out, "runs", "rte", "lora", f"seed{s}", 100.0)
    finish_run(out, "runs", "rte", "condlora", "seed0", 100.0)
    st = study_status(out, now)
    assert (st["planned"], st["done"], st["eta_s"]) == (6, 4, 2 * 100.0 - 30)
    line = status_line(out, now, stamp=lambda: "12:00:00")
    assert line == (f"12:00:00 {out}: 4/6 trainings done (67%) · now: rte/condlora seed 1 (0:00:30) · "
                    "ETA 0:02:50 (mean 100 s/run)")


def test_status_counts_search_trials_and_skips_the_copied_seed(tmp_path):
    out = tmp_path / "study"
    write_progress(out, os.getpid(), None, [["mrpc", "lora"]], [0, 1, 2], n_trials=3, reused=0)
    finish_run(out, "search", "mrpc", "lora", "trial0", 60.0)
    finish_run(out, "search", "mrpc", "lora", "trial1", 60.0)
    st = study_status(out, 0.0)
    assert (st["planned"], st["done"], st["eta_s"]) == (3 + 2, 2, 3 * 60.0)  # seed 0 is the best trial, copied
    assert "now: between runs" in status_line(out, 0.0)
    finish_run(out, "search", "mrpc", "lora", "trial2", 60.0)
    finish_run(out, "search", "mrpc", "lora", "trial3", 60.0)  # the grid extended past its edge
    (out / "search" / "mrpc" / "lora" / "trial4").mkdir()  # and again: that trial is training
    st = study_status(out, 0.0)
    assert (st["planned"], st["done"]) == (5 + 2, 4)


def test_status_of_a_dead_worker_and_of_no_study(tmp_path, capsys):
    out = tmp_path / "study"
    assert "no progress files yet (0 finished runs on disk)" in status_line(out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_progress(out, int(dead.stdout), None, [["rte", "lora"]], [0])
    assert status_line(out).endswith("0/1 trainings done (0%) · no worker running")
    assert cli.main(["study", "--status", "--output-dir", str(out)]) == 0
    assert "0/1 trainings done" in capsys.readouterr().out


def test_status_during_a_study_shows_the_current_run(tmp_path):
    seen = []
    fake = FakeRun()

    def run(cfg):
        seen.append(status_line(tmp_path / "study", stamp=lambda: "t"))
        return fake(cfg)

    run_study(settings(tmp_path, tasks="rte"), run_fn=run)
    assert seen[0].startswith(f"t {tmp_path / 'study'}: 0/6 trainings done (0%) · now: rte/lora seed 0 (0:00:00")
    assert seen[0].endswith("ETA after the first finished run")
    assert "1/6 trainings done (17%) · now: rte/lora seed 1" in seen[1] and "ETA 0:00:" in seen[1]
    assert status_line(tmp_path / "study").endswith("6/6 trainings done (100%) · no worker running")


def test_watch_prints_until_the_workers_finish(tmp_path, capsys):
    out, lines = tmp_path / "study", []
    write_progress(out, os.getpid(), None, [["rte", "lora"]], [0])

    def show(line):
        lines.append(line)
        if len(lines) == 2:  # the worker finishes
            finish_run(out, "runs", "rte", "lora", "seed0", 5.0)
            path = next((out / "progress").glob("*.json"))
            path.write_text(json.dumps({**json.loads(path.read_text()), "finished": True}))

    watch(out, 0.01, show)
    assert len(lines) == 3 and "0/1 trainings done (0%) · now: between runs" in lines[0]
    assert lines[2].endswith("1/1 trainings done (100%) · no worker running")
    assert cli.main(["study", "--status", "--watch", "0", "--output-dir", str(out)]) == 2
    assert "--watch must be > 0 seconds" in capsys.readouterr().err


def test_tables_only_writes_tables_from_the_runs_so_far_and_trains_nothing(tmp_path):
    """While a study runs: the LRs chosen so far (study.json), finished seeds, and the search trial standing in for
    seed 0 before it is copied; pairs without a chosen LR stay empty; study.json is left to the workers."""
    grid = {"lr_preset": None, "lr_grid": "1e-4,3e-4"}
    with pytest.raises(ConfigError, match="no study.json"):
        run_study(settings(tmp_path, tables_only=True, **grid))
    run_study(settings(tmp_path, search_only=True, methods="lora", **grid), run_fn=FakeRun())  # LoRA's LRs only
    study_json = (tmp_path / "study" / "study.json").read_text()
    assert not (tmp_path / "study" / "runs").exists()  # no seed run yet, not even the copy of the search trial
    record = run_study(settings(tmp_path, tables_only=True, **grid))  # no run_fn: nothing could train
    rows = table2(tmp_path)
    assert [(rows[t, "lora"]["n"], rows[t, "condlora"]["n"]) for t in ("rte", "mrpc")] == [("1", "0")] * 2
    assert float(rows["rte", "lora"]["mean"]) == pytest.approx(100 * TEST["rte", "lora"][0])
    assert {r["seed"] for r in record["runs"]} == {0} and len(record["runs"]) == 2
    assert (tmp_path / "study" / "study.json").read_text() == study_json
    more = FakeRun()
    run_study(settings(tmp_path, **grid), run_fn=more)  # the study itself goes on: seeds 1, 2 and CondLoRA
    assert {(c["method"], c["seed"]) for c in more.calls if c["method"] == "lora"} == {("lora", 1), ("lora", 2)}
    run_study(settings(tmp_path, tables_only=True, **grid))
    assert {table2(tmp_path)[k]["n"] for k in [("rte", "lora"), ("mrpc", "condlora"), ("avg", "condlora")]} == {"3"}
    with pytest.raises(CondLoRAError, match=r"other run settings \(epochs\); pass the flags the study was run with"):
        run_study(settings(tmp_path, tables_only=True, run_args={"model": "fake", "epochs": 2}, **grid))
    with pytest.raises(ConfigError, match="--tables-only and --search-only"):
        settings(tmp_path, tables_only=True, search_only=True, **grid)


def test_tables_only_takes_the_lr_of_finished_seeds_where_the_record_lacks_it(tmp_path):
    """--share workers record a pair's LR only once they reach it (a restarted study reads finished pairs back in
    order): until then --tables-only takes the LR the pair's finished seeds were trained at; seeds at two LRs
    leave the pair out."""
    grid = {"lr_preset": None, "lr_grid": "1e-4,3e-4"}
    run_study(settings(tmp_path, **grid), run_fn=FakeRun())
    path = tmp_path / "study" / "study.json"
    record = json.loads(path.read_text())
    stored = sorted(m for m in record["lr"]["mrpc"] if m != "lora")
    assert len(stored) == 1
    for by_method in record["lr"].values():
        by_method.pop(stored[0])
    path.write_text(json.dumps(record))
    run_study(settings(tmp_path, tables_only=True, **grid))
    assert {table2(tmp_path)[t, "condlora"]["n"] for t in ("rte", "mrpc", "avg")} == {"3"}
    seed1 = tmp_path / "study" / "runs" / "mrpc" / stored[0] / "seed1" / "results.json"
    seed1.write_text(json.dumps({**json.loads(seed1.read_text()), "lr": 0.5}))
    run_study(settings(tmp_path, tables_only=True, **grid))
    assert table2(tmp_path)["mrpc", "condlora"]["n"] == "0" and table2(tmp_path)["rte", "condlora"]["n"] == "3"
    path.unlink()  # committed records copied into a fresh folder: no study.json, every LR from the seeds
    run_study(settings(tmp_path, tables_only=True, **grid))
    rows = table2(tmp_path)
    assert [rows[k]["n"] for k in [("rte", "lora"), ("mrpc", "lora"), ("rte", "condlora"), ("mrpc", "condlora")]] \
        == ["3", "3", "3", "0"]


def test_tables_only_from_the_command_line(tmp_path, capsys):
    run_study(settings(tmp_path), run_fn=FakeRun())
    (tmp_path / "study" / "table2.md").unlink()
    args = ["study", "--tables-only", "--tasks", "rte,mrpc", "--methods", "lora,condlora-paper", "--lr-preset", "paper",
            "--model", "fake", "--epochs", "1", "--glue-dir", glue_dir(tmp_path), "--output-dir",
            str(tmp_path / "study"), "--quiet"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "| LoRA | 69.67 ± 3.79 |" in out and f"wrote {tmp_path / 'study'}/table2.md/.csv" in out
    assert (tmp_path / "study" / "table2.md").exists()
