"""`condlora.study.stats`: known answers computed by hand (closed forms of Student's t for 1 and 2 degrees of
freedom, exact signed-rank counts), the verdict rules, the sanity gate and the trivial baseline."""

from __future__ import annotations

import math

import pytest

from condlora.study.stats import (
    Summary,
    compare,
    gate,
    majority_baseline,
    mean_ci,
    paired_ttest,
    trivial_baseline,
    verdict,
    wilcoxon_p,
)


def t975(df: int) -> float:
    """Closed forms of the 97.5% quantile of Student's t: df=1 Cauchy, df=2 (2p-1)/sqrt(2p(1-p))."""
    p = 0.975
    return math.tan(math.pi * (p - 0.5)) if df == 1 else (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def t_two_sided_p(t: float, df: int) -> float:
    """Closed forms of the two-sided p of Student's t: df=1 1-2/pi*atan|t|, df=2 1-|t|/sqrt(2+t^2)."""
    return 1 - 2 / math.pi * math.atan(abs(t)) if df == 1 else 1 - abs(t) / math.sqrt(2 + t * t)


def test_known_quantiles():
    assert t975(1) == pytest.approx(12.7062047, abs=1e-6) and t975(2) == pytest.approx(4.3026527, abs=1e-6)


def test_mean_ci_by_hand():
    s = mean_ci([70.0, 71.0, 68.0])  # mean 69 2/3, sample sd sqrt(7/3)
    assert s.n == 3 and s.mean == pytest.approx(69 + 2 / 3)
    assert s.half == pytest.approx(t975(2) * math.sqrt(7 / 3) / math.sqrt(3))
    assert (s.lo, s.hi) == (pytest.approx(s.mean - s.half), pytest.approx(s.mean + s.half))
    two = mean_ci([1.0, 3.0])  # sd sqrt(2), n 2
    assert two.half == pytest.approx(t975(1) * math.sqrt(2) / math.sqrt(2))
    one = mean_ci([5.0])
    assert (one.n, one.mean) == (1, 5.0) and math.isnan(one.half)
    none = mean_ci([])
    assert none.n == 0 and math.isnan(none.mean) and math.isnan(none.half)


def test_paired_difference_by_hand():
    ref = {0: 70.0, 1: 71.0, 2: 68.0, 7: 50.0}  # seed 7 has no partner: left out
    other = {0: 72.5, 1: 71.0, 2: 74.0, 9: 99.0}
    c = compare(ref, other)  # d = 2.5, 0, 6
    mean, sd = 8.5 / 3, math.sqrt(((2.5 - 8.5 / 3) ** 2 + (8.5 / 3) ** 2 + (6 - 8.5 / 3) ** 2) / 2)
    assert c.diff.n == 3 and c.diff.mean == pytest.approx(mean)
    assert c.diff.half == pytest.approx(t975(2) * sd / math.sqrt(3))
    assert c.p_t == pytest.approx(t_two_sided_p(mean / (sd / math.sqrt(3)), 2))
    assert c.p_wilcoxon == pytest.approx(0.5)  # zero dropped; 2 positive ranks: P = 2 * 1/2^2
    assert c.verdict == "undecided"  # CI about [-4.65, +10.32]
    assert paired_ttest(ref, other) == (pytest.approx(c.p_t), 3)
    two = compare({0: 1.0, 1: 2.0}, {0: 2.0, 1: 5.0})  # d = 1, 3: t = 2 / (sqrt 2 / sqrt 2) = 2, df 1
    assert two.p_t == pytest.approx(t_two_sided_p(2.0, 1)) and two.diff.half == pytest.approx(t975(1) * 1.0)


def test_wilcoxon_exact_by_hand():
    # d = 1..5, all positive: W- = 0, only 1 of 2^5 sign patterns is as extreme on each side
    assert wilcoxon_p([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)
    # d = 1, -2, 3, 4: W- = 2; sign patterns with W- <= 2: {}, {1}, {2}: 3/16 per side
    assert wilcoxon_p([1.0, -2.0, 3.0, 4.0]) == pytest.approx(6 / 16)


@pytest.mark.parametrize("d, want", [([], "no pairs yet"), ([1.5], "undecided"),
                                     ([0.0, 0.0, 0.0], "on par")])  # identical scores: CI [0, 0]
def test_undefined_p_values(d, want):
    assert math.isnan(wilcoxon_p(d))
    c = compare({i: 10.0 for i in range(len(d))}, {i: 10.0 + x for i, x in enumerate(d)})
    assert math.isnan(c.p_t) and math.isnan(c.p_wilcoxon) and c.verdict == want and c.diff.n == len(d)


def test_identical_nonzero_differences():
    c = compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 3.0, 1: 4.0, 2: 5.0})  # d = 2, 2, 2: t infinite
    assert c.p_t == 0.0 and c.diff.half == 0.0 and c.verdict == "better"


