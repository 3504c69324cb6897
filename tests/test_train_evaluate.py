"""`risk train` and `risk evaluate`, as functions and through the CLI, on small traces written to tmp_path."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from risk import Guard, PolicyError
from risk.cli import app
from risk.evaluate import DEFAULT_EVALUATION_POLICY, evaluate, metrics, replay
from risk.features import BASELINE_ACTIONS, MODEL_FEATURES
from risk.scoring.model import DEFAULT_MODEL, load_model, resolve_model
from risk.traces import read_trace
from risk.train import history, score_trace, train, training_rows

START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
METRIC_KEYS = {
    "auroc",
    "tpr_at_fpr_1pct",
    "tpr_at_fpr_3pct",
    "attack_sessions_stopped",
    "benign_sessions_interrupted",
    "actions",
    "by_attack",
}


def routine(agent: str, session: str, at: datetime, i: int) -> dict[str, Any]:
    """One benign action of a claims analyst: reads of reports and SELECTs on de-identified claims."""
    if i % 3 == 2:
        return {
            "ts": at.isoformat(),
            "agent_id": agent,
            "session_id": session,
            "action_type": "file_read",
            "resource": f"/reports/readonly/q{i % 4 + 1}.csv",
            "payload": {"tool": "read_file", "args": {}},
            "label": 0,
            "outcome": {"status": "success", "bytes": 2000},
        }
    return {
        "ts": at.isoformat(),
        "agent_id": agent,
        "session_id": session,
        "action_type": "database_query",
        "resource": "data.deidentified.claims",
        "payload": {"sql": f"SELECT region, total FROM claims WHERE month = {i % 12 + 1}"},
        "label": 0,
        "outcome": {"status": "success", "rows": 10 + i % 5},
    }


def benign_lines(agents: dict[str, int], start: datetime = START, step: timedelta = timedelta(minutes=3)) -> list[dict]:
    lines = []
    for a, (agent, count) in enumerate(agents.items()):
        for i in range(count):
            at = start + a * timedelta(seconds=20) + i * step
            lines.append(routine(agent, f"s-{agent}-{i // 10}", at, i))
    return sorted(lines, key=lambda x: x["ts"])


def write_trace(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture
def train_trace(tmp_path: Path) -> Path:
    return write_trace(tmp_path / "train.jsonl", benign_lines({"analyst": 40, "auditor": 25}))


@pytest.fixture
def labelled_trace(tmp_path: Path) -> Path:
    """Later: two benign sessions, and an attack session whose last action drops the claims table."""
    later = START + timedelta(days=1)
    lines = [routine("analyst", "s-benign-1", later + timedelta(minutes=3 * i), i) for i in range(8)]
    lines += [routine("auditor", "s-benign-2", later + timedelta(minutes=3 * i, seconds=20), i) for i in range(6)]
    attack_start = later + timedelta(hours=2)
    lines += [routine("analyst", "s-attack", attack_start + timedelta(minutes=3 * i), i) for i in range(4)]
    lines.append(
        {
            "ts": (attack_start + timedelta(minutes=13)).isoformat(),
            "agent_id": "analyst",
            "session_id": "s-attack",
            "action_type": "database_query",
            "resource": "data.deidentified.claims",
            "payload": {"sql": "DROP TABLE claims"},
            "label": 1,
            "attack": "sabotage",
        }
    )
    return write_trace(tmp_path / "test.jsonl", lines)


# ---- train -----------------------------------------------------------------------------------------------------


def test_train_writes_an_artifact_and_a_card_describing_its_training(tmp_path: Path) -> None:
    lines = benign_lines({"analyst": 30, "auditor": 15})
    last_benign = max(datetime.fromisoformat(x["ts"]) for x in lines)
    harmful = routine("analyst", "s-x", last_benign + timedelta(hours=5), 0) | {"label": 1}
    trace = write_trace(tmp_path / "history.jsonl", [*lines, harmful])

    model, artifact = train(str(trace), tmp_path / "models", name="t", version="1")

    assert artifact == tmp_path / "models" / "t-1.joblib" and artifact.is_file()
    card = json.loads((tmp_path / "models" / "t-1.json").read_text())
    assert card["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert (card["name"], card["version"], model.model_version) == ("t", "1", "t-1")
    training = card["training"]
    assert training["source"] == str(trace)
    assert training["benign_actions"] == 45  # the harmful action is not trained on
    assert training["agents"] == 2
    assert training["rows"] == (30 - BASELINE_ACTIONS) + (15 - BASELINE_ACTIONS)
    assert training["skipped_first_actions_per_agent"] == BASELINE_ACTIONS
    assert training["window"] == [lines[0]["ts"], last_benign.isoformat()]
    assert card["features"] == list(MODEL_FEATURES)
    assert load_model(artifact).model_version == "t-1"


def test_train_on_a_history_too_short_to_skip_anyone_trains_on_all_of_it(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "short.jsonl", benign_lines({"analyst": 6}))
    _, artifact = train(str(trace), tmp_path / "models", name="short", version="2")
    training = json.loads(artifact.with_suffix(".json").read_text())["training"]
    assert (training["benign_actions"], training["rows"], training["agents"]) == (6, 6, 1)


def test_train_is_deterministic_for_the_same_data_and_seed(tmp_path: Path, train_trace: Path) -> None:
    first, _ = train(str(train_trace), tmp_path / "a", name="t", seed=3)
    second, _ = train(str(train_trace), tmp_path / "b", name="t", seed=3)
    probes = [[float(i % 3)] * len(MODEL_FEATURES) for i in range(5)]
    assert [first.severity(p) for p in probes] == [second.severity(p) for p in probes]


def test_the_shipped_model_is_what_make_model_trains(tmp_path: Path) -> None:
    """The Makefile's `model` recipe (the synthetic generator at seed 7, scale 1, then `risk train` at seed 0)
    gives the shipped model's scores. A change to the rules or features that alters the model fails here until
    `make model` is run and its artifact committed. Scores are compared to 1e-9, not bytes, so a library
    release that moves the last bit of a float does not fail it."""
    root = Path(__file__).resolve().parents[1]
    generate = [sys.executable, str(root / "data" / "synthetic.py"), "--out", str(tmp_path / "synthetic")]
    subprocess.run([*generate, "--seed", "7", "--scale", "1"], check=True, capture_output=True)
    trained, _ = train(str(tmp_path / "synthetic" / "train.jsonl"), tmp_path / "models", name="default", seed=0)
    shipped = load_model(resolve_model(DEFAULT_MODEL))
    rows = training_rows(read_trace(root / "data" / "synthetic" / "test.jsonl")).X
    assert [trained.severity(x) for x in rows] == pytest.approx([shipped.severity(x) for x in rows], abs=1e-9)
    assert trained.calibrator.sorted_scores_ == pytest.approx(shipped.calibrator.sorted_scores_, abs=1e-9)


# ---- batch scoring ---------------------------------------------------------------------------------------------


def test_score_trace_gives_the_risk_scores_guard_check_gives(tmp_path: Path) -> None:
    """A real trace through score_trace and, action by action, through a guard that flags nothing (as the
    batch replay learns every action), with the shipped model and no online model."""
    root = Path(__file__).resolve().parents[1]
    actions = sorted(read_trace(root / "data" / "synthetic" / "test.jsonl"), key=lambda a: a.ts)
    model = load_model(resolve_model(DEFAULT_MODEL))
    now = [0.0]
    guard = Guard(agent_id="batch", audit=f"sqlite:///{tmp_path}/audit.db", home=tmp_path, model=model,
                  online=False, mode="alert", max_risk_score=1.0, clock=lambda: now[0])  # fmt: skip
    checked = []
    for action in actions:
        now[0] = action.ts
        decision = guard.check(action.action_type, action.resource, action.payload, agent_id=action.agent_id)
        assert decision.allowed
        checked.append(decision.risk_score)
        success, rows, size = action.outcome()
        guard.record_outcome(decision.action_id, success=success, rows=rows, bytes=size, agent_id=action.agent_id)
    guard.close()

    batch = score_trace(actions, model)
    assert len(batch) == len(actions) > 500
    assert max(abs(a - b) for a, b in zip(batch, checked, strict=True)) <= 1e-12
    assert sum(score > 0.5 for score in batch) > 0  # the model and the rules take part, not only the zero floor
    assert score_trace([], model) == []


# ---- evaluate --------------------------------------------------------------------------------------------------


def test_evaluate_reports_every_metric_in_range_and_stops_the_destructive_attack(
    train_trace: Path, labelled_trace: Path
) -> None:
    test = list(read_trace(labelled_trace))
    result = evaluate(test, list(read_trace(train_trace)))

    assert set(result) >= METRIC_KEYS
    assert result["actions"] == len(test) == 19
    assert result["harmful"] == 1 and result["labelled"] == 19
    for key in ("auroc", "tpr_at_fpr_1pct", "tpr_at_fpr_3pct", "benign_sessions_interrupted"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["attack_sessions"] == 1 and result["benign_sessions"] == 2
    assert result["attack_sessions_stopped"] == 1.0
    assert result["benign_sessions_interrupted"] == 0.0  # the routine of the training days passes
    assert result["by_attack"] == {"sabotage": {"actions": 1, "denied": 1.0}}
    assert result["auroc"] > 0.5  # the DROP outranks the routine
    assert "evaluation" in result["model_version"]


def test_evaluate_of_a_trace_without_harm_leaves_detection_rates_empty(train_trace: Path, tmp_path: Path) -> None:
    calm = write_trace(tmp_path / "calm.jsonl", benign_lines({"analyst": 5}, start=START + timedelta(days=2)))
    result = evaluate(list(read_trace(calm)), list(read_trace(train_trace)))
    assert result["auroc"] is None and result["tpr_at_fpr_1pct"] is None and result["tpr_at_fpr_3pct"] is None
    assert result["attack_sessions"] == 0 and result["attack_sessions_stopped"] is None
    assert result["by_attack"] == {}


def send_to_partner(at: datetime, session: str) -> dict[str, Any]:
    return {
        "ts": at.isoformat(),
        "agent_id": "analyst",
        "session_id": session,
        "action_type": "network_request",
        "resource": "mail.send/reports@partner.example",
        "payload": {"tool": "send_email", "args": {"recipients": ["reports@partner.example"]}},
        "label": 0,
    }


def test_replay_learns_the_whole_benign_history_even_what_its_policy_would_flag(tmp_path: Path) -> None:
    """A mature agent's first email to a partner would be paused under the policy (a new destination). As
    history it is benign, so it is learned, and the same email in the test trace passes."""
    lines = benign_lines({"analyst": 30})
    last = datetime.fromisoformat(lines[-1]["ts"])
    history = [*lines, send_to_partner(last + timedelta(minutes=3), "s-analyst-3")]
    test = [send_to_partner(last + timedelta(days=1), "s-later")]
    policy = {"max_risk_score": 0.5, "mode": "pause"}
    fresh = {**send_to_partner(last + timedelta(minutes=6), "s-analyst-3"), "resource": "mail.send/x@new.example"}
    fresh["payload"] = {"tool": "send_email", "args": {"recipients": ["x@new.example"]}}

    (again,), _ = replay(list(read_trace(write_trace(tmp_path / "test.jsonl", test))),
                         list(read_trace(write_trace(tmp_path / "train.jsonl", history))), policy=policy)  # fmt: skip
    (novel,), _ = replay(list(read_trace(write_trace(tmp_path / "novel.jsonl", [fresh]))),
                         list(read_trace(tmp_path / "train.jsonl")), policy=policy)  # fmt: skip

    assert again.allowed and again.risk_score < 0.5
    assert not novel.allowed and novel.risk_score > 0.5  # what the policy flags, when it is new


def test_evaluate_reads_a_policy_as_a_policy_file_is_read(
    tmp_path: Path, train_trace: Path, labelled_trace: Path
) -> None:
    """A policy file that `risk check` accepts (`model: null`, `online: false`) crashed the replay with a TypeError,
    and an unknown field with another; the evaluation's own model and online setting now take their place, and an
    unknown field is a PolicyError naming it."""
    train, test = list(read_trace(train_trace)), list(read_trace(labelled_trace))
    as_given = evaluate(test, train)
    assert evaluate(test, train, policy={"model": None, "online": True, "mode": "pause"}) == as_given
    with pytest.raises(PolicyError, match=r"unknown field.*bogus"):
        evaluate(test, train, policy={"bogus": 1})


def test_a_session_stopped_stays_stopped_when_its_agents_sessions_interleave(tmp_path: Path, train_trace: Path) -> None:
    """Each switch of session revived the agent: an action of another session in between lifted the pause, and the
    stopped session's harmful action ran and counted as not stopped."""
    later = START + timedelta(days=1)
    drop = {**routine("analyst", "s-x", later, 0), "payload": {"sql": "DROP TABLE claims"}, "label": 0}
    harm = {**routine("analyst", "s-x", later + timedelta(minutes=2), 1), "label": 1}
    between = {**routine("analyst", "s-b", later + timedelta(minutes=1), 2), "label": 0}
    train = list(read_trace(train_trace))
    for lines in ([drop, harm, between], [drop, between, harm]):
        test = list(read_trace(write_trace(tmp_path / "test.jsonl", lines)))
        replayed = replay(test, train)[0]
        by_session = {(r.action.session_id, r.action.label): r.allowed for r in replayed}
        assert by_session == {("s-x", 0): False, ("s-x", 1): False, ("s-b", 0): True}
        assert metrics(replayed)["attack_sessions_stopped"] == 1.0  # an action denied unchecked has no score
        assert evaluate(test, train)["attack_sessions_stopped"] == 1.0


