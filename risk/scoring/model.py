"""The batch model: an IsolationForest over benign behavior, compiled for scoring, calibrated, explained,
and stored as a joblib artifact with a model card whose SHA-256 is checked before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import tempfile
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest

from risk.errors import RiskError
from risk.features import FEATURES_VERSION, MODEL_FEATURES
from risk.scoring.calibration import TailCalibrator
from risk.scoring.forest import CompiledForest

# Models shipped with the project live in models/ beside the package; $RISK_MODELS points elsewhere.
SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"
DEFAULT_MODEL = "default"
EXPLAIN_TAIL = 0.05  # a feature is named as a reason when fewer than 5% of benign actions reach its value
CALIBRATION_HOLDOUT_ROWS = 200  # from this many training rows on, the last quarter is held out for calibration
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a model name or version: a file name's part, no path

log = logging.getLogger("risk")


class ModelError(RiskError):
    """A model artifact is missing, altered or does not fit this version of agent-risk."""


class ModelNotFound(ModelError):
    """No model of the name asked for is installed."""


def models_folder() -> Path:
    """Where models are looked up by name: $RISK_MODELS, else the shipped models/."""
    return Path(os.environ.get("RISK_MODELS", SHIPPED_MODELS))


@dataclass
class BehaviorModel:
    """A fitted, compiled and calibrated forest over the behavioral FEATURES.

    `severity` is the calibrated anomaly in [0, 1] (see risk.scoring.calibration); `explain` names the
    features that made an action unusual.
    """

    name: str
    version: str
    features: tuple[str, ...]
    forest: CompiledForest
    calibrator: TailCalibrator
    feature_samples: list[list[float]]  # per feature, 1,001 quantiles of its benign values, for explanations
    features_version: int = 1  # risk.features.FEATURES_VERSION when fitted (artifacts from before it: 1)

    @property
    def model_version(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def scores_these_features(self) -> bool:
        """Whether it was trained on the features this version computes, by name and by meaning."""
        return (tuple(self.features), self.features_version) == (MODEL_FEATURES, FEATURES_VERSION)

    def raw_score(self, x: Sequence[float]) -> float:
        """Anomaly: the negated IsolationForest score, higher is stranger."""
        return -self.forest.score_one(x)

    def severity(self, x: Sequence[float]) -> float:
        return self.calibrator.severity(self.raw_score(x))

    def explain(self, x: Sequence[float], top: int = 3) -> list[tuple[str, float, float]]:
        """Up to `top` (feature, value, share of benign actions at or above it), rarest first."""
        found = []
        for name, value, sample in zip(self.features, x, self.feature_samples, strict=True):
            share = (len(sample) - bisect_left(sample, value)) / len(sample)
            if share < EXPLAIN_TAIL:
                found.append((name, value, share))
        found.sort(key=lambda item: item[2])
        return found[:top]


def fit_model(
    X: np.ndarray,
    features: Sequence[str],
    *,
    name: str = DEFAULT_MODEL,
    version: str = "1",
    n_estimators: int = 100,
    max_samples: int = 256,
    seed: int = 0,
) -> BehaviorModel:
    """Fit the forest on benign feature rows `X` (in time order), compile it, and calibrate it on later rows.

    The last quarter of the rows (when there are at least CALIBRATION_HOLDOUT_ROWS) is held out for calibration:
    scores of rows
    the forest saw look more normal than new benign actions will, and behavior drifts, so calibrating on
    what came after the fitted period keeps a threshold's false-alarm rate near what the README promises.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(features) or len(X) < 2:
        raise ValueError(f"need at least 2 rows of {len(features)} features, got shape {X.shape}")
    cut = len(X) - len(X) // 4 if len(X) >= CALIBRATION_HOLDOUT_ROWS else len(X)
    fit_rows = np.arange(cut)
    held = np.arange(cut, len(X)) if cut < len(X) else fit_rows
    forest = IsolationForest(
        n_estimators=n_estimators, max_samples=min(max_samples, len(fit_rows)), random_state=seed
    ).fit(X[fit_rows])
    compiled = CompiledForest.from_sklearn(forest)
    calibrator = TailCalibrator((-compiled.score_many(X[held])).tolist())
    levels = np.linspace(0.0, 1.0, 1001)
    samples = [np.quantile(X[:, j], levels).tolist() for j in range(X.shape[1])]
    return BehaviorModel(name, version, tuple(features), compiled, calibrator, samples, FEATURES_VERSION)


