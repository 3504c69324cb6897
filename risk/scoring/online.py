"""The streaming model: river's HalfSpaceTrees behind a MinMaxScaler, learning as the agent works.

Sizes are chosen for the hot path: 10 trees of height 6 learn in ~25 µs here, and a window swap (every 250
learned actions) costs well under a millisecond, where height 15 costs seconds to build, hundreds of MB and
~175 ms per swap. Learning happens when a tool reports a successful outcome, after the decision has been
returned, so a decision never waits for it; and only allowed, executed actions are learned, so an attacker
who is denied cannot teach the model.

Scoring reads a compiled copy of the river model: its trees' splits and reference masses as arrays (the
masses change only when a window swaps) and the scaler's running minimum and maximum (which change with
every learned action), walked by one numba loop in a few µs instead of river's ~40 µs of Python per
action. Learning goes through river itself, and the copy is refreshed right after; the scores are
river's, bit for bit (tests/test_online.py).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from river import anomaly, compose, preprocessing

from risk.scoring.calibration import StreamingTailCalibrator
from risk.scoring.compiled import kernel


class OnlineScorer:
    """A streaming anomaly detector with its own calibration against recent benign scores.

    >>> scorer = OnlineScorer(("a", "b"), seed=1)
    >>> for i in range(300):
    ...     scorer.learn([0.5 + (i % 7) / 100, 0.5])
    >>> scorer.raw_score([0.52, 0.5]) < scorer.raw_score([9.0, -9.0])
    True
    """

    def __init__(
        self,
        features: Sequence[str],
        *,
        n_trees: int = 10,
        height: int = 6,
        window_size: int = 250,
        seed: int = 42,
    ) -> None:
        self.features = tuple(features)
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self._scaler = preprocessing.MinMaxScaler()
        self._trees = anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed)
        self._model = compose.Pipeline(self._scaler, self._trees)
        self._compiled = _CompiledTrees(self.features, self._scaler, self._trees)
        self._calibrator = StreamingTailCalibrator()
        self._lock = threading.Lock()
        self.learned = 0

    def raw_score(self, x: Sequence[float]) -> float:
        """river's `score_one` of the scaler and trees: in [0, 1], higher is more unusual."""
        with self._lock:
            return self._score(x)

    def severity(self, x: Sequence[float]) -> float:
        """Calibrated severity in [0, 1]: 0 until the model has seen enough benign actions to judge."""
        return self._calibrator.severity(self.raw_score(x))

    def learn(self, x: Sequence[float]) -> None:
        """Learn one allowed, executed action (and calibrate against its score before learning it)."""
        with self._lock:
            if self.learned >= self.window_size:  # HalfSpaceTrees scores 0 until its first window is full
                self._calibrator.add(self._score(x))
            self._model.learn_one(dict(zip(self.features, x, strict=True)))
            self.learned += 1
            self._compiled.refresh(masses=self.learned % self.window_size == 0)

    def _score(self, x: Sequence[float]) -> float:
        if self.learned < self.window_size:  # as river: 0 while the first window fills
            return 0.0
        if len(x) != len(self.features):
            raise ValueError(f"expected {len(self.features)} features, got {len(x)}")
        return self._compiled.score(np.asarray(x, dtype=np.float64))


class _CompiledTrees:
    """HalfSpaceTrees and its scaler as arrays. Each tree is complete (river pads it), so it is stored in heap
    order: node k's children are 2k + 1 and 2k + 2, tree t starts at t * (2 ** (height + 1) - 1)."""

    def __init__(
        self, features: tuple[str, ...], scaler: preprocessing.MinMaxScaler, trees: anomaly.HalfSpaceTrees
    ) -> None:
        self._column = {name: i for i, name in enumerate(features)}
        self._scaler = scaler
        self._trees = trees
        self._n_trees = trees.n_trees
        self._height = trees.height
        self._size_limit = float(trees.size_limit)
        # river's normalizer: the largest score a window could give (every node of every tree at full mass)
        self._max_score = float(trees.n_trees * trees.window_size * (2 ** (trees.height + 1) - 1))
        self._nodes: list[Any] = []  # river's nodes, in the arrays' order
        self.lowest = np.zeros(len(features))
        self.highest = np.zeros(len(features))
        self.feature = np.zeros(0, dtype=np.intp)
        self.threshold = np.zeros(0)
        self.mass = np.zeros(0)
        # Load the compiled loop now (no trees yet: the same types, nothing walked), not on a later decision.
        _half_space_score(
            self.lowest, self.lowest, self.highest, self.feature, self.threshold, self.mass, 0, 0, 0.0, 1.0
        )

    def refresh(self, *, masses: bool) -> None:
        """Copy the scaler's running range; and the reference masses when a window swapped."""
        for name, i in self._column.items():
            self.lowest[i] = self._scaler.min[name].get()
            self.highest[i] = self._scaler.max[name].get()
        if not self._nodes:
            self._lay_out(self._trees.trees)
        if masses:
            self.mass = np.array([node.r_mass for node in self._nodes], dtype=np.float64)

    def _lay_out(self, roots: list[Any]) -> None:
        per_tree = 2 ** (self._height + 1) - 1
        internal = 2**self._height - 1
        for root in roots:
            heap = [root] + [None] * (per_tree - 1)
            for k in range(internal):
                heap[2 * k + 1], heap[2 * k + 2] = heap[k].children
            self._nodes += heap
        self.feature = np.array(
            [self._column[n.feature] if k % per_tree < internal else 0 for k, n in enumerate(self._nodes)],
            dtype=np.intp,
        )
        self.threshold = np.array(
            [n.threshold if k % per_tree < internal else 0.0 for k, n in enumerate(self._nodes)], dtype=np.float64
        )

    def score(self, x: NDArray[np.float64]) -> float:
        return float(
            _half_space_score(
                x, self.lowest, self.highest, self.feature, self.threshold, self.mass, self._n_trees, self._height,
                self._size_limit, self._max_score,
            )
        )  # fmt: skip


@kernel
def _half_space_score(
    x: NDArray[np.float64], lowest: NDArray[np.float64], highest: NDArray[np.float64], feature: NDArray[np.intp],
    threshold: NDArray[np.float64], mass: NDArray[np.float64], n_trees: int, height: int, size_limit: float,
    max_score: float,
) -> float:  # fmt: skip
    """river's HalfSpaceTrees.score_one on MinMaxScaler.transform_one(x), in the same float operations:
    per tree, mass * 2 ** depth summed down the path until a node's mass falls below the size limit."""
    per_tree = 2 ** (height + 1) - 1
    total = 0.0
    for t in range(n_trees):
        base = t * per_tree
        node = 0
        depth_pow = 1.0
        score = 0.0
        stopped = False
        for _ in range(height):
            r = mass[base + node]
            score += r * depth_pow
            if r < size_limit:
                stopped = True
                break
            f = feature[base + node]
            span = highest[f] - lowest[f]
            value = (x[f] - lowest[f]) / span if span != 0.0 else 0.0
            node = 2 * node + 1 if value < threshold[base + node] else 2 * node + 2
            depth_pow *= 2.0
        if not stopped:
            score += mass[base + node] * depth_pow
        total += score
    return 1.0 - total / max_score