def test_history_from_an_audit_trail_holds_the_outcomes_its_tools_reported(tmp_path: Path, train_trace: Path) -> None:
    """Replayed from a trail, every action was a success that touched nothing: the error rate and the data volume
    were constant, and a model trained from the trail could not see either. With payloads kept, the trail's
    history gives the trace's feature rows."""
    trace = list(read_trace(train_trace))
    clock = {"now": 0.0}
    guard = Guard(audit=f"sqlite:///{tmp_path}/audit.db", home=tmp_path, model=None, online=False, keep_payloads=True,
                  clock=lambda: clock["now"])  # fmt: skip
    for a in trace:
        clock["now"] = a.ts
        decision = guard.check(a.action_type, a.resource, a.payload, agent_id=a.agent_id, session_id=a.session_id)
        success, rows, size = a.outcome()
        guard.record_outcome(decision.action_id, success=success, rows=rows, bytes=size, error=None if success else "x")
    guard.close()
    from_trail = history(f"sqlite:///{tmp_path}/audit.db")
    assert [a.outcome() for a in from_trail] == [a.outcome() for a in trace]
    assert np.array_equal(training_rows(from_trail).X, training_rows(trace).X)


# ---- the CLI ---------------------------------------------------------------------------------------------------


def test_cli_evaluate_json_prints_one_json_object(train_trace: Path, labelled_trace: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(labelled_trace), "--train", str(train_trace), "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert set(metrics) >= METRIC_KEYS
    assert metrics["attack_sessions_stopped"] == 1.0


def test_cli_evaluate_names_the_bad_line_of_a_broken_trace(tmp_path: Path, train_trace: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"ts": "2026-03-02T09:00:00"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["evaluate", str(broken), "--train", str(train_trace), "--json"])
    assert result.exit_code == 2
    assert "broken.jsonl:1" in result.output and "missing" in result.output


def test_cli_train_writes_the_artifact_and_card(tmp_path: Path, train_trace: Path) -> None:
    out = tmp_path / "models"
    result = CliRunner().invoke(app, ["train", str(train_trace), "--out", str(out), "--name", "cli", "--version", "4"])
    assert result.exit_code == 0, result.output
    assert (out / "cli-4.joblib").is_file()
    card = json.loads((out / "cli-4.json").read_text())
    assert card["training"]["benign_actions"] == 65 and card["training"]["agents"] == 2
    assert card["metrics"] == {}  # nothing was evaluated
    assert load_model(out / "cli-4.joblib").model_version == "cli-4"


def test_cli_train_with_evaluate_puts_the_models_metrics_on_that_trace_in_its_card(
    tmp_path: Path, train_trace: Path, labelled_trace: Path
) -> None:
    out = tmp_path / "models"
    args = ["train", str(train_trace), "--out", str(out), "--name", "cli", "--evaluate", str(labelled_trace)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "cli-1.json").read_text())["metrics"]
    assert metrics["evaluated_on"] == str(labelled_trace) and metrics["policy"] == DEFAULT_EVALUATION_POLICY
    expected = evaluate(list(read_trace(labelled_trace)), list(read_trace(train_trace)),
                        model=load_model(out / "cli-1.joblib"))  # fmt: skip
    assert expected["model_version"] == "rules-1+cli-1" and expected["auroc"] is not None
    assert {k: metrics[k] for k in expected} == json.loads(json.dumps(expected))


