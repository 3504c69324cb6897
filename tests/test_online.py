"""OnlineScorer's compiled copy scores exactly what river's scaler and HalfSpaceTrees score."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import anomaly, compose, preprocessing

from risk.scoring.online import OnlineScorer

FEATURES = ("a", "b", "c", "d")
# Values a feature vector can hold, plus ones it should not (NaN, infinities) but must not score differently.
VALUES = st.one_of(
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.0, 1e-300, 1e300, -1e300, float("inf"), float("-inf"), float("nan")]),
)


def river_pipeline(n_trees: int, height: int, window_size: int, seed: int) -> compose.Pipeline:
    return compose.Pipeline(
        preprocessing.MinMaxScaler(),
        anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed),
    )


def same(a: float, b: float) -> bool:
    return a == b or (np.isnan(a) and np.isnan(b))


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    n_trees=st.integers(1, 6),
    height=st.integers(1, 7),
    window_size=st.integers(1, 30),
    seed=st.integers(0, 2**16),
)
def test_scores_equal_river_through_window_swaps(
    data: st.DataObject, n_trees: int, height: int, window_size: int, seed: int
) -> None:
    ours = OnlineScorer(FEATURES, n_trees=n_trees, height=height, window_size=window_size, seed=seed)
    theirs = river_pipeline(n_trees, height, window_size, seed)
    finite = st.lists(st.floats(-5, 5, allow_nan=False), min_size=len(FEATURES), max_size=len(FEATURES))
    stream = data.draw(st.lists(finite, min_size=2 * window_size + 1, max_size=4 * window_size + 3))
    probes = data.draw(st.lists(st.lists(VALUES, min_size=len(FEATURES), max_size=len(FEATURES)), max_size=5))
    for x in stream:
        for probe in [x, *probes]:
            assert same(ours.raw_score(probe), float(theirs.score_one(dict(zip(FEATURES, probe, strict=True)))))
        ours.learn(x)
        theirs.learn_one(dict(zip(FEATURES, x, strict=True)))


def test_a_constant_feature_scales_to_zero_as_in_river() -> None:
    ours, theirs = OnlineScorer(FEATURES, window_size=5), river_pipeline(10, 6, 5, 42)
    for i in range(40):
        x = [1.0, float(i % 3), 2.0, float(i)]
        ours.learn(x)
        theirs.learn_one(dict(zip(FEATURES, x, strict=True)))
    probe = [7.0, 1.0, -3.0, 100.0]
    assert ours.raw_score(probe) == theirs.score_one(dict(zip(FEATURES, probe, strict=True)))
    assert 0.0 <= ours.raw_score(probe) <= 1.0


def test_scores_zero_until_the_first_window_is_full() -> None:
    scorer = OnlineScorer(FEATURES, window_size=10)
    for i in range(9):
        scorer.learn([float(i)] * 4)
        assert scorer.raw_score([99.0] * 4) == 0.0
    scorer.learn([9.0] * 4)
    assert scorer.raw_score([99.0] * 4) > 0.0


def test_a_vector_of_the_wrong_length_is_refused() -> None:
    scorer = OnlineScorer(FEATURES, window_size=2)
    for i in range(3):
        scorer.learn([float(i)] * 4)
    with pytest.raises(ValueError, match="expected 4 features"):
        scorer.raw_score([1.0, 2.0])
