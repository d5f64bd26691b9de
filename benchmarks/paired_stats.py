"""The test every benchmark report applies to a claimed difference: paired by seed, on one machine, with a 95%
confidence interval from the t-distribution.

Why paired: two runs of one seed share their data order, initialisation and augmentation, so their difference
cancels most of the seed-to-seed spread (a seed moves a yolov5n's mAP by 1-2 points). Why one machine: the same
seed gave 0.473, 0.450 and 0.436 on three VMs (RESULTS.md), more than the differences we measure, so a pair whose
runs trained on different machines is not a pair. Why an interval and not "|mean| > sd": over 3 seeds that test is
t = 1.7, p = 0.2; the interval says how large the difference can plausibly be, and "shown" only when it excludes 0.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedInterval:
    n: int  # seeds
    mean: float
    low: float  # NaN below 2 seeds
    high: float

    @property
    def verdict(self) -> str:
        """"shown" when the interval excludes 0, "not shown" when it holds 0, "one seed" when there is none."""
        if self.n < 2:
            return "one seed"
        return "shown" if self.low > 0 or self.high < 0 else "not shown"

    def describe(self, scale: float = 100.0, fmt: str = "+.1f") -> str:
        """'+2.0 [+0.4, +3.6]' in `scale` units (points by default); one seed: the difference alone."""
        if self.n < 2:
            return format(scale * self.mean, fmt)
        return f"{format(scale * self.mean, fmt)} [{format(scale * self.low, fmt)}, {format(scale * self.high, fmt)}]"


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided t critical value (scipy's, which the dev and bench extras install with scikit-learn)."""
    from scipy import stats

    return float(stats.t.ppf((1 + confidence) / 2, df))


def paired_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> PairedInterval:
    """Mean of per-seed differences and its t-interval: mean ± t(n-1) sd / sqrt(n)."""
    n = len(differences)
    if n == 0:
        raise ValueError("no paired differences")
    mean = statistics.fmean(differences)
    if n < 2:
        return PairedInterval(n, mean, math.nan, math.nan)
    half = t_quantile(n - 1, confidence) * statistics.stdev(differences) / math.sqrt(n)
    return PairedInterval(n, mean, mean - half, mean + half)


def same_machine(run_a: dict, run_b: dict) -> bool:
    """Whether two runs' records name the same machine (run_records.machine()); a run without a stamp pairs only
    with another without one (runs finished before stamps existed, all on the machines of that time)."""
    return run_a.get("machine") == run_b.get("machine")