def test_cli_train_on_a_history_without_two_benign_actions_says_so(tmp_path: Path) -> None:
    lines = benign_lines({"analyst": 2})
    lines[1]["label"] = 1
    trace = write_trace(tmp_path / "short.jsonl", lines)
    result = CliRunner().invoke(app, ["train", str(trace), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0
    assert "1 benign action(s) to learn from; training needs at least 2" in result.output
    assert not (tmp_path / "m").exists()


def test_cli_train_on_a_missing_trace_fails_with_a_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "cannot read trace" in result.output
    assert not (tmp_path / "m").exists()


def _good_lines(n: int) -> bytes:
    line = {"agent_id": "a", "action_type": "file_read", "resource": "/r/q.csv"}
    return "".join(
        json.dumps({"ts": (START + timedelta(seconds=i)).isoformat(), **line}) + "\n" for i in range(n)
    ).encode()


def _bad(**fields: Any) -> bytes:
    return json.dumps(
        {"ts": "2026-03-02T10:00:00", "agent_id": "a", "action_type": "file_read", "resource": "x", **fields}
    ).encode()


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (b'{"ts": "2026-03-02T10:00:00", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (_bad(outcome={"rows": 10**400}), "outcome rows must be between 0 and"),
        (_bad(outcome={"bytes": -1}), "outcome bytes must be between 0 and"),
        (_bad(agent_id="caf\xe9").replace(b"\\u00e9", b"\xe9"), "not UTF-8"),
        (_bad(ts="0001-01-01T00:00:00+01:00"), "out of range"),
        (_bad(ts="9999-12-31T23:59:59-01:00"), "out of range"),
        (_bad(resource=""), "resource must be non-empty and at most"),
        (_bad(resource=" "), "resource must be non-empty and at most"),
        (_bad(resource="x" * 5000), "resource must be non-empty and at most"),
    ],
    ids=["deep-nesting", "huge-rows", "negative-bytes", "not-utf8", "year-0", "year-10000", "empty", "blank", "long"],
)
def test_cli_train_and_evaluate_name_the_file_and_line_of_a_bad_trace(
    tmp_path: Path, bad_line: bytes, message: str
) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_bytes(_good_lines(4) + bad_line + b"\n")
    for args in (["train", str(trace), "--out", str(tmp_path / "m")], ["evaluate", str(trace), "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args, repr(result.exception))
        shown = " ".join(result.output.split())
        assert f"{trace}:5" in result.output.replace("\n", "") and message in shown, (args, result.output)


def test_cli_train_into_a_file_instead_of_a_folder_fails_with_a_message(tmp_path: Path, train_trace: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(app, ["train", str(train_trace), "--out", str(tmp_path / "afile")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "cannot write the model to" in " ".join(result.output.split())


def test_cli_evaluate_refuses_an_empty_train_file(tmp_path: Path, labelled_trace: Path) -> None:
    empty = tmp_path / "train.jsonl"
    empty.write_text("\n")
    result = CliRunner().invoke(app, ["evaluate", str(labelled_trace), "--train", str(empty), "--json"])
    assert result.exit_code == 2
    assert "holds no actions to train on" in " ".join(result.output.split())
    assert result.stdout.strip() == ""
