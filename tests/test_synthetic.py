"""The synthetic trace generator (data/synthetic.py): reproducible, well formed, labelled as data/README.md says."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from risk import ActionType

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "data" / "synthetic.py"
SAMPLES = ROOT / "data" / "synthetic"
# The command that made the committed samples; data/README.md must show exactly this.
SAMPLE_COMMAND = "python data/synthetic.py --out data/synthetic --scale 0.1 --drift-days 0"
SAMPLE_FILES = ("attacks.jsonl", "test.jsonl", "train.jsonl")
REQUIRED = ("ts", "agent_id", "session_id", "action_type", "resource", "payload", "label")
EXTRA = {"attack", "persona", "outcome"}
ACTION_TYPES = {t.value for t in ActionType}
SMALL = {"days": 12, "scale": 0.1}  # enough for every attack type, generated in a fraction of a second


def load_generator() -> ModuleType:
    # data/ is not a package (risk must never import it), so load the script by path.
    spec = importlib.util.spec_from_file_location("synthetic", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["synthetic"] = module  # dataclasses look their module up while the classes are built
    spec.loader.exec_module(module)
    return module


synthetic = load_generator()


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]


def generate_into(out: Path, **kwargs: Any) -> Path:
    synthetic.write(synthetic.generate(**kwargs), out)
    return out


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_into(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def rows(default_set: Path) -> dict[str, list[dict[str, Any]]]:
    """The parsed default files by stem (train, test, drift, attacks), read once for all tests."""
    return {path.stem: read(path) for path in sorted(default_set.iterdir())}


def test_generator_speaks_the_packages_action_types() -> None:
    assert set(synthetic.ACTION_TYPES) == ACTION_TYPES


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = generate_into(tmp_path / "a", seed=3, **SMALL)
    second = generate_into(tmp_path / "b", seed=3, **SMALL)
    names = sorted(p.name for p in first.iterdir())
    assert names == ["attacks.jsonl", "drift.jsonl", "test.jsonl", "train.jsonl"]
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_different_seed_gives_different_files(tmp_path: Path) -> None:
    first = generate_into(tmp_path / "a", seed=3, **SMALL)
    second = generate_into(tmp_path / "b", seed=4, **SMALL)
    for name in ("train.jsonl", "test.jsonl", "drift.jsonl"):
        assert (first / name).read_bytes() != (second / name).read_bytes(), name


def test_drift_days_do_not_change_train_or_test(tmp_path: Path) -> None:
    with_drift = generate_into(tmp_path / "a", drift_days=5, **SMALL)
    without = generate_into(tmp_path / "b", drift_days=0, **SMALL)
    assert not (without / "drift.jsonl").exists()
    for name in ("train.jsonl", "test.jsonl", "attacks.jsonl"):
        assert (with_drift / name).read_bytes() == (without / name).read_bytes(), name


@pytest.mark.parametrize("name", ["train", "test", "drift"])
def test_every_line_is_a_well_formed_action(rows: dict[str, list[dict[str, Any]]], name: str) -> None:
    for number, row in enumerate(rows[name], 1):
        where = f"{name}.jsonl:{number}"
        assert tuple(row)[: len(REQUIRED)] == REQUIRED, where
        assert set(row) - set(REQUIRED) <= EXTRA, where
        assert row["ts"].endswith("+00:00") and datetime.fromisoformat(row["ts"]).utcoffset() is not None, where
        assert row["action_type"] in ACTION_TYPES, where
        assert isinstance(row["resource"], str) and row["resource"], where
        assert isinstance(row["agent_id"], str) and isinstance(row["session_id"], str), where
        assert isinstance(row["payload"], dict) and row["payload"], where
        assert row["label"] in (0, 1), where
        assert row["persona"] in synthetic.PERSONA_BY_NAME, where
        assert row["outcome"]["status"] in ("success", "error"), where
        if row["label"]:
            assert row["attack"] in synthetic.ATTACKS, where
        else:
            assert "attack" not in row, where


@pytest.mark.parametrize("name", ["train", "test", "drift"])
def test_lines_are_sorted_by_time(rows: dict[str, list[dict[str, Any]]], name: str) -> None:
    times = [datetime.fromisoformat(row["ts"]) for row in rows[name]]
    assert times == sorted(times)


def test_files_follow_each_other_in_time(rows: dict[str, list[dict[str, Any]]]) -> None:
    train, test, drift = rows["train"], rows["test"], rows["drift"]
    assert train[-1]["ts"] < test[0]["ts"] and test[-1]["ts"] < drift[0]["ts"]


def test_only_test_has_harmful_actions(rows: dict[str, list[dict[str, Any]]]) -> None:
    assert not any(row["label"] for row in rows["train"])
    assert not any(row["label"] for row in rows["drift"])


def test_default_sizes_and_harmful_share(rows: dict[str, list[dict[str, Any]]]) -> None:
    train, test = rows["train"], rows["test"]
    assert 15_000 <= len(train) <= 25_000
    assert 7_500 <= len(test) <= 12_500
    assert 0.01 <= sum(row["label"] for row in test) / len(test) <= 0.03


def test_every_persona_works_in_every_file(rows: dict[str, list[dict[str, Any]]]) -> None:
    for name in ("train", "test", "drift"):
        assert {row["persona"] for row in rows[name]} == set(synthetic.PERSONA_BY_NAME), name


@pytest.mark.parametrize("where", ["default", "samples"])
def test_every_attack_type_is_in_test_and_matches_the_manifest(
    rows: dict[str, list[dict[str, Any]]], where: str
) -> None:
    if where == "default":
        test, incidents = rows["test"], rows["attacks"]
    else:
        test, incidents = read(SAMPLES / "test.jsonl"), read(SAMPLES / "attacks.jsonl")
    harmful = Counter(row["attack"] for row in test if row["label"])
    assert set(harmful) == set(synthetic.ATTACKS)
    listed: Counter[str] = Counter()
    for incident in incidents:
        listed[incident["attack"]] += incident["actions"]
    assert listed == harmful
    sessions = {row["session_id"] for row in test if row["label"]}
    assert {incident["session_id"] for incident in incidents} == sessions


def test_about_half_of_the_incidents_are_subtle(rows: dict[str, list[dict[str, Any]]]) -> None:
    styles = Counter(incident["style"] for incident in rows["attacks"])
    assert 0.4 <= styles["subtle"] / sum(styles.values()) <= 0.7


def test_benign_work_lives_beside_the_attacks_in_their_sessions(rows: dict[str, list[dict[str, Any]]]) -> None:
    # Attacks are inserted into ordinary sessions (except off-hours, which is a session of its own).
    test = rows["test"]
    hosts = {row["session_id"] for row in test if row["label"] and row["attack"] != "off_hours"}
    benign_in_hosts = {row["session_id"] for row in test if not row["label"] and row["session_id"] in hosts}
    assert benign_in_hosts == hosts


def test_committed_samples_equal_a_fresh_regeneration(tmp_path: Path) -> None:
    assert SAMPLE_COMMAND in (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    args = SAMPLE_COMMAND.split()[2:]
    args[args.index("--out") + 1] = str(tmp_path)
    subprocess.run([sys.executable, str(GENERATOR), *args], check=True, capture_output=True, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SAMPLE_FILES)
    assert sorted(p.name for p in SAMPLES.iterdir()) == sorted(SAMPLE_FILES)
    for name in SAMPLE_FILES:
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), f"data/synthetic/{name} is stale"


def test_committed_samples_stay_small() -> None:
    assert sum((SAMPLES / name).stat().st_size for name in SAMPLE_FILES) < 3_000_000


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path), "--scale", "0"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "scale > 0" in result.stderr
