"""A fitted scikit-learn IsolationForest compiled to flat numpy arrays, for scoring one action at a time.

`IsolationForest.score_samples` dispatches through joblib and a Python loop over its trees, which costs
milliseconds for a single row; the guard scores one agent action per call and has about 100 µs for the
whole decision. `CompiledForest` holds the same fitted trees as a few concatenated arrays, and one
numba-compiled loop walks every tree for every row (under 10 µs for a row of a 100-tree forest, where one
numpy call per tree level cost 50). Its scores equal `score_samples` (trees are summed in sklearn's
order), including sklearn's float32 cast of the input, per-tree feature subsets and the side each split
sends missing values (NaN) to.

Scoring needs numpy and numba: scikit-learn is imported when compiling, not when loading a pickled forest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from risk.scoring.compiled import kernel

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest  # type: ignore[import-untyped, unused-ignore]

_TREE_LEAF = -1  # sklearn.tree._tree.TREE_LEAF: the child id of a leaf


def average_path_length(n_samples: NDArray[np.integer[Any]] | NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n points.

    The same expression, in the same order, as sklearn's `_average_path_length`, so the values are
    bit-identical: 0 for n <= 1, 1 for n == 2, 2 (ln(n - 1) + γ) - 2 (n - 1) / n above.

    >>> average_path_length(np.array([0, 1, 2, 256])).round(4).tolist()
    [0.0, 0.0, 1.0, 10.2448]
    """
    n = np.asarray(n_samples)
    out = np.zeros(n.shape, dtype=np.float64)
    many = n > 2
    out[n == 2] = 1.0
    out[many] = 2.0 * (np.log(n[many] - 1.0) + np.euler_gamma) - 2.0 * (n[many] - 1.0) / n[many]
    return out


def _mirrored(threshold: NDArray[np.float64]) -> NDArray[np.float64]:
    """t' with `-x <= t'` exactly when `not x <= t`, for every non-NaN x.

    `-x < -t` is `-x <= nextafter(-t, -inf)` since no double lies between the two; t = +inf (nothing is
    above it) needs a threshold nothing passes, NaN; t = NaN (every x is "above" it) needs +inf.
    """
    out = np.nextafter(-threshold, -np.inf)
    out[threshold == np.inf] = np.nan
    out[np.isnan(threshold)] = np.inf
    return out


