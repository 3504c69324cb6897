"""CompiledForest scores exactly what the sklearn IsolationForest it was compiled from scores."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError

from risk.scoring.forest import CompiledForest
from risk.scoring.model import SHIPPED_MODELS, BehaviorModel, ModelError, load_model

TOLERANCE = 1e-9
# Values beyond float32's range overflow to ±inf when cast, in sklearn and in CompiledForest alike.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

SPECIAL_VALUES = [
    0.0,
    -0.0,
    1e-300,  # rounds to 0 in float32
    1e-45,  # the smallest float32 subnormal
    3.4e38,  # near float32's largest
    -3.4e38,
    1e39,  # past float32's largest: +inf once cast
    -1e39,
    1e300,
    -1e300,
    np.inf,
    -np.inf,
    np.nan,
]


def training_data(data: st.DataObject) -> NDArray[np.float64]:
    """Rows with repeated values, duplicated rows, constant columns, a few scales and sometimes NaN."""
    n_samples = data.draw(st.integers(2, 300))
    n_features = data.draw(st.integers(1, 8))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    scale = data.draw(st.sampled_from([1e-3, 1.0, 1e6]))
    X = rng.normal(size=(n_samples, n_features)).round(data.draw(st.integers(0, 3))) * scale
    if data.draw(st.booleans()):
        X = X[rng.integers(0, n_samples, size=n_samples)]
    constant = np.array(data.draw(st.lists(st.booleans(), min_size=n_features, max_size=n_features)))
    X[:, constant] = data.draw(st.sampled_from([0.0, 1.0, -2.5]))
    X[rng.random(X.shape) < data.draw(st.sampled_from([0.0, 0.0, 0.1]))] = np.nan
    return X


def fitted_forest(data: st.DataObject, X: NDArray[np.float64]) -> IsolationForest:
    n_samples = X.shape[0]
    max_samples = data.draw(
        st.one_of(
            st.just("auto"),
            st.integers(1, n_samples),
            # a float must leave at least one sample per tree: int(max_samples * n_samples) >= 1
            st.floats(1.0 / n_samples, 1.0).filter(lambda f: int(f * n_samples) >= 1),
        )
    )
    forest = IsolationForest(
        n_estimators=data.draw(st.integers(1, 60)),
        max_samples=max_samples,
        max_features=data.draw(st.floats(0.3, 1.0, exclude_min=True)),
        bootstrap=data.draw(st.booleans()),
        contamination="auto",
        random_state=data.draw(st.integers(0, 2**31 - 1)),
    )
    return forest.fit(X)


def query_rows(data: st.DataObject, forest: IsolationForest, X: NDArray[np.float64]) -> NDArray[np.float64]:
    """Thresholds exactly, the float32 values either side of them, extremes, NaN and training rows."""
    thresholds = np.concatenate([e.tree_.threshold[e.tree_.children_left != -1] for e in forest.estimators_])
    as_float32 = thresholds.astype(np.float32)
    pool = np.unique(  # np.unique keeps one NaN, from SPECIAL_VALUES or X
        np.concatenate(
            [
                thresholds,
                as_float32,
                np.nextafter(as_float32, np.float32(np.inf)),
                np.nextafter(as_float32, np.float32(-np.inf)),
                SPECIAL_VALUES,
                X.ravel(),
            ]
        )
    ).tolist()
    n_features = X.shape[1]
    row = st.lists(st.sampled_from(pool), min_size=n_features, max_size=n_features)
    drawn = np.array(data.draw(st.lists(row, min_size=1, max_size=20)), dtype=np.float64).reshape(-1, n_features)
    seen = X[data.draw(st.lists(st.integers(0, len(X) - 1), max_size=5))]
    return np.vstack([drawn, seen])


@settings(max_examples=100, deadline=None, report_multiple_bugs=False)
@given(data=st.data())
def test_compiled_scores_equal_score_samples_for_random_forests_and_rows(data: st.DataObject) -> None:
    X = training_data(data)
    forest = fitted_forest(data, X)
    rows = query_rows(data, forest, X)
    compiled = CompiledForest.from_sklearn(forest)

    for x in rows[:6]:  # one row per sklearn call is slow (milliseconds); the batch covers every row
        assert abs(compiled.score_one(x) - forest.score_samples(x[None])[0]) <= TOLERANCE
    expected = forest.score_samples(rows)
    one_by_one = np.array([compiled.score_one(x) for x in rows])
    np.testing.assert_allclose(one_by_one, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(compiled.score_many(rows), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(compiled.score_many(X), forest.score_samples(X), rtol=0, atol=TOLERANCE)


@settings(max_examples=40, deadline=None, report_multiple_bugs=False)
@given(
    random_state=st.integers(0, 2**31 - 1),
    special=st.lists(st.sampled_from([np.inf, -np.inf, np.nan, 0.0]), min_size=1, max_size=4),
)
def test_splits_on_exact_float32_thresholds_and_infinities_route_like_sklearn(
    random_state: int, special: list[float]
) -> None:
    # Fitted thresholds rarely equal a float32 value, so rows rarely land exactly on a split, least of all on
    # one that sends missing values left (stored mirrored on -x). Rewrite the fitted thresholds to float32
    # values and some to ±inf, NaN or 0.0, then query exactly those values.
    rng = np.random.default_rng(random_state)
    forest = IsolationForest(n_estimators=8, max_samples=64, random_state=random_state).fit(rng.normal(size=(200, 3)))
    for estimator in forest.estimators_:
        tree = estimator.tree_
        split = np.flatnonzero(tree.children_left != -1)
        tree.threshold[split] = tree.threshold[split].astype(np.float32)
        rewritten = rng.choice(split, size=min(len(split), len(special)), replace=False)
        tree.threshold[rewritten] = special[: len(rewritten)]
    assert any(e.tree_.missing_go_to_left[e.tree_.children_left != -1].any() for e in forest.estimators_)
    thresholds = np.concatenate([e.tree_.threshold for e in forest.estimators_])
    pool = np.concatenate([thresholds, [np.inf, -np.inf, np.nan]])
    rows = rng.choice(pool, size=(300, 3))
    compiled = CompiledForest.from_sklearn(forest)

    expected = forest.score_samples(rows)
    np.testing.assert_allclose([compiled.score_one(x) for x in rows], expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(compiled.score_many(rows), expected, rtol=0, atol=TOLERANCE)


def make_forest(**params: Any) -> tuple[IsolationForest, NDArray[np.float64]]:
    X = np.random.default_rng(7).normal(size=(300, 5))
    return IsolationForest(random_state=0, **params).fit(X), X


def test_score_many_on_more_rows_than_one_chunk_equals_score_samples() -> None:
    forest, _ = make_forest(n_estimators=30)
    rows = np.random.default_rng(8).normal(scale=2.0, size=(1500, 5))
    compiled = CompiledForest.from_sklearn(forest)
    np.testing.assert_allclose(compiled.score_many(rows), forest.score_samples(rows), rtol=0, atol=TOLERANCE)


def test_score_one_accepts_a_plain_list_of_floats() -> None:
    forest, X = make_forest(n_estimators=10)
    compiled = CompiledForest.from_sklearn(forest)
    assert compiled.score_one(X[3].tolist()) == compiled.score_one(X[3])


def test_trees_of_one_sample_score_minus_one_half_like_sklearn() -> None:
    forest, X = make_forest(n_estimators=5, max_samples=1)
    compiled = CompiledForest.from_sklearn(forest)
    assert compiled.score_one(X[0]) == forest.score_samples(X[:1])[0] == -0.5
    np.testing.assert_array_equal(compiled.score_many(X), forest.score_samples(X))


def test_empty_batch_scores_to_an_empty_array() -> None:
    compiled = CompiledForest.from_sklearn(make_forest(n_estimators=5)[0])
    assert compiled.score_many(np.empty((0, 5))).shape == (0,)


def test_joblib_round_trip_keeps_every_score_identical(tmp_path: Path) -> None:
    forest, X = make_forest(n_estimators=50, max_features=0.6)
    compiled = CompiledForest.from_sklearn(forest)
    path = tmp_path / "forest.joblib"
    joblib.dump(compiled, path)
    loaded = joblib.load(path)

    assert isinstance(loaded, CompiledForest)
    assert loaded.n_features_in_ == 5
    assert loaded.offset_ == forest.offset_ == -0.5
    np.testing.assert_array_equal(loaded.score_many(X), compiled.score_many(X))
    assert [loaded.score_one(x) for x in X[:20]] == [compiled.score_one(x) for x in X[:20]]
    # Only the fitted arrays are stored: the walking layout is derived, so artifacts do not depend on it.
    assert "_walk" not in loaded.__getstate__() and "_walk" in loaded.__dict__


@pytest.mark.parametrize("width", [0, 4, 6])
def test_score_one_with_the_wrong_number_of_features_raises_value_error(width: int) -> None:
    compiled = CompiledForest.from_sklearn(make_forest(n_estimators=5)[0])
    with pytest.raises(ValueError, match=r"one row of 5 features, got an array of shape \(\d+,\)"):
        compiled.score_one(np.zeros(width))


def test_score_one_with_a_2d_batch_raises_value_error() -> None:
    compiled = CompiledForest.from_sklearn(make_forest(n_estimators=5)[0])
    with pytest.raises(ValueError, match=r"one row of 5 features, got an array of shape \(1, 5\)"):
        compiled.score_one(np.zeros((1, 5)))


@pytest.mark.parametrize("shape", [(3, 4), (3, 6), (5,)])
def test_score_many_with_the_wrong_shape_raises_value_error(shape: tuple[int, ...]) -> None:
    compiled = CompiledForest.from_sklearn(make_forest(n_estimators=5)[0])
    with pytest.raises(ValueError, match="2-D array of rows with 5 features each"):
        compiled.score_many(np.zeros(shape))


def test_compiling_an_unfitted_forest_raises_not_fitted_error() -> None:
    with pytest.raises(NotFittedError):
        CompiledForest.from_sklearn(IsolationForest())


def test_compiling_something_else_than_an_isolation_forest_raises_type_error() -> None:
    with pytest.raises(TypeError, match="IsolationForest"):
        CompiledForest.from_sklearn(object())


def test_scoring_works_where_numba_can_cache_nothing() -> None:
    """A read-only install without a home folder: numba finds no cache location, and scoring still works."""
    script = (
        "import numpy as np\n"
        "from sklearn.ensemble import IsolationForest\n"
        "from risk.scoring.forest import CompiledForest\n"
        "X = np.random.default_rng(0).normal(size=(64, 3))\n"
        "forest = IsolationForest(n_estimators=5, random_state=0).fit(X)\n"
        "assert np.allclose(CompiledForest.from_sklearn(forest).score_many(X), forest.score_samples(X), atol=1e-9)\n"
        "from risk.scoring.online import OnlineScorer\n"
        "scorer = OnlineScorer(('a',), window_size=2)\n"
        "for v in (0.1, 0.2, 0.3): scorer.learn([v])\n"
        "assert 0.0 <= scorer.raw_score([0.5]) <= 1.0\n"
    )
    # Only the zip-file locator, which finds nothing for modules on disk: numba raises "no locator available".
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_loading_the_models_loads_their_compiled_loops_before_any_decision() -> None:
    """The first call of a compiled loop in a process costs 100-200 ms; it belongs to loading, not to a decision."""
    script = (
        "from risk.scoring.forest import _path_totals\n"
        "from risk.scoring.online import _half_space_score, OnlineScorer\n"
        "from risk.scoring.model import load_model, resolve_model\n"
        "assert not _path_totals.signatures and not _half_space_score.signatures\n"
        "model = load_model(resolve_model('default'))\n"
        "scorer = OnlineScorer(('a', 'b'), window_size=2)\n"
        "print(len(_path_totals.signatures), len(_half_space_score.signatures))\n"
        "model.forest.score_one([0.5] * len(model.features))\n"
        "for v in (0.1, 0.2, 0.3): scorer.learn([v, v])\n"
        "scorer.raw_score([0.5, 0.5])\n"
        "print(len(_path_totals.signatures), len(_half_space_score.signatures))\n"  # what decisions call: no new types
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "1", "1"]


class _RunsCode:
    """A pickle that creates the file `marker` when it is unpickled."""

    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


# An audit hook cannot be removed: it acts only while `path` is set.
_swap: dict[str, Any] = {"path": None, "opens": 0, "with": None}


def _replace_after_the_first_open(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _swap["path"] and args and str(args[0]) == _swap["path"]:
        _swap["opens"] += 1
        if _swap["opens"] == 2:  # another process replaces the artifact after it was read and hashed
            os.replace(_swap["with"], _swap["path"])
            _swap["path"] = None


def test_load_model_unpickles_the_bytes_it_hashed_not_a_second_read(tmp_path: Path) -> None:
    artifact = tmp_path / "m-1.joblib"
    shutil.copy(SHIPPED_MODELS / "default-5.joblib", artifact)
    shutil.copy(SHIPPED_MODELS / "default-5.json", tmp_path / "m-1.json")
    payload = _RunsCode()
    payload.marker = str(tmp_path / "code-ran")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(payload))
    sys.addaudithook(_replace_after_the_first_open)
    _swap.update(path=str(artifact), opens=0, **{"with": str(tmp_path / "evil.pkl")})
    try:
        model = load_model(artifact)
    finally:
        _swap["path"] = None

    assert isinstance(model, BehaviorModel)
    assert _swap["opens"] == 1  # read once
    assert not (tmp_path / "code-ran").exists()


@pytest.mark.parametrize("card", ["[]", '"text"', "3", "null"])
def test_a_card_that_is_not_a_json_object_is_a_model_error(tmp_path: Path, card: str) -> None:
    shutil.copy(SHIPPED_MODELS / "default-5.joblib", tmp_path / "m-1.joblib")
    (tmp_path / "m-1.json").write_text(card)
    with pytest.raises(ModelError, match="not a JSON object"):
        load_model(tmp_path / "m-1.joblib")
