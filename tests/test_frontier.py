"""condlora.study.frontier: still-improving runs, the frontier table's numbers, partial rows, extra folders, the rows
near the reference, the figure and the command line, on tiny run folders written as the runner writes them."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest

from condlora.study.frontier import build_frontier, main, near_reference, still_improving
from condlora.study.frontier_plot import dodged, label_offsets

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs/results/converged/runs/mrpc/lora/seed0"  # a real record: config, metrics, results
T2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 df
PARAMS = {"condlora-general": 12288, "lora": 73728, "lora-r1": 9216, "lora-frozen-a": 36864}


def write_run(root: Path, task: str, method: str, seed: int, score: float, lr: float = 1e-3,
              improving: bool = False, folder: str | None = None) -> Path:
    """A finished run as the runner leaves it: the template's files with this run's fields."""
    d = root / "runs" / task / method / (folder or f"seed{seed}")
    shutil.copytree(TEMPLATE, d)
    res = json.loads((d / "results.json").read_text())
    steps = res["total_steps"]
    res.update(task=task, method=method, seed=seed, lr=lr, test_score=score / 100, stopped_early=False,
               trainable_params=PARAMS[method], steps_run=steps, best_step=steps if improving else steps - 207)
    (d / "results.json").write_text(json.dumps(res))
    return d


def write_study(root: Path, scores: dict[tuple[str, str], list[float]], methods: list[str]) -> None:
    """A study folder: study.json choosing lr 1e-3 for each pair, and the runs with `scores` (x100) by seed."""
    lr = {}
    for (task, method), xs in scores.items():
        lr.setdefault(task, {})[method] = {"lr": 1e-3, "run_dir": None}
        for seed, x in enumerate(xs):
            write_run(root, task, method, seed, x, improving=seed == 0)
    record = {"lr": lr, "settings": {"methods": methods, "search_seed": 0, "run_args": {}},
              "baselines": {"mrpc": 60.0, "stsb": 0.0}}  # both tasks learned
    (root / "study.json").write_text(json.dumps(record))


@pytest.fixture
def study(tmp_path) -> Path:
    scores = {("mrpc", "condlora-general"): [70.0, 72.0, 77.0], ("stsb", "condlora-general"): [80.0, 82.0, 84.0],
              ("mrpc", "lora"): [75.0, 76.0, 80.0], ("stsb", "lora"): [85.0, 85.5, 86.0],
              ("mrpc", "lora-r1"): [73.0]}  # partial: one seed on one task
    write_study(tmp_path / "study", scores, ["condlora-general", "lora", "lora-r1", "vera"])
    write_run(tmp_path / "study", "mrpc", "lora", 1, 99.0, lr=5e-3, folder="seed1-lr0.005")  # moved aside
    return tmp_path / "study"


def ci(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), T2 * statistics.stdev(xs) / math.sqrt(len(xs))


@pytest.mark.parametrize("fields, expected", [
    ({"stopped_early": False, "best_step": 100, "steps_run": 100, "total_steps": 100}, True),
    ({"stopped_early": False, "best_step": 80, "steps_run": 100, "total_steps": 100}, False),
    ({"stopped_early": True, "best_step": 60, "steps_run": 60, "total_steps": 100}, False),
    ({"stopped_early": False, "best_step": 60, "steps_run": 60, "total_steps": 100}, False),  # not at the cap
])
def test_still_improving_means_the_best_checkpoint_is_the_last_evaluation_at_the_cap(fields, expected):
    assert still_improving(fields) is expected


def test_still_improving_reads_the_evaluations_of_an_older_record(tmp_path):
    d = tmp_path / "run"
    shutil.copytree(TEMPLATE, d)  # its best is at epoch 6 of 8
    assert still_improving({"run_dir": str(d)}) is False
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["best"] = True
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert still_improving({"run_dir": str(d)}) is True


def test_the_table_holds_the_means_and_cis_of_table_2(study):
    f = build_frontier(study)
    by = {p.method: p for p in f.points}
    assert f.tasks == ["mrpc", "stsb"] and f.missing == ["vera"]
    assert [p.method for p in f.points] == ["lora-r1", "condlora-general", "lora"]  # by adapter size
    mean, half = ci([70.0, 72.0, 77.0])
    assert by["condlora-general"].summary["mrpc"].mean == pytest.approx(mean)
    assert by["condlora-general"].summary["mrpc"].half == pytest.approx(half)
    assert by["lora"].summary["mrpc"].n == 3  # the seed at another LR is left out
    avg_mean, avg_half = ci([(75 + 85) / 2, (76 + 85.5) / 2, (80 + 86) / 2])
    assert by["lora"].summary["avg"].mean == pytest.approx(avg_mean)
    assert by["lora"].summary["avg"].half == pytest.approx(avg_half)
    assert by["lora"].params == 73728
    assert by["lora"].improving == {"mrpc": (1, 3), "stsb": (1, 3), "all": (2, 6)}
    assert by["lora"].lower_bound is False
    r1 = by["lora-r1"]
    assert r1.summary["mrpc"].n == 1 and math.isnan(r1.summary["mrpc"].half) and math.isnan(r1.summary["avg"].mean)
    assert r1.improving["all"] == (1, 1) and r1.lower_bound


def test_cli_writes_table_csv_and_figure_on_partial_results(study, tmp_path, capsys):
    assert main([str(study), "--output", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "frontier.md").read_text()
    assert "| LoRA r=1 | 9,216 | 73.00 (n=1) ↑ |  |  | 1/1: score is a lower bound |" in md
    mean, half = ci([70.0, 72.0, 77.0])
    assert f"| CondLoRA | 12,288 | {mean:.2f} ± {half:.2f} (n=3) |" in md
    assert "No finished run yet (left out): VeRA r=256." in md
    rows = list(csv.DictReader((tmp_path / "out" / "frontier.csv").open()))
    cell = next(r for r in rows if r["method"] == "lora" and r["task"] == "stsb")
    assert (cell["n"], float(cell["mean"]), cell["still_improving"], cell["runs"]) == ("3", 85.5, "1", "3")
    assert float(cell["ci_high"]) == pytest.approx(85.5 + ci([85.0, 85.5, 86.0])[1])
    assert (tmp_path / "out" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


def test_extra_folders_add_the_rows_the_study_lacks(study, tmp_path):
    extra = tmp_path / "asymmetry"  # copied records, no study.json; MRPC only
    for seed, x in enumerate([74.0, 75.0, 79.0]):
        write_run(extra, "mrpc", "lora-frozen-a", seed, x, improving=True)
    write_run(extra, "mrpc", "lora", 0, 10.0)  # the study has this row: its own runs win
    f = build_frontier(study, [extra])
    by = {p.method: p for p in f.points}
    assert by["lora-frozen-a"].summary["mrpc"].mean == pytest.approx(76.0)
    assert by["lora-frozen-a"].summary["stsb"].n == 0 and math.isnan(by["lora-frozen-a"].summary["avg"].mean)
    assert by["lora-frozen-a"].lower_bound and by["lora-frozen-a"].params == 36864
    assert by["lora"].summary["mrpc"].mean == pytest.approx(77.0)


def test_near_reference_lists_the_rows_within_the_margin(study):
    f = build_frontier(study)
    ref = f.table.summary["condlora-general"]["avg"].mean  # 77.5; LoRA 81.25
    assert near_reference(f, 1.5) == ["condlora-general"]
    assert near_reference(f, 81.25 - ref + 0.01) == ["condlora-general", "lora"]


def test_cli_near_prints_the_rows_and_an_error_is_one_line(study, tmp_path, capsys):
    assert main([str(study), "--near", "10"]) == 0
    assert capsys.readouterr().out.strip() == "condlora-general,lora"
    assert not (study / "frontier.png").exists()
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_labels_at_one_spot_are_stacked_without_overlap():
    offsets = label_offsets([(100.0, 50.0)] * 3, [40.0] * 3, 10.0, 500.0)
    assert sorted(dy for _, dy, _ in offsets) == [-10.0, 0.0, 10.0]
    assert label_offsets([(480.0, 50.0)], [40.0], 10.0, 500.0)[0][2] == "right"  # would cross the edge


def test_rows_of_equal_size_are_drawn_side_by_side():
    xs, lefts = dodged([100, 100, 1000])
    assert xs[0] < 100 < xs[1] and xs[2] == 1000 and lefts == [True, False, False]
