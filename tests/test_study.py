"""`condlora study`: orchestration with a cheap fake runner (tables by hand, skipping, resumable and shared
Optuna searches), CLI errors, and one end-to-end study on real training (once condlora.runner.train exists)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from scipy import stats

import condlora
from condlora import cli
from condlora.errors import CondLoRAError, ConfigError
from condlora.study.progress import status_line
from condlora.study.search import SearchSetup, next_lr, search_grid
from condlora.study.study import PAPER_LR, StudySettings, run_once, run_study, search_lr
from condlora.study.tables import paired_ttest
from test_stats import t975, t_two_sided_p

SRC = str(Path(condlora.__file__).resolve().parents[1])
# test scores (fractions) per task x method and seed, chosen so every number below is computable by hand
TEST = {("rte", "lora"): [0.70, 0.71, 0.68], ("rte", "condlora"): [0.725, 0.71, 0.74],
        ("mrpc", "lora"): [0.85, 0.86, 0.83], ("mrpc", "condlora"): [0.845, 0.83, 0.86],
        ("cola", "lora"): [0.02, -0.01, 0.03], ("cola", "condlora"): [0.04, 0.0, 0.01]}  # MCC near 0: not learned
PARAMS = {"lora": 294_912, "condlora": 24_576}
SPEED = {"lora": 40.0, "condlora": 44.0}


def val_of(lr: float) -> float:
    """The fake validation score: a smooth bump peaking at lr = 10**-3.5."""
    return 1.0 - (math.log10(lr) + 3.5) ** 2 / 10


class FakeRun:
    """A deterministic stand-in for condlora.runner.train.train: writes config.json, metrics.jsonl and results.json
    like train does, records calls."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, cfg: dict) -> dict:
        self.calls.append(cfg)
        task, method, seed = cfg["task"], cfg["method"], cfg["seed"]
        res = {"task": task, "method": method, "seed": seed, "lr": cfg["lr"], "model": "fake",
               "metric": "accuracy", "val_score": val_of(cfg["lr"]), "test_score": TEST[task, method][seed % 3],
               "trainable_params": PARAMS[method], "head_params": 1538 if task == "rte" else 1539,
               "examples_per_sec": SPEED[method] + seed, "wall_time_s": 10.0 + seed}
        out = Path(cfg["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        run = {k: v for k, v in cfg.items() if k not in ("quiet", "output_dir", "resume")}
        (out / "config.json").write_text(json.dumps({"run": {"head": "dense", "patience": None, **run}}))
        curve = [{"step": 5 * k, "val_score": res["val_score"] * k / 3} for k in (1, 2, 3)]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
        (out / "results.json").write_text(json.dumps(res))
        return res


def glue_dir(tmp_path) -> str:
    """GLUE-layout TSVs whose dev labels alternate over 13 rows: majority class 7/13 = 53.85% (RTE, MRPC)."""
    from glue_fixtures import write_glue

    return str(write_glue(tmp_path / "glue", n_train=20, n_dev=13, folders=["RTE", "MRPC", "CoLA"]))


def settings(tmp_path, **kw) -> StudySettings:
    """The fake study's settings: RTE and MRPC, LoRA and CondLoRA, 3 seeds, the paper's LRs."""
    run_args = {"model": "fake", "epochs": 1, "glue_dir": glue_dir(tmp_path)}
    base = dict(tasks="rte,mrpc", methods="lora,condlora", output_dir=str(tmp_path / "study"), seeds=3,
                lr_preset="paper", quiet=True, run_args=run_args)
    return StudySettings(**{**base, **kw})


def test_tables_match_hand_computation(tmp_path):
    fake = FakeRun()
    record = run_study(settings(tmp_path), run_fn=fake)
    out = tmp_path / "study"
    assert len(fake.calls) == 12 and record["complete"]
    assert {(c["task"], c["method"], c["lr"]) for c in fake.calls} == {
        ("rte", "lora", PAPER_LR["rte"][0]), ("rte", "condlora", PAPER_LR["rte"][1]),
        ("mrpc", "lora", PAPER_LR["mrpc"][0]), ("mrpc", "condlora", PAPER_LR["mrpc"][1])}
    assert fake.calls[0]["output_dir"] == str(out / "runs" / "rte" / "lora" / "seed0")
    assert {k: fake.calls[0][k] for k in ("model", "epochs", "quiet", "seed")} == {
        "model": "fake", "epochs": 1, "quiet": True, "seed": 0}
    md = (out / "table2.md").read_text()
    # RTE LoRA 70, 71, 68: mean 69.67, sd sqrt(7/3), 95% CI half-width t(2) sd / sqrt 3 = 3.79; CondLoRA 72.5, 71,
    # 74: sd 1.5, 3.73. Avg.: per-seed averages 77.5, 78.5, 75.5 (LoRA) and 78.5, 77, 80 (CondLoRA).
    assert f"{t975(2) * math.sqrt(7 / 3) / math.sqrt(3):.2f}" == "3.79"
    assert f"{t975(2) * 1.5 / math.sqrt(3):.2f}" == "3.73"
    assert "| LoRA | 69.67 ± 3.79 | 84.67 ± 3.79 | 77.17 ± 3.79 |" in md
    assert "| CondLoRA (paper form) | 72.50 ± 3.73 | 84.50 ± 3.73 | 78.50 ± 3.73 |" in md
    assert "| Trivial baseline (majority class; 0 for MCC, Pearson) | 53.85 | 53.85 |  |" in md  # 7 of 13
    assert "| CondLoRA (paper form) (published (Kim et al. 2024), roberta-base) |  |  | 83.42 |" in md
    assert "Table 2: model fake · head dense · budget ≤ 1 epochs, no early stopping · seeds 0–2." in md
    # RTE differences 2.5, 0, 6: mean 2.83, sd 3.01, CI [-4.65, +10.32]; t = 1.63 (2 df); Wilcoxon drops the 0:
    # two positive ranks, exact two-sided p = 2 / 2^2
    d = [2.5, 0.0, 6.0]
    mean, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    half, p_t = t975(2) * sd / math.sqrt(3), t_two_sided_p(mean / (sd / math.sqrt(3)), 2)
    row = (f"| RTE | CondLoRA (paper form) | 3 | 72.50 ± 3.73 | +2.83 [{mean - half:+.2f}, {mean + half:+.2f}] | 3 "
           f"| {p_t:.3f}")
    row += " | 0.500 |"
    assert row == "| RTE | CondLoRA (paper form) | 3 | 72.50 ± 3.73 | +2.83 [-4.65, +10.32] | 3 | 0.245 | 0.500 |"
    assert row + " undecided |" in md and "| RTE | LoRA | 3 | 69.67 ± 3.79 | reference |" in md
    rows = {(r["task"], r["method"]): r for r in csv.DictReader((out / "table2.csv").open())}
    assert float(rows["avg", "lora"]["mean"]) == pytest.approx((69 + 2 / 3 + 84 + 2 / 3) / 2)
    assert float(rows["rte", "condlora"]["delta"]) == pytest.approx(72.5 - (69 + 2 / 3))
    assert float(rows["rte", "condlora"]["delta_ci_low"]) == pytest.approx(mean - half)
    assert float(rows["rte", "condlora"]["p_t"]) == pytest.approx(p_t)
    assert float(rows["rte", "lora"]["baseline"]) == pytest.approx(700 / 13)
    assert rows["rte", "lora"]["learned"] == "True"
    for task in ("rte", "mrpc"):  # cross-check with scipy's own paired t-test
        want = stats.ttest_rel([100 * x for x in TEST[task, "condlora"]], [100 * x for x in TEST[task, "lora"]])
        assert float(rows[task, "condlora"]["p_t"]) == pytest.approx(want.pvalue)
    avg = [[100 * (TEST["rte", m][s] + TEST["mrpc", m][s]) / 2 for s in range(3)] for m in ("condlora", "lora")]
    assert float(rows["avg", "condlora"]["p_t"]) == pytest.approx(stats.ttest_rel(*avg).pvalue)
    assert rows["avg_8_tasks", "condlora"]["mean"] == "83.42"
    t4 = {r["method"]: r for r in csv.DictReader((out / "table4.csv").open())}
    assert t4["condlora"]["adapter_params"] == "24576" and t4["lora"]["head_params"] == "1538-1539"
    assert float(t4["lora"]["examples_per_sec"]) == 41.0 and float(t4["condlora"]["examples_per_sec"]) == 45.0
    assert float(t4["condlora"]["params_ratio"]) == pytest.approx(24_576 / 294_912)
    assert float(t4["condlora"]["speed_ratio"]) == pytest.approx(45 / 41)
    t4md = (out / "table4.md").read_text()
    assert "| CondLoRA (paper form) | 24,576 | 1,538–1,539 | 45.0 | 0.083 | 1.098 | 24,576 | 40.3 |" in t4md
    saved = json.loads((out / "study.json").read_text())
    assert saved["lr"]["rte"]["condlora"] == {"lr": PAPER_LR["rte"][1], "source": "preset paper"}
    assert len(saved["runs"]) == 12 and saved["settings"]["seeds"] == [0, 1, 2] and "optuna" in saved["versions"]
    assert saved["baselines"] == {"rte": pytest.approx(700 / 13), "mrpc": pytest.approx(700 / 13)}
    for name in ("table2.png", "table2_seeds.png", "table2_curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and name in saved["figures"]


def test_rerun_skips_finished_runs(tmp_path):
    run_study(settings(tmp_path), run_fn=FakeRun())
    again = FakeRun()
    run_study(settings(tmp_path), run_fn=again)
    assert again.calls == []
    (tmp_path / "study" / "runs" / "mrpc" / "condlora" / "seed1" / "results.json").unlink()
    run_study(settings(tmp_path, seeds=4), run_fn=again)  # the lost run, then seed 3 of every pair
    assert sorted((c["task"], c["method"], c["seed"]) for c in again.calls) == sorted(
        [("mrpc", "condlora", 1)] + [(t, m, 3) for t in ("rte", "mrpc") for m in ("lora", "condlora")])


def test_finished_run_with_other_lr_is_an_error(tmp_path):
    cfg = {"task": "rte", "method": "lora", "seed": 0, "lr": 1e-4, "output_dir": str(tmp_path / "run")}
    FakeRun()(cfg)
    with pytest.raises(CondLoRAError, match="lr=0.0001, not seed=0, method=lora, lr=0.0002"):
        run_once({**cfg, "lr": 2e-4}, FakeRun())


def test_changed_run_settings_are_an_error(tmp_path):
    run_study(settings(tmp_path, tasks="rte", seeds=1), run_fn=FakeRun())
    with pytest.raises(CondLoRAError, match=r"other run settings \(epochs\)"):
        run_study(settings(tmp_path, tasks="rte", seeds=1, run_args={"model": "fake", "epochs": 2}), FakeRun())


def test_search_picks_the_best_trial(tmp_path):
    fake = FakeRun()
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    res = search_lr("rte", "lora", {"model": "fake"}, 6, SearchSetup(db, tmp_path, run_fn=fake, seed=0))
    assert len(fake.calls) == 6 and res["n_complete"] == 6
    assert {c["output_dir"] for c in fake.calls} == {str(tmp_path / "search/rte/lora" / f"trial{k}") for k in range(6)}
    assert all(1e-5 <= c["lr"] <= 3e-3 and c["seed"] == 0 for c in fake.calls)
    best = max(fake.calls, key=lambda c: val_of(c["lr"]))
    assert res["lr"] == best["lr"] and res["val_score"] == pytest.approx(val_of(best["lr"]))
    assert sorted(t["number"] for t in res["trials"]) == list(range(6))


def test_study_with_search_uses_the_best_lr(tmp_path):
    fake = FakeRun()
    record = run_study(settings(tmp_path, tasks="rte", lr_preset=None, lr_search=3, seeds=2), run_fn=fake)
    out = tmp_path / "study"
    # seed 0 is the search seed: the best trial's run is copied, not trained again
    assert len(fake.calls) == 2 * 3 + 2 * 1 and (out / "search" / "optuna.db").exists()
    for m in ("lora", "condlora"):
        trials = [c for c in fake.calls if c["method"] == m and "/search/" in c["output_dir"]]
        seeds = [c for c in fake.calls if c["method"] == m and "/runs/" in c["output_dir"]]
        best = max(trials, key=lambda c: val_of(c["lr"]))
        assert record["lr"]["rte"][m]["lr"] == best["lr"] and {c["lr"] for c in seeds} == {best["lr"]}
        assert [c["seed"] for c in seeds] == [1]
        copied = out / "runs" / "rte" / m / "seed0" / "results.json"
        assert copied.read_text() == (Path(best["output_dir"]) / "results.json").read_text()
    assert [r["seed"] for r in record["runs"]] == [0, 1, 0, 1]
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "study.json").read_text())["lr"]["rte"]["lora"]["source"] == "search"


def diverging_above(limit: float, fake: FakeRun):
    """A runner that raises FloatingPointError (a diverged training) above LR `limit`, else runs `fake`."""

    def run(cfg):
        if cfg["lr"] > limit:
            raise FloatingPointError("loss became nan")
        return fake(cfg)

    return run


def test_diverged_trials_fail_and_are_replaced(tmp_path):
    fake = FakeRun()
    diverges_above_5e4 = diverging_above(5e-4, fake)
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    setup = SearchSetup(db, tmp_path, run_fn=diverges_above_5e4, catch=(FloatingPointError,))
    res = search_lr("rte", "lora", {}, 5, setup)
    states = [t["state"] for t in res["trials"]]
    assert states.count("COMPLETE") == 5 == len(fake.calls) and set(states) <= {"COMPLETE", "FAIL"}
    assert all(t["lr"] > 5e-4 for t in res["trials"] if t["state"] == "FAIL")
    with pytest.raises(ZeroDivisionError):  # not in `catch`: the search stops with the error
        search_lr("rte", "lora", {}, 9, SearchSetup(db, tmp_path, run_fn=lambda cfg: 1 / 0, catch=()))


def test_grid_search_tries_every_lr_once_and_resumes(tmp_path):
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    first, again = FakeRun(), FakeRun()
    res = search_lr("rte", "lora", {}, 99, SearchSetup(db, tmp_path, run_fn=first), grid=[3e-3, 1e-4, 3e-4, 1e-4])
    assert sorted(c["lr"] for c in first.calls) == [1e-4, 3e-4, 3e-3]  # the grid, deduplicated, n_trials ignored
    assert res["lr"] == 3e-4 and res["n_complete"] == 3 and res["run_dir"].endswith(f"trial{res['best_trial']}")
    assert search_lr("rte", "lora", {}, 3, SearchSetup(db, tmp_path, run_fn=again), grid=[1e-4, 3e-4, 3e-3]) == res
    assert again.calls == []
    with pytest.raises(CondLoRAError, match=r"other settings \(lr_grid\)"):
        search_lr("rte", "lora", {}, 3, SearchSetup(db, tmp_path, run_fn=again), grid=[1e-4, 1e-3])
    with pytest.raises(CondLoRAError, match=r"other settings \(lr_grid, lr_range\)"):
        search_lr("rte", "lora", {}, 3, SearchSetup(db, tmp_path, run_fn=again))


def test_grid_lr_that_diverges_scores_minus_inf(tmp_path):
    fake = FakeRun()
    diverges_above_1e3 = diverging_above(1e-3, fake)
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    setup = SearchSetup(db, tmp_path, run_fn=diverges_above_1e3, catch=(FloatingPointError,))
    res = search_lr("rte", "condlora", {}, 3, setup, grid=[1e-5, 1e-4, 5e-3])
    assert [c["lr"] for c in fake.calls] == [1e-5, 1e-4] and res["lr"] == 1e-4
    bad = [t for t in res["trials"] if t["lr"] == 5e-3]
    assert len(bad) == 1 and bad[0]["val_score"] == -math.inf and "nan" in bad[0]["diverged"]
    with pytest.raises(CondLoRAError, match="diverged at every learning rate"):
        search_lr("rte", "lora", {}, 3, setup, grid=[2e-3, 5e-3])


def test_next_lr_steps_past_the_edge_where_the_best_lr_sits():
    grid = [1e-3, 2e-3, 5e-3]
    assert next_lr(1e-3, grid) == 5e-4  # 1e-3 * 1e-3 / 2e-3
    assert next_lr(5e-3, grid) == 1.25e-2  # 5e-3 * 5e-3 / 2e-3
    assert next_lr(2e-3, grid) is None and next_lr(1e-3, [1e-3]) is None


def test_grid_is_extended_while_the_best_lr_sits_at_an_edge(tmp_path):
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    first, again = FakeRun(), FakeRun()
    # val_of peaks at 10**-3.5 ~ 3.2e-4, below the grid: 1e-3 wins, then 5e-4, then 2.5e-4 (the 2nd and last step)
    res = search_grid("mrpc", "lora", {}, [1e-3, 2e-3, 5e-3], SearchSetup(db, tmp_path, run_fn=first))
    assert [c["lr"] for c in first.calls] == [1e-3, 2e-3, 5e-3, 5e-4, 2.5e-4]
    assert [c["output_dir"][-6:] for c in first.calls[3:]] == ["trial3", "trial4"]
    assert (res["lr"], res["extended"], res["n_complete"]) == (2.5e-4, [5e-4, 2.5e-4], 5)
    assert res["grid"] == [1e-3, 2e-3, 5e-3]
    assert search_grid("mrpc", "lora", {}, [1e-3, 2e-3, 5e-3], SearchSetup(db, tmp_path, again)) == res  # resumes
    assert again.calls == []
    inside = FakeRun()
    res = search_grid("rte", "lora", {}, [1e-4, 3e-4, 1e-3], SearchSetup(db, tmp_path, run_fn=inside))
    assert res["lr"] == 3e-4 and res["extended"] == [] and len(inside.calls) == 3


def test_search_in_a_new_storage_reuses_finished_trial_folders(tmp_path):
    """A search whose Optuna storage is new (lost, or another study's folder reused) trains nothing finished again,
    finds each LR's folder whatever its trial number, and never trains over a folder holding another LR."""
    first, again = FakeRun(), FakeRun()
    old = search_grid("mrpc", "lora", {}, [1e-3, 2e-3, 5e-3], SearchSetup(f"sqlite:///{tmp_path / 'a.db'}", tmp_path,
                                                                          run_fn=first))
    root = tmp_path / "search" / "mrpc" / "lora"
    (root / "trial1").rename(root / "trial9")  # the 2e-3 run under another number
    (root / "trial1").mkdir()
    (root / "trial1" / "config.json").write_text(json.dumps({"run": {"lr": 7e-3}}))  # an unfinished other LR
    new = search_grid("mrpc", "lora", {}, [1e-3, 2e-3, 5e-3], SearchSetup(f"sqlite:///{tmp_path / 'b.db'}", tmp_path,
                      run_fn=again))
    assert again.calls == [] and (new["lr"], new["extended"], new["val_score"]) == (
        old["lr"], old["extended"], old["val_score"])
    assert [Path(t["run_dir"]).name for t in new["trials"]] == ["trial0", "trial9", "trial2", "trial3", "trial4"]
    fresh = FakeRun()
    search_grid("rte", "lora", {}, [1e-3], SearchSetup(f"sqlite:///{tmp_path / 'a.db'}", tmp_path, run_fn=fresh))
    (tmp_path / "search" / "rte" / "lora" / "trial0" / "results.json").unlink()  # not finished: its LR, resumed
    search_grid("rte", "lora", {}, [2e-3], SearchSetup(f"sqlite:///{tmp_path / 'c.db'}", tmp_path, run_fn=fresh))
    assert [Path(c["output_dir"]).name for c in fresh.calls] == ["trial0", "trial0-1"]


def test_tpe_search_stays_in_lr_range(tmp_path):
    fake = FakeRun()
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    search_lr("rte", "lora", {}, 5, SearchSetup(db, tmp_path, run_fn=fake), lr_range=(1e-3, 1e-2))
    assert len(fake.calls) == 5 and all(1e-3 <= c["lr"] <= 1e-2 for c in fake.calls)


def test_study_with_grid(tmp_path):
    fake = FakeRun()
    record = run_study(settings(tmp_path, tasks="rte", lr_preset=None, lr_grid="1e-4,3e-4", seeds=3), run_fn=fake)
    # 2 grid LRs; the best (3e-4) sits at the top edge, so 9e-4 is tried too and loses; then seeds 1 and 2
    # (seed 0 is the best trial)
    assert len(fake.calls) == 2 * 3 + 2 * 2
    assert {record["lr"]["rte"][m]["lr"] for m in ("lora", "condlora")} == {3e-4}
    assert record["lr"]["rte"]["lora"]["extended"] == [9e-4]
    assert (tmp_path / "study" / "search.png").exists() and (tmp_path / "study" / "table2.md").exists()


def test_resumed_search_continues(tmp_path):
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    first, second, third = FakeRun(), FakeRun(), FakeRun()
    search_lr("mrpc", "condlora", {}, 3, SearchSetup(db, tmp_path, run_fn=first))
    res = search_lr("mrpc", "condlora", {}, 5, SearchSetup(db, tmp_path, run_fn=second))
    search_lr("mrpc", "condlora", {}, 5, SearchSetup(db, tmp_path, run_fn=third))
    assert (len(first.calls), len(second.calls), len(third.calls)) == (3, 2, 0)
    assert [c["output_dir"][-6:] for c in second.calls] == ["trial3", "trial4"]
    assert sorted(t["number"] for t in res["trials"] if t["state"] == "COMPLETE") == list(range(5))
    assert res["lr"] == max(first.calls + second.calls, key=lambda c: val_of(c["lr"]))["lr"]
    search_lr("mrpc", "condlora", {"glue_dir": "/elsewhere", "quiet": True}, 5, SearchSetup(db, tmp_path, run_fn=third))
    with pytest.raises(CondLoRAError, match="other settings"):
        search_lr("mrpc", "condlora", {"epochs": 9}, 5, SearchSetup(db, tmp_path, run_fn=third))


WORKER = """
import json, os, sys, time
from condlora.study.search import SearchSetup, search_lr
log, db, out = sys.argv[1:4]

def run(cfg):
    time.sleep(0.1)
    with open(log, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "dir": cfg["output_dir"], "lr": cfg["lr"]}) + "\\n")
    if os.environ.get("CRASH"):
        os._exit(3)  # a worker killed mid-trial: its trial stays RUNNING in the storage
    return {"val_score": -abs(cfg["lr"] - 3e-4), "seed": cfg["seed"], "lr": cfg["lr"], "method": cfg["method"]}

setup = SearchSetup(db, out, run_fn=run, heartbeat=int(sys.argv[5]), poll_s=0.2)
search_lr("rte", "condlora", {}, int(sys.argv[4]), setup)
"""


def start_workers(tmp_path, n_workers: int, n_trials: int, heartbeat: int = 60, **env) -> list[subprocess.Popen]:
    """`n_workers` processes running WORKER on one SQLite study; each appends its runs to log.jsonl."""
    script, log, db = tmp_path / "worker.py", tmp_path / "log.jsonl", f"sqlite:///{tmp_path / 'shared.db'}"
    script.write_text(textwrap.dedent(WORKER))
    cmd = [sys.executable, str(script), str(log), db, str(tmp_path), str(n_trials), str(heartbeat)]
    env = {**os.environ, "PYTHONPATH": SRC, **env}
    return [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(n_workers)]


def load_shared(tmp_path):
    """(runs logged by the workers, trials of the shared study)."""
    import optuna

    runs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    study = optuna.load_study(study_name="condlora-rte-condlora", storage=f"sqlite:///{tmp_path / 'shared.db'}")
    return runs, study.trials


GRID_WORKER = """
import os, sys
from condlora.study.search import SearchSetup, search_grid
out, db = sys.argv[1:3]

def run(cfg):
    if os.environ.get("CRASH") and cfg["lr"] not in (1e-3, 2e-3, 5e-3):
        os._exit(3)  # killed during the grid's extension: that trial stays RUNNING in the storage
    with open(os.path.join(out, "calls.txt"), "a") as f:
        f.write(f"{cfg['lr']}\\n")
    return {"val_score": 1.0 - abs(cfg["lr"] - 3e-4), "seed": cfg["seed"], "lr": cfg["lr"], "method": cfg["method"]}

setup = SearchSetup(db, out, run_fn=run, heartbeat=1, poll_s=0.2)
print(search_grid("mrpc", "lora", {}, [1e-3, 2e-3, 5e-3], setup)["lr"])
"""


def test_grid_extension_of_a_killed_worker_is_completed_before_the_lr_is_chosen(tmp_path):
    """A worker killed while training the grid's extension leaves it RUNNING: the next call trains it (and any
    further step) instead of counting it as tried and keeping the edge LR."""
    script, db = tmp_path / "grid_worker.py", f"sqlite:///{tmp_path / 'shared.db'}"
    script.write_text(textwrap.dedent(GRID_WORKER))
    env = {**os.environ, "PYTHONPATH": SRC}
    crashed = subprocess.run([sys.executable, str(script), str(tmp_path), db], env={**env, "CRASH": "1"},
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 3, crashed.stderr
    worker = subprocess.run([sys.executable, str(script), str(tmp_path), db], env=env, capture_output=True,
                            text=True, timeout=120)
    assert worker.returncode == 0, worker.stderr
    calls = [float(x) for x in (tmp_path / "calls.txt").read_text().split()]
    assert calls == [1e-3, 2e-3, 5e-3, 5e-4, 2.5e-4]  # the killed 5e-4 trial run again, then the next step
    assert float(worker.stdout.split()[-1]) == 2.5e-4


def test_two_workers_share_one_study_without_duplicates_or_losses(tmp_path):
    procs = start_workers(tmp_path, 2, 8)
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    runs, trials = load_shared(tmp_path)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(runs) == 8 and len({r["dir"] for r in runs}) == 8  # each trial trained exactly once
    assert len({r["lr"] for r in runs}) == 8  # and the two workers did not draw the same LRs in lockstep
    assert len(done) == 8 and len({t.number for t in done}) == 8
    assert {r["dir"] for r in runs} == {t.user_attrs["run_dir"] for t in done}
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}  # PRUNED: a worker found the budget spent


def test_trial_of_a_killed_worker_is_retried(tmp_path):
    (crashed,) = start_workers(tmp_path, 1, 3, heartbeat=1, CRASH="1")
    assert crashed.wait(timeout=60) == 3
    (worker,) = start_workers(tmp_path, 1, 3, heartbeat=1)
    assert worker.communicate(timeout=120)[1] is not None and worker.returncode == 0
    runs, trials = load_shared(tmp_path)
    lost = [t for t in trials if t.state.name == "FAIL"]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(lost) == 1 and len(done) == 3 and len(runs) == 4
    retry = [t for t in done if t.system_attrs.get("failed_trial") == lost[0].number]
    assert len(retry) == 1 and retry[0].params == lost[0].params  # the killed trial's LR, run again
    lost_dir = lost[0].user_attrs["run_dir"]
    assert retry[0].user_attrs["run_dir"] == lost_dir  # in its folder, so a real training resumes there
    assert [r["dir"] for r in runs].count(lost_dir) == 2 and lost_dir.endswith("trial0")


def test_mnli_uses_matched_accuracy():
    from condlora.study.tables import collect_scores

    runs = [{"task": "mnli", "method": "lora", "seed": 0, "test_score": 0.80,
             "test_metrics": {"accuracy": 0.80, "matched_accuracy": 0.81, "mismatched_accuracy": 0.79}},
            {"task": "rte", "method": "lora", "seed": 0, "test_score": 0.7, "test_metrics": {"accuracy": 0.7}}]
    assert collect_scores(runs) == {"lora": {"mnli": {0: pytest.approx(81.0)}, "rte": {0: pytest.approx(70.0)}}}


def test_paired_ttest_edge_cases():
    assert math.isnan(paired_ttest({0: 1.0}, {0: 2.0})[0])
    assert paired_ttest({0: 1.0, 1: 2.0, 2: 4.0}, {0: 2.0, 2: 5.5, 5: 9.0})[1] == 2  # pairs by seed
    p, n = paired_ttest({0: 1.0, 1: 2.0, 2: 4.0}, {0: 1.5, 1: 3.0, 2: 4.2})
    assert n == 3 and p == pytest.approx(stats.ttest_rel([1.5, 3.0, 4.2], [1.0, 2.0, 4.0]).pvalue)


def test_single_seed_prints_na(tmp_path):
    run_study(settings(tmp_path, seeds=1, methods="lora,condlora"), run_fn=FakeRun())
    md = (tmp_path / "study" / "table2.md").read_text()
    assert "| RTE | CondLoRA (paper form) | 1 | 72.50 | +2.50 [CI n/a] | 1 | n/a | n/a | undecided |" in md
    assert "| LoRA | 70.00 | 85.00 | 77.50 |" in md


@pytest.mark.parametrize("kw, msg", [
    ({"tasks": "rte,wnli"}, "unknown task 'wnli'"),
    ({"methods": "lora,dora"}, "unknown method 'dora'"),
    ({"seeds": 0}, "--seeds must be >= 1"),
    ({"seeds": "3,x"}, "--seeds: expected a count N"),
    ({"seeds": "5-3"}, "--seeds: expected a count N"),
    ({"lr_search": 0, "lr_preset": None}, "--lr-search must be >= 1"),
    ({"lr_search": 4}, "--lr-search and --lr-preset cannot be combined"),
    ({"lr_grid": "1e-4,2e-4", "lr": 1e-3, "lr_preset": None}, "--lr-grid and --lr cannot be combined"),
    ({"lr_grid": "1e-4,x", "lr_preset": None}, "--lr-grid: expected comma-separated numbers"),
    ({"lr_grid": "1e-4,-2", "lr_preset": None}, "--lr-grid: every learning rate must be a positive number"),
    ({"lr_range": "1e-3", "lr_search": 3, "lr_preset": None}, "--lr-range needs two learning rates"),
    ({"storage": "sqlite:///x.db"}, "only make sense with --lr-search"),
    ({"methods": "lora,full,head"}, "no learning rate for rte/full, rte/head, mrpc/full, mrpc/head"),
])
def test_settings_errors(tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        settings(tmp_path, **kw)


def test_preset_fallback_and_names(tmp_path):
    s = settings(tmp_path, tasks="STS-B,sst_2,RTE", methods="LoRA,full", lr=1e-4)
    assert s.tasks == ["stsb", "sst2", "rte"] and s.methods == ["lora", "full"]
    fake = FakeRun()
    from condlora.study.study import choose_lr

    assert choose_lr("rte", "full", s, {}, fake) == {"lr": 1e-4, "source": "--lr"}
    assert choose_lr("rte", "lora", s, {}, fake)["lr"] == PAPER_LR["rte"][0]


def test_cli_flags_pass_through_to_every_run(tmp_path):
    from condlora.cli.study import add_arguments, settings_from_args

    parser = __import__("argparse").ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--output-dir", str(tmp_path), "--lr-search", "4", "--model", "m", "--epochs", "2",
                              "--target-modules", "query, value", "--max-train-samples", "5", "--r", "4",
                              "--cond-form", "general", "--head", "linear", "--patience", "3",
                              "--group-by-length", "--seeds", "3-4,7", "--skip-unlearned", "--share"])
    s = settings_from_args(args)
    assert s.skip_unlearned and s.share
    assert s.run_args == {"model": "m", "epochs": 2.0, "target_modules": ["query", "value"],
                          "max_train_samples": 5, "r": 4, "cond_form": "general", "head": "linear", "patience": 3,
                          "group_by_length": True}
    assert s.seeds == [3, 4, 7]
    s = settings_from_args(parser.parse_args(["--output-dir", "x", "--lr", "1e-3", "--methods",
                                              "lora,lora-frozen-b,condlora-general,condlora-frozen-b"]))
    assert s.methods == ["lora", "lora-frozen-b", "condlora-general", "condlora-frozen-b"] and s.run_args == {}
    assert not s.skip_unlearned and not s.share
    s = settings_from_args(parser.parse_args(["--output-dir", str(tmp_path), "--lr-search", "4"]))
    assert (s.tasks, s.methods, s.seeds, s.lr_search, s.lr_preset) == (["rte", "mrpc", "stsb", "cola"],
                                                                      ["lora", "condlora-general"], [0, 1, 2], 4, None)
    assert s.lr_range == (1e-5, 3e-3)
    argv = ["--output-dir", "x", "--lr-grid", "2e-3, 1e-3", "--lr-range", "1e-4,1e-2"]
    s = settings_from_args(parser.parse_args(argv))
    assert (s.lr_grid, s.lr_range, s.n_trials) == ([1e-3, 2e-3], (1e-4, 1e-2), 2)


