"""Statistics of the study's Table 2: mean ± 95% CI over seeds, paired differences to the reference method
(95% CI, paired t-test, Wilcoxon signed-rank test), a verdict per comparison, and the sanity gate that leaves
out tasks the reference did not learn (its mean must clearly beat the trivial baseline on the test set).

All scores are x100 (points). Rules, in one place:
* CI: t-distribution with n-1 degrees of freedom; undefined (NaN) for n < 2.
* Verdict on the difference (method - reference): "on par" when its whole CI lies within ±EQUIVALENCE_MARGIN
  points (even if it excludes 0: a difference that small is negligible here); else "better" / "worse" when the
  whole CI lies above / below 0; else "undecided" (also when n < 2; "no pairs yet" when n = 0).
* Sanity gate: a task is learned when the reference's mean beats the baseline by more than LEARNED_MARGIN points
  and by more than the half-width of its own 95% CI (i.e. the CI's lower end is above the baseline).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Comparison", "Gate", "Summary", "compare", "gate", "majority_baseline", "mean_ci", "paired_ttest",
           "own_trivial_baseline", "trivial_baseline", "verdict", "wilcoxon_p"]

CONFIDENCE = 0.95
EQUIVALENCE_MARGIN = 1.0  # points: |Δ| CI inside this is "on par"
LEARNED_MARGIN = 1.0  # points the reference must beat the trivial baseline by


@dataclass(frozen=True)
class Summary:
    """Mean and 95% CI half-width of n values (half is NaN for n < 2, mean NaN for n = 0)."""

    n: int
    mean: float
    half: float

    @property
    def lo(self) -> float:
        """Lower end of the CI."""
        return self.mean - self.half

    @property
    def hi(self) -> float:
        """Upper end of the CI."""
        return self.mean + self.half


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value of Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def mean_ci(xs: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean ± t-based CI half-width of `xs` (n-1 degrees of freedom)."""
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan)
    mean = statistics.fmean(xs)
    if n < 2:
        return Summary(1, mean, math.nan)
    return Summary(n, mean, t_quantile(n - 1, confidence) * statistics.stdev(xs) / math.sqrt(n))


def _paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """Differences b - a over the seeds both have, in seed order."""
    return [b[s] - a[s] for s in sorted(set(a) & set(b))]


def _t_p(d: Sequence[float]) -> float:
    """Two-sided one-sample t-test p of the differences `d` against 0 (NaN for n < 2 or all-zero d)."""
    from scipy import stats

    n = len(d)
    if n < 2:
        return math.nan
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    if sd == 0:
        return math.nan if mean == 0 else 0.0  # identical non-zero differences: t is infinite
    return float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def paired_ttest(a: dict[int, float], b: dict[int, float]) -> tuple[float, int]:
    """Two-sided paired t-test of b vs a over the seeds both have: (p-value, n pairs); p is NaN when n < 2."""
    d = _paired(a, b)
    return _t_p(d), len(d)


def wilcoxon_p(d: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of the differences `d` (NaN for n < 2 or when every d is 0)."""
    from scipy import stats

    if len(d) < 2 or not any(d):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample and tie warnings: the p-value is still what scipy gives
        return float(stats.wilcoxon(d).pvalue)


def verdict(diff: Summary, margin: float = EQUIVALENCE_MARGIN) -> str:
    """'on par', 'better', 'worse' or 'undecided' from the CI of a difference (see the module docstring);
    'no pairs yet' without a single seed pair."""
    if diff.n == 0:
        return "no pairs yet"
    if diff.n < 2 or math.isnan(diff.half):
        return "undecided"
    if -margin <= diff.lo and diff.hi <= margin:
        return "on par"
    if diff.lo > 0:
        return "better"
    if diff.hi < 0:
        return "worse"
    return "undecided"


@dataclass(frozen=True)
class Comparison:
    """One method against the reference on one task (or the average): Δ = method - reference, paired by seed."""

    diff: Summary
    p_t: float
    p_wilcoxon: float
    verdict: str


def compare(ref: dict[int, float], other: dict[int, float]) -> Comparison:
    """Paired comparison of `other` with `ref` (seed -> score) over the seeds both have."""
    d = _paired(ref, other)
    diff = mean_ci(d)
    return Comparison(diff, _t_p(d), wilcoxon_p(d), verdict(diff))


@dataclass(frozen=True)
class Gate:
    """The sanity gate of one task: the trivial baseline, whether the reference learned it, and why."""

    baseline: float  # x100; NaN when unknown
    learned: bool
    reason: str


def gate(ref: Summary, baseline: float, ref_label: str = "reference", margin: float = LEARNED_MARGIN) -> Gate:
    """Whether the reference's scores `ref` clearly beat `baseline` (see the module docstring)."""
    if ref.n == 0:
        return Gate(baseline, False, f"no {ref_label} runs yet")
    if math.isnan(baseline):
        return Gate(baseline, True, "trivial baseline unknown (test labels not readable, or no trivial value for "
                                    "this metric); not gated")
    need = max(margin, 0.0 if math.isnan(ref.half) else ref.half)
    gain = ref.mean - baseline
    ci = "n/a" if math.isnan(ref.half) else f"{ref.half:.2f}"
    numbers = f"{ref_label} {ref.mean:.2f} (95% CI ± {ci}) vs trivial baseline {baseline:.2f}: {gain:+.2f}"
    if gain > need:
        return Gate(baseline, True, numbers)
    return Gate(baseline, False, f"{numbers}, not above max({margin:g} point, CI half-width)")


def majority_baseline(metric: str, labels: Sequence) -> float:
    """The trivial baseline x100: majority-class accuracy of `labels` for accuracy, else 0 (MCC, Pearson)."""
    if metric != "accuracy":
        return 0.0
    if not labels:
        return math.nan
    counts: dict = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    return 100.0 * max(counts.values()) / len(labels)


def trivial_baseline(task: str, glue_dir: str | None = None, max_eval_samples: int | None = None) -> float:
    """The trivial baseline of `task` on the test set a run scores (same subsample; MNLI: matched part)."""
    from ..runner.glue import get_task, load_glue, subsample

    spec = get_task(task)
    if spec.metric != "accuracy":
        return 0.0
    data = load_glue(task, glue_dir)
    parts = {"matched": data.test_parts["matched"]} if "matched" in data.test_parts else data.test_parts
    labels = [y for ex in parts.values() for y in subsample(ex, max_eval_samples).labels]
    return majority_baseline(spec.metric, labels)


def own_trivial_baseline(run_args: dict) -> float:
    """The trivial baseline of an own-data study on the test file its runs score: the majority class for
    accuracy, 0 for MCC, Pearson and Spearman, unknown (NaN) for F1."""
    from ..runner.glue import subsample
    from ..runner.owndata import load_files
    from ..runner.train_config import TrainConfig

    cfg = TrainConfig(**{k: v for k, v in run_args.items() if k in TrainConfig.__dataclass_fields__})
    data = load_files(cfg)
    metric = data.task.metric
    if metric == "f1" or not data.test_parts:
        return math.nan
    labels = [y for ex in data.test_parts.values() for y in subsample(ex, cfg.max_eval_samples).labels]
    return majority_baseline(metric, labels)