def save_model(model: BehaviorModel, directory: str | Path, card: dict[str, Any], *, replace: bool = False) -> Path:
    """Write `<name>-<version>.joblib` and its card `<name>-<version>.json` (with the artifact's SHA-256).

    A model of that name and version already there is a ModelError unless `replace`: guards and services load
    it by name, and one retrained over it would change what they score with under the same version. Each file is
    written beside its place and renamed into it, so a reader never sees half of one."""
    for what, part in (("name", model.name), ("version", model.version)):
        if not _PART.fullmatch(part):
            raise ModelError(f"model {what} {part!r} must be letters, digits, '_', '.' and '-', starting with a "
                             "letter or digit (it names the model's files)")  # fmt: skip
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    artifact = directory / f"{model.model_version}.joblib"
    card_path = artifact.with_suffix(".json")
    if not replace and (artifact.exists() or card_path.exists()):
        raise ModelError(f"{artifact} exists: train under another version, or replace it deliberately (--force)")
    _write_atomically(artifact, lambda f: joblib.dump(model, f, compress=3))
    full_card = {
        "name": model.name,
        "version": model.version,
        "artifact": artifact.name,
        "sha256": _sha256(artifact),
        "features": list(model.features),
        "features_version": model.features_version,
        "libraries": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "river": version("river"),
            "joblib": joblib.__version__,
        },
        **card,
    }
    text = json.dumps(full_card, indent=2, sort_keys=True) + "\n"
    _write_atomically(card_path, lambda f: f.write(text.encode()))
    return artifact


def _write_atomically(path: Path, write: Any) -> None:
    """Write a file through `write(file)` to a temporary name beside `path`, then rename it over `path`."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)  # as open() would make it: mkstemp's 0600 kept other users' services out
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def resolve_model(spec: str | Path) -> Path:
    """The artifact named by `spec`: a path (a Path, or text ending in .joblib or holding a '/'), or a model name
    looked up in models_folder(). A name is never read as a path: a folder `default` in the working directory
    hid the shipped default model."""
    path = Path(spec)
    if isinstance(spec, Path) or path.suffix == ".joblib" or "/" in spec or os.sep in spec:
        return path
    folder = models_folder()
    cards = sorted(
        (card for card in folder.glob(f"{spec}-*.json") if _card_name(card) == spec),
        key=lambda card: _version_key(card.stem.removeprefix(f"{spec}-")),
    )
    if not cards:
        raise ModelNotFound(f"no model named {spec!r} in {folder}; train one with `risk train` or `make model`")
    return cards[-1].with_suffix(".joblib")


def load_installed(spec: str | Path) -> BehaviorModel | None:
    """`load_model(spec)`, except that the default model may be missing (a checkout without models/): None then,
    with a warning. A default model that is there but altered or unreadable is refused like any other."""
    try:
        return load_model(spec)
    except ModelNotFound:
        if spec != DEFAULT_MODEL:
            raise
        log.warning("no default model in %s: scoring without it", models_folder())
        return None


def load_model(spec: str | Path) -> BehaviorModel:
    """Load a model after checking its artifact's SHA-256 against its card: a joblib file is a pickle,
    and loading an altered one would run whatever code was put in it."""
    artifact = resolve_model(spec)
    card_path = artifact.with_suffix(".json")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the model card {card_path}: {exc}") from None
    if not isinstance(card, dict):
        raise ModelError(f"the model card {card_path} is not a JSON object")
    # Read once: the bytes hashed are the bytes unpickled, so a file replaced after the check is never loaded.
    try:
        data = artifact.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model artifact {artifact} is missing") from None
    except OSError as exc:
        raise ModelError(f"cannot read the model artifact {artifact}: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != card.get("sha256"):
        raise ModelError(
            f"refusing to load {artifact}: its SHA-256 {actual} does not match the card's {card.get('sha256')}; "
            "the file was altered or the card belongs to another artifact. Retrain or restore both files."
        )
    model = joblib.load(io.BytesIO(data))
    if not isinstance(model, BehaviorModel):
        raise ModelError(f"{artifact} holds a {type(model).__name__}, not a BehaviorModel")
    # The card is what operators and auditors read, and a model is looked up by the card's name: it must describe
    # the model the trail will name, not another.
    said = (card.get("name"), card.get("version"), card.get("features"))
    held = (model.name, model.version, list(model.features))
    if said != held:
        raise ModelError(f"the model card {card_path} does not describe {artifact}: it says name, version and "
                         f"features {said}, the artifact holds {held}")  # fmt: skip
    if not model.scores_these_features:
        raise ModelError(f"{artifact} was trained on other features than this version of agent-risk computes (its "
                         f"features are version {model.features_version}, these {FEATURES_VERSION}, see "
                         "risk.features.FEATURES_VERSION): retrain it with `risk train`")  # fmt: skip
    return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _card_name(card: Path) -> str:
    """The model name a card declares (so "t" never picks up "t-big-1"). ModelError if it cannot be read: skipped,
    a damaged card of the model asked for would make it look not installed, and the default one optional."""
    try:
        name = json.loads(card.read_text()).get("name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"cannot read the model card {card}: {exc}") from None
    if not isinstance(name, str):
        raise ModelError(f"the model card {card} names no model")
    return name


def _version_key(version: str) -> tuple[int, tuple[int, ...], str]:
    """Numeric versions sort numerically and after any other version string."""
    parts = version.split(".")
    if all(p.isdigit() for p in parts):
        return (1, tuple(int(p) for p in parts), "")
    return (0, (), version)