class CompiledForest:
    """A fitted IsolationForest as flat arrays: `score_one`/`score_many` equal its `score_samples`.

    Layout. Every node of every tree sits in one set of arrays; tree k's root is at `roots_[k]`. The two
    children of a split are adjacent, `first_child_[i]` and `first_child_[i] + 1`, and one step is::

        i = first_child_[i] + (xe[feature_[i]] <= threshold_[i])

    where `xe` is the row cast to float32 (as sklearn casts it) then widened, followed by its negation.
    A comparison with NaN is False, so the first child is always the side sklearn sends missing values to:
    a split that sends them right stores (x <= t, children right then left); one that sends them left is
    mirrored onto -x, storing (-x <= t', children left then right) with `-x <= t'` exactly `not x <= t`.
    Leaves point to themselves and never pass (threshold NaN), so walking `max_depth_` steps lands every
    tree on its leaf. `leaf_value_` holds sklearn's per-leaf path length, depth + c(n_node_samples) - 1,
    and the score is -2 ** (-sum over trees / denominator_), denominator_ = n_trees * c(max_samples_).

    Features are original column indices even when each tree saw a subset (max_features < 1.0). The
    object is plain numpy arrays and numbers, so pickle and joblib store it as is; the renumbered copy the
    scoring loop walks (`_level_major`) is rebuilt when it is loaded, never stored.

    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> X = np.random.default_rng(0).normal(size=(200, 3))
    >>> forest = IsolationForest(n_estimators=20, max_features=0.7, random_state=0).fit(X)
    >>> compiled = CompiledForest.from_sklearn(forest)
    >>> bool(abs(compiled.score_one(X[0]) - forest.score_samples(X[:1])[0]) <= 1e-9)
    True
    >>> bool(np.allclose(compiled.score_many(X), forest.score_samples(X), rtol=0, atol=1e-9))
    True
    """

    def __init__(
        self,
        *,
        n_features_in: int,
        roots: NDArray[np.intp],
        first_child: NDArray[np.intp],
        feature: NDArray[np.intp],
        threshold: NDArray[np.float64],
        leaf_value: NDArray[np.float64],
        max_depth: int,
        denominator: float,
        offset: float,
    ) -> None:
        n_nodes = len(first_child)
        if not (len(feature) == len(threshold) == len(leaf_value) == n_nodes):
            raise ValueError("first_child, feature, threshold and leaf_value must have one entry per node")
        self.n_features_in_ = int(n_features_in)
        self.roots_ = roots
        self.first_child_ = first_child
        self.feature_ = feature
        self.threshold_ = threshold
        self.leaf_value_ = leaf_value
        self.max_depth_ = int(max_depth)
        self.denominator_ = float(denominator)
        # decision_function = score - offset_; kept so callers can reproduce predict()'s cut.
        self.offset_ = float(offset)
        self._prepare()

    def __getstate__(self) -> dict[str, Any]:
        """The fitted arrays only; the walking layout is rebuilt on load (so stored artifacts never change)."""
        return {name: value for name, value in self.__dict__.items() if name != "_walk"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._prepare()

    def _prepare(self) -> None:
        """Lay out the walk, and load its compiled loop now: the first call in a process costs 100-200 ms
        (numba reads its cache and starts its runtime), which belongs to loading a model, not to a decision."""
        self._walk = _level_major(self)
        self.score_many(np.zeros((1, self.n_features_in_), dtype=np.float32))

    @property
    def n_estimators(self) -> int:
        """How many trees the forest has."""
        return len(self.roots_)

    @classmethod
    def from_sklearn(cls, forest: IsolationForest) -> CompiledForest:
        """Compile a fitted `sklearn.ensemble.IsolationForest` (dense input; trees are copied, not shared)."""
        from sklearn.ensemble import IsolationForest  # type: ignore[import-untyped, unused-ignore]
        from sklearn.utils.validation import check_is_fitted  # type: ignore[import-untyped, unused-ignore]

        if not isinstance(forest, IsolationForest):
            raise TypeError(f"expected a fitted sklearn IsolationForest, got {type(forest).__name__}")
        check_is_fitted(forest)
        n_features = int(forest.n_features_in_)
        roots, first_child, feature, threshold, leaf_value = [], [], [], [], []
        base = 0
        for estimator, features in zip(forest.estimators_, forest.estimators_features_, strict=True):
            tree = estimator.tree_
            left = np.asarray(tree.children_left, dtype=np.intp)
            right = np.asarray(tree.children_right, dtype=np.intp)
            split = np.flatnonzero(left != _TREE_LEAF)  # old ids, parents before children
            leaves = np.flatnonzero(left == _TREE_LEAF)
            nan_left = np.asarray(tree.missing_go_to_left, dtype=bool)[split]
            split_feature = np.asarray(tree.feature, dtype=np.intp)[split]
            # sklearn indexes X[:, features] only when a tree saw fewer columns than X has
            # (_compute_chunked_score_samples); otherwise the tree's feature ids already are columns.
            if len(features) != n_features:
                split_feature = np.asarray(features, dtype=np.intp)[split_feature]
            split_threshold = np.asarray(tree.threshold, dtype=np.float64)[split]

            # Renumber so each split's children are adjacent, NaN side first: the k-th split's children
            # become 1 + 2k and 2 + 2k, the root stays 0 (a full binary tree has 1 + 2 * n_splits nodes).
            n_nodes = int(tree.node_count)
            new_id = np.zeros(n_nodes, dtype=np.intp)
            pair = 1 + 2 * np.arange(len(split), dtype=np.intp)
            new_id[np.where(nan_left, left[split], right[split])] = pair
            new_id[np.where(nan_left, right[split], left[split])] = pair + 1

            tree_first = np.arange(n_nodes, dtype=np.intp)  # leaves point to themselves
            tree_first[new_id[split]] = pair
            tree_feature = np.zeros(n_nodes, dtype=np.intp)
            tree_feature[new_id[split]] = np.where(nan_left, split_feature + n_features, split_feature)
            tree_threshold = np.full(n_nodes, np.nan)
            tree_threshold[new_id[split]] = np.where(nan_left, _mirrored(split_threshold), split_threshold)
            # Exactly sklearn's per-leaf term, decision_path_length + c(n_node_samples) - 1.0, same order.
            depth = np.asarray(tree.compute_node_depths(), dtype=np.int64)
            n_node_samples = np.asarray(tree.n_node_samples, dtype=np.intp)
            path_length = depth + average_path_length(n_node_samples) - 1.0
            tree_value = np.zeros(n_nodes, dtype=np.float64)
            tree_value[new_id[leaves]] = path_length[leaves]

            roots.append(base)
            first_child.append(tree_first + base)
            feature.append(tree_feature)
            threshold.append(tree_threshold)
            leaf_value.append(tree_value)
            base += n_nodes

        c_max_samples = float(average_path_length(np.array([forest.max_samples_]))[0])
        return cls(
            n_features_in=n_features,
            roots=np.array(roots, dtype=np.intp),
            first_child=np.concatenate(first_child),
            feature=np.concatenate(feature),
            threshold=np.concatenate(threshold),
            leaf_value=np.concatenate(leaf_value),
            max_depth=max(int(e.tree_.max_depth) for e in forest.estimators_),
            denominator=len(forest.estimators_) * c_max_samples,
            offset=float(forest.offset_),
        )

    def score_one(self, x: NDArray[Any] | Sequence[float]) -> float:
        """`score_samples` of one row of `n_features_in_` values: lower is more abnormal, in [-1, 0].

        Values beyond float32's range become ±inf, as in sklearn (numpy warns about the overflow).
        """
        row = np.asarray(x, dtype=np.float32)
        if row.shape != (self.n_features_in_,):
            raise ValueError(
                f"score_one takes one row of {self.n_features_in_} features, got an array of shape {row.shape}"
            )
        if self.denominator_ == 0.0:  # every tree saw one sample: sklearn fixes the score at -0.5
            return -0.5
        nodes, leaf_value = self._walk
        total = _path_totals(row.reshape(1, -1), self.n_estimators, nodes, leaf_value, self.max_depth_)[0]
        return -math.pow(2.0, -total / self.denominator_)  # the C library's pow, as np.power calls it

    def score_many(self, X: NDArray[Any] | Sequence[Sequence[float]]) -> NDArray[np.float64]:
        """`score_samples(X)` for a 2-D batch of rows; an empty batch gives an empty array."""
        rows = np.asarray(X, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features_in_:
            raise ValueError(
                f"score_many takes a 2-D array of rows with {self.n_features_in_} features each, "
                f"got an array of shape {rows.shape}"
            )
        if self.denominator_ == 0.0:
            return np.full(rows.shape[0], -0.5)
        nodes, leaf_value = self._walk
        totals = _path_totals(np.ascontiguousarray(rows), self.n_estimators, nodes, leaf_value, self.max_depth_)
        scores: NDArray[np.float64] = -np.power(2.0, -totals / self.denominator_)
        return scores


# One node as the walk reads it: a single 16-byte record, so each step touches one cache line, not three arrays.
_NODE = np.dtype([("threshold", np.float64), ("first_child", np.int32), ("feature", np.int32)])


def _level_major(forest: CompiledForest) -> tuple[NDArray[np.void], NDArray[np.float64]]:
    """The nodes renumbered level by level across all trees (every root, then every node one split below, ...),
    children still adjacent. The top levels that every row walks through then share a few kilobytes: measured
    with the CPU caches flushed between rows, as the rest of a decision flushes them, about a quarter faster."""
    first = forest.first_child_
    order: list[int] = []
    level = [int(r) for r in forest.roots_]
    while level:
        order += level
        level = [child for node in level if first[node] != node for child in (int(first[node]), int(first[node]) + 1)]
    old = np.asarray(order, dtype=np.intp)
    new_id = np.empty(len(old), dtype=np.intp)
    new_id[old] = np.arange(len(old), dtype=np.intp)
    if len(old) >= 2**31:
        raise ValueError("a forest of more than 2**31 nodes cannot be compiled")
    nodes = np.empty(len(old), dtype=_NODE)
    nodes["threshold"] = forest.threshold_[old]
    nodes["first_child"] = new_id[first[old]]
    nodes["feature"] = forest.feature_[old]
    return nodes, np.ascontiguousarray(forest.leaf_value_[old])


@kernel
def _path_totals(
    rows: NDArray[np.float32], n_trees: int, nodes: NDArray[np.void], leaf_value: NDArray[np.float64], max_depth: int
) -> NDArray[np.float64]:
    """Per row, the sum over trees (in tree order, as sklearn adds them) of the path length to its leaf.

    Tree k's root is node k (see `_level_major`). Feature ids from n_features on read the negated column (the
    mirrored NaN-left splits, see the class); a float32 value widened to float64 and then negated equals
    numpy's float32 negation widened.
    """
    n_rows, n_features = rows.shape
    totals = np.empty(n_rows, dtype=np.float64)
    at = np.empty(n_trees, dtype=np.int64)
    for r in range(n_rows):
        at[:] = np.arange(n_trees)
        # Level by level across trees, not tree by tree: the trees' loads are independent, so the CPU overlaps
        # their cache misses instead of waiting out each one along a path.
        for _ in range(max_depth):
            for t in range(n_trees):
                split = nodes[at[t]]
                f = split.feature
                value = np.float64(rows[r, f]) if f < n_features else -np.float64(rows[r, f - n_features])
                at[t] = split.first_child + (1 if value <= split.threshold else 0)
        total = 0.0
        for t in range(n_trees):
            total += leaf_value[at[t]]
        totals[r] = total
    return totals