def test_cli_help_and_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "-h"])
    assert e.value.code == 0 and "--lr-search N_TRIALS" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "--output-dir", str(tmp_path), "--lr-search", "3", "--lr-preset", "paper"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "--output-dir", str(tmp_path), "--lr-preset", "bogus"])
    assert e.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    for bad, msg in ((["--tasks", "rte,foo"], "unknown task 'foo'"), (["--seeds", "0"], "--seeds must be >= 1"),
                     (["--methods", "head"], "no learning rate for")):
        assert cli.main(["study", "--output-dir", str(tmp_path), "--lr-preset", "paper", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("condlora study: error:") and msg in err and "Traceback" not in err


def test_end_to_end_with_real_training(tmp_path, capsys):
    """Real `condlora.runner.train` runs (tiny BERT, small GLUE-layout TSVs from the train tests' fixtures)."""
    pytest.importorskip("condlora.runner.train", reason="condlora.runner.train not merged yet")
    fixtures = pytest.importorskip("glue_fixtures", reason="tests/glue_fixtures.py (train tests) not merged yet")
    model = fixtures.make_tiny_model_dir(tmp_path / "model")
    glue = fixtures.write_glue(tmp_path / "glue", n_train=40, n_dev=12, folders=["RTE"])
    args = ["study", "--tasks", "rte", "--methods", "lora,condlora", "--seeds", "1", "--lr-search", "2",
            "--model", str(model), "--glue-dir", str(glue), "--output-dir", str(tmp_path / "s"), "--epochs", "1",
            "--batch-size", "8", "--max-length", "32", "--quiet"]
    assert cli.main(args) == 0
    saved = json.loads((tmp_path / "s" / "study.json").read_text())
    assert saved["complete"] and len(saved["runs"]) == 2
    params = {m: {r["trainable_params"] for r in saved["runs"] if r["method"] == m}
              for m in ("lora", "condlora-general")}
    # 2 layers x q,v x (A+B); --methods condlora is stored as condlora-general/
    assert params == {"lora": {2 * 2 * 2 * 8 * 32}, "condlora-general": {2 * 2 * 8 * 32}}
    for m in ("lora", "condlora-general"):
        assert saved["lr"]["rte"][m]["n_complete"] == 2 and 1e-5 <= saved["lr"]["rte"][m]["lr"] <= 3e-3
        assert (tmp_path / "s" / "runs" / "rte" / m / "seed0" / "results.json").exists()
        assert (tmp_path / "s" / "search" / "rte" / m / "trial1" / "results.json").exists()
    out = capsys.readouterr().out
    assert "| LoRA |" in out and "| CondLoRA | 1,024 |" in out
    table3 = (tmp_path / "s" / "table3.csv").read_text().splitlines()
    assert table3[0] == "matrix,rte,avg" and [r.split(",")[0] for r in table3[1:]] == ["A", "B", "random"]
    assert all(0.0 <= float(v) <= 1.0 for r in table3[1:] for v in r.split(",")[1:])
    assert len((tmp_path / "s" / "table3_layers.csv").read_text().splitlines()) == 1 + 4  # 2 layers x q, v
    assert (tmp_path / "s" / "table3.png").stat().st_size > 0
    figure1 = (tmp_path / "s" / "figure1.csv").read_text().splitlines()  # the runner's real peft LoRA adapter
    assert [r.split(",")[:4] for r in figure1[1:]] == [["rte", m, k, "1"] for m in ("query", "value") for k in "AB"]
    assert all((tmp_path / "s" / f).stat().st_size > 0 for f in ("table2_seeds.png", "table2_curves.png"))
    # 2 search trials per method; seed 0 is the best trial, copied: 4 trainings planned and done
    assert "4/4 trainings done (100%) · no worker running" in status_line(tmp_path / "s")
    mtimes = sorted(p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("results.json"))
    assert cli.main(args) == 0  # re-run: every run and search is reused
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("results.json")) == mtimes


def test_seeds_of_an_lr_the_study_no_longer_uses_are_moved_aside(tmp_path):
    first, second = FakeRun(), FakeRun()
    run_study(settings(tmp_path, tasks="rte", methods="lora", lr_preset=None, lr=1e-4, seeds=2), run_fn=first)
    runs = tmp_path / "study" / "runs" / "rte" / "lora"
    (runs / "seed1" / "results.json").unlink()  # seed 1 was still training at the old LR
    with pytest.warns(UserWarning, match="held a run at lr=0.0001, not the chosen lr=0.0003"):
        record = run_study(settings(tmp_path, tasks="rte", methods="lora", lr_preset=None, lr=3e-4, seeds=2),
                           run_fn=second)
    assert [c["lr"] for c in second.calls] == [3e-4, 3e-4]
    assert sorted(d.name for d in runs.iterdir()) == ["seed0", "seed0-lr0.0001", "seed1", "seed1-lr0.0001"]
    assert json.loads((runs / "seed0-lr0.0001" / "results.json").read_text())["lr"] == 1e-4
    assert {r["lr"] for r in record["runs"]} == {3e-4} and len(record["runs"]) == 2


def test_save_every_passes_to_the_runs_and_is_not_part_of_the_study(tmp_path):
    """--save-every reaches every run (checkpoints of long runs); a study started without it goes on with it."""
    from condlora.cli import build_parser
    from condlora.cli.study import settings_from_args

    args = build_parser("study").parse_args(["study", "--output-dir", "x", "--tasks", "stsb", "--save-every", "50"])
    assert settings_from_args(args).run_args["save_every"] == 50
    assert build_parser("study").parse_args(["study", "--output-dir", "x"]).save_every is None
    run_study(settings(tmp_path), run_fn=FakeRun())
    more = FakeRun()
    run_study(settings(tmp_path, seeds=4, run_args={**settings(tmp_path).run_args, "save_every": 50}), run_fn=more)
    assert [c["seed"] for c in more.calls] == [3] * 4 and {c["save_every"] for c in more.calls} == {50}
