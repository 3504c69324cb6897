"""Calibration: turning a raw anomaly score into a severity whose threshold means something.

A raw score only says "more or less unusual". Its place among the scores of benign actions says how
often a benign action would look at least this unusual: the upper-tail probability p. Severity is
``clip((log10(1/p) - 1) / 2, 0, 1)``: about 0 for anything a tenth of benign actions reach (it rises to
only 0.01 there, so rankings stay informative), 0.5 at the 1% tail, 1 at the 0.1% tail and beyond.
So a risk threshold of 0.5 on the behavior alone flags about 1% of benign actions and 0.8 about 0.25%,
when the benign actions look like the calibration sample; the README gives the measured rates.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable

TAIL_FLOOR = 0.1  # tail probability at which severity starts rising from 0
DECADES_TO_FULL = 2.0  # decades of tail probability from severity 0 to 1 (10% -> 0.1%)
# Below the floor, severity rises from 0 to this much: too little to move a threshold, enough to rank.
TIE_BREAK = 0.01


def severity_from_tail(p: float) -> float:
    """Severity of an upper-tail probability `p` among benign scores.

    >>> [round(severity_from_tail(p), 3) for p in (1.0, 0.5, 0.1, 0.01, 0.001, 0.0001)]
    [0.0, 0.006, 0.01, 0.5, 1.0, 1.0]
    """
    if p >= TAIL_FLOOR:
        return TIE_BREAK * (1.0 - p) / (1.0 - TAIL_FLOOR)
    return max(TIE_BREAK, min(1.0, (math.log10(TAIL_FLOOR / max(p, 1e-12))) / DECADES_TO_FULL))


class TailCalibrator:
    """Upper-tail probabilities against a fixed sample of benign scores (from training).

    >>> cal = TailCalibrator(range(1000))
    >>> cal.tail(500.0), cal.tail(995.0), cal.tail(5000.0)
    (0.5, 0.005, 0.000999000999000999)
    """

    def __init__(self, benign_scores: Iterable[float]) -> None:
        self.sorted_scores_ = sorted(float(s) for s in benign_scores)
        if not self.sorted_scores_:
            raise ValueError("calibration needs at least one benign score")

    def tail(self, score: float) -> float:
        """The share of benign scores at or above `score`; never 0, since the sample is finite."""
        n = len(self.sorted_scores_)
        above = n - bisect_left(self.sorted_scores_, score)
        return max(above, 1) / (n + 1) if above == 0 else above / n

    def severity(self, score: float) -> float:
        return severity_from_tail(self.tail(score))


class StreamingTailCalibrator:
    """Upper-tail probabilities against the most recent `size` benign scores, for the online model.

    Until `min_count` scores were seen it reports tail 1 (severity 0): a cold model cannot judge.
    """

    def __init__(self, size: int = 2000, min_count: int = 200) -> None:
        self.size = size
        self.min_count = min_count
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []

    def add(self, score: float) -> None:
        self._recent.append(score)
        insort(self._sorted, score)
        if len(self._recent) > self.size:
            old = self._recent.popleft()
            del self._sorted[bisect_left(self._sorted, old)]

    def tail(self, score: float) -> float:
        n = len(self._sorted)
        if n < self.min_count:
            return 1.0
        above = n - bisect_left(self._sorted, score)
        return max(above, 1) / (n + 1) if above == 0 else above / n

    def severity(self, score: float) -> float:
        return severity_from_tail(self.tail(score))