@pytest.mark.parametrize("mean, half, want", [
    (0.0, 1.0, "on par"),  # [-1, 1]: the whole CI within ±1 (edges included)
    (0.5, 0.4, "on par"),  # [0.1, 0.9]: above 0 but negligible
    (-0.6, 0.3, "on par"),
    (0.5, 0.6, "undecided"),  # [-0.1, 1.1]
    (1.5, 1.0, "better"),  # [0.5, 2.5]
    (-3.0, 2.0, "worse"),  # [-5, -1]
    (-0.5, 1.0, "undecided"),  # [-1.5, 0.5]
    (0.0, math.nan, "undecided"),  # one seed: no CI
])
def test_verdict_rules(mean, half, want):
    assert verdict(Summary(3 if not math.isnan(half) else 1, mean, half)) == want


def test_gate_rules():
    assert gate(Summary(3, 60.0, 2.0), 52.7).learned  # +7.3 > max(1, 2)
    low = gate(Summary(3, 54.0, 2.0), 52.7, "LoRA")  # +1.3 > 1 but not > CI half-width 2
    assert not low.learned and "LoRA 54.00 (95% CI ± 2.00) vs trivial baseline 52.70: +1.30" in low.reason
    assert not gate(Summary(1, 53.5, math.nan), 52.7).learned  # one seed: only the 1-point rule, +0.8
    assert gate(Summary(1, 54.0, math.nan), 52.7).learned
    assert not gate(Summary(3, 0.5, 0.2), 0.0).learned  # MCC 0.5: not above 1 point
    unknown = gate(Summary(3, 50.0, 1.0), math.nan)
    assert unknown.learned and "unknown" in unknown.reason
    assert not gate(Summary(0, math.nan, math.nan), 50.0).learned


def test_majority_baseline():
    assert majority_baseline("accuracy", [1, 0, 1, 1]) == 75.0
    assert majority_baseline("matthews", [1, 0, 1]) == 0.0 and majority_baseline("pearson", [0.5, 2.0]) == 0.0
    assert math.isnan(majority_baseline("accuracy", []))


def test_trivial_baseline_from_glue_files(tmp_path):
    fixtures = pytest.importorskip("glue_fixtures")
    glue = fixtures.write_glue(tmp_path / "glue", n_train=20, n_dev=13, folders=["RTE", "MNLI", "CoLA", "STS-B"])
    assert trivial_baseline("rte", str(glue)) == pytest.approx(100 * 7 / 13)  # labels alternate, 7 of 13 first
    # MNLI: the matched part only (labels cycle over 3: 5 of 13 entailment), as Table 2 scores matched accuracy
    assert trivial_baseline("mnli", str(glue)) == pytest.approx(100 * 5 / 13)
    assert trivial_baseline("cola", str(glue)) == 0.0 and trivial_baseline("stsb", str(glue)) == 0.0
    assert trivial_baseline("rte", str(glue), max_eval_samples=4) in {25.0, 50.0, 75.0, 100.0}


def test_asymmetry_contrast_table(tmp_path):
    """Both one-side-frozen LoRA rows in a study: Table 2c gives B-only − A-only paired by seed, per task and on
    the average, in the Markdown and in table2_contrasts.csv; without both rows there is no Table 2c."""
    import csv

    from condlora.study.tables import build_table2, write_tables

    scores = {("mrpc", "lora"): [80, 81, 82], ("mrpc", "lora-frozen-a"): [79, 81, 80],
              ("mrpc", "lora-frozen-b"): [70, 73, 71], ("stsb", "lora"): [85, 86, 84],
              ("stsb", "lora-frozen-a"): [84, 85, 85], ("stsb", "lora-frozen-b"): [60, 66, 63]}
    runs = [{"task": t, "method": m, "seed": s, "test_score": v / 100, "trainable_params": 1, "head_params": 1,
             "examples_per_sec": 1.0} for (t, m), vs in scores.items() for s, v in enumerate(vs)]
    methods = ["lora", "lora-frozen-a", "lora-frozen-b"]
    md, t = write_tables(runs, ["mrpc", "stsb"], methods, tmp_path, "h", {"mrpc": 68.0, "stsb": 0.0})
    c = t.contrasts["lora-frozen-a", "lora-frozen-b"]
    assert c["mrpc"].diff.mean == pytest.approx((9 + 8 + 9) / 3) and c["mrpc"].diff.n == 3
    assert c["stsb"].diff.mean == pytest.approx((24 + 19 + 22) / 3)
    assert c["avg"].diff.mean == pytest.approx(((9 + 24) / 2 + (8 + 19) / 2 + (9 + 22) / 2) / 3)
    d = [9, 8, 9]  # mean 26/3, sd 1/sqrt(3): half-width t975(2) * sd / sqrt(3)
    assert c["mrpc"].diff.half == pytest.approx(t975(2) * statistics_sd(d) / math.sqrt(3))
    assert c["mrpc"].verdict == "better"
    assert "Table 2c" in md and "| MRPC | LoRA B-only (A frozen) − LoRA A-only (B frozen) | +8.67 [" in md
    rows = list(csv.DictReader((tmp_path / "table2_contrasts.csv").open()))
    assert [(r["task"], r["method_a"], r["method_b"]) for r in rows] == [
        (k, "lora-frozen-a", "lora-frozen-b") for k in ("mrpc", "stsb", "avg")]
    assert float(rows[0]["delta"]) == pytest.approx(26 / 3)
    assert build_table2(runs, ["mrpc"], ["lora", "lora-frozen-a"]).contrasts == {}
    forms = [{**r, "method": {"lora-frozen-a": "condlora-general", "lora-frozen-b": "condlora"}.get(r["method"],
                                                                                                   r["method"])}
             for r in runs]
    t = build_table2(forms, ["mrpc", "stsb"], ["lora", "condlora", "condlora-general"], {"mrpc": 68.0, "stsb": 0.0})
    assert list(t.contrasts) == [("condlora-general", "condlora")]  # the general form against the paper's
    assert t.contrasts["condlora-general", "condlora"]["mrpc"].diff.mean == pytest.approx(26 / 3)


def test_table4_names_methods_without_a_run(tmp_path):
    """A method with no finished run (not trained yet, or skipped as unlearned) gets an empty row and a note."""
    from condlora.study.tables import write_tables

    runs = [{"task": "mrpc", "method": "lora", "seed": s, "test_score": 0.8, "trainable_params": 73728,
             "head_params": 10, "examples_per_sec": 2.0} for s in range(2)]
    write_tables(runs, ["mrpc"], ["lora", "condlora-general"], tmp_path, "h", {"mrpc": 68.0})
    md = (tmp_path / "table4.md").read_text()
    assert "| CondLoRA |  |" in md and "No finished run of CondLoRA in this study" in md
    runs.append({**runs[0], "method": "condlora-general", "trainable_params": 12288})
    write_tables(runs, ["mrpc"], ["lora", "condlora-general"], tmp_path, "h", {"mrpc": 68.0})
    assert "No finished run" not in (tmp_path / "table4.md").read_text()


def statistics_sd(xs: list[float]) -> float:
    """Sample standard deviation, by hand."""
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
