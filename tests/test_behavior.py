"""Behavioral scoring through its public API: traces, features, calibration, the batch model, the scorer
and the Guard's use of them. Every file lives in tmp_path; every clock is moved by hand."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from risk import ActionDenied, ActionType, Guard
from risk.audit.store import AuditQuery, open_audit
from risk.catalog import Catalog
from risk.features import (
    _BARE_HOST,
    _ENDS_IN_TLD,
    FEATURES,
    FEATURES_VERSION,
    MAX_DESTINATION_CHARS,
    MIN_AMOUNTS,
    MODEL_FEATURES,
    N_FEATURES,
    amounts,
    destinations,
    feature_vector,
    named_destinations,
    resource_prefix,
)
from risk.profiles import AgentProfile, Probe, profile_core, profile_from_core
from risk.scoring.behavior import HABIT_DISCOUNT, BehaviorScorer, habituated, novelty
from risk.scoring.calibration import StreamingTailCalibrator, TailCalibrator, severity_from_tail
from risk.scoring.model import (
    SHIPPED_MODELS,
    BehaviorModel,
    ModelError,
    fit_model,
    load_model,
    resolve_model,
    save_model,
)
from risk.scoring.rules import RuleScorer
from risk.state import MemoryState
from risk.tenants import Tenants
from risk.traces import TraceError, read_trace

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a whole hour
HOUR = 3600.0
BEHAVIOR_CODES = {"new_destination", "denied_destination", "new_action_type", "new_prefix"}
BEHAVIOR_CODES |= {"behavior_model", "behavior_online", "model_unavailable"}


def write_lines(path: Path, lines: list[str | dict[str, Any]]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def line(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts": "2026-03-02T09:06:05+00:00",
        "agent_id": "assistant",
        "session_id": "s-17",
        "action_type": "network_request",
        "resource": "mail.send/alice@example.com",
        "payload": {"tool": "send_email", "args": {"recipients": ["alice@example.com"]}},
        "label": 0,
    }
    base.update(overrides)
    return base


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# ---- traces -------------------------------------------------------------------------------------------------


def test_read_trace_parses_lines_keeps_extra_keys_and_skips_blank_lines(tmp_path: Path) -> None:
    trace = write_lines(
        tmp_path / "t.jsonl",
        [line(), "", line(session_id=None, label=1, attack="exfiltration", outcome={"status": "success"})],
    )
    first, second = read_trace(trace)
    assert first.ts == datetime(2026, 3, 2, 9, 6, 5, tzinfo=UTC).timestamp()
    assert (first.agent_id, first.session_id, first.action_type) == ("assistant", "s-17", ActionType.NETWORK_REQUEST)
    assert first.resource == "mail.send/alice@example.com"
    assert first.payload == {"tool": "send_email", "args": {"recipients": ["alice@example.com"]}}
    assert first.label == 0 and first.extra == {}
    assert second.session_id is None and second.label == 1
    assert second.extra == {"attack": "exfiltration", "outcome": {"status": "success"}}


def test_read_trace_reads_timestamps_without_a_zone_as_utc_and_honours_offsets(tmp_path: Path) -> None:
    trace = write_lines(
        tmp_path / "t.jsonl",
        [line(ts="2026-03-02T09:06:05"), line(ts="2026-03-02T11:06:05+02:00"), line(ts="2026-03-02T09:06:05Z")],
    )
    expected = datetime(2026, 3, 2, 9, 6, 5, tzinfo=UTC).timestamp()
    assert [a.ts for a in read_trace(trace)] == [expected, expected, expected]


def test_read_trace_reads_the_task_and_refuses_one_that_is_not_a_string(tmp_path: Path) -> None:
    (action,) = read_trace(write_lines(tmp_path / "t.jsonl", [line(task="Pay the rent")]))
    assert action.task == "Pay the rent" and "task" not in action.extra
    with pytest.raises(TraceError, match=r"t2\.jsonl:1: task must be a string"):
        list(read_trace(write_lines(tmp_path / "t2.jsonl", [line(task=["Pay"])])))
    with pytest.raises(TraceError, match=r"t3\.jsonl:1: task is 32769 characters long; the limit is 32768"):
        list(read_trace(write_lines(tmp_path / "t3.jsonl", [line(task="x" * 32_769)])))


def test_read_trace_without_label_leaves_it_none_and_numbers_session_ids_become_strings(tmp_path: Path) -> None:
    raw = line(session_id=7)
    del raw["label"]
    (action,) = read_trace(write_lines(tmp_path / "t.jsonl", [raw]))
    assert action.label is None and action.session_id == "7"


def nested_lists(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("bad", "mentions"),
    [
        ('{"ts": "2026-03-02T09:06:05", "agent_id": ', "not JSON"),
        (json.dumps({k: v for k, v in line().items() if k not in ("agent_id", "resource")}), "agent_id, resource"),
        (json.dumps(line(action_type="teleport")), "unknown action type 'teleport'"),
        (json.dumps(line(label=2)), "label must be 0, 1 or absent"),
        (json.dumps(line(ts="yesterday")), "yesterday"),
        ("[1, 2]", "JSON object"),
        (json.dumps(line())[:-1] + ', "payload": ' + "9" * 5000 + "}", "4300 digits"),
        (json.dumps(line(payload=nested_lists(65))), "nested more than 64 levels"),
        (json.dumps(line(payload=nested_lists(600))), "nested more than 64 levels"),  # `risk train` recursed on it
        (json.dumps(line(resource="\ufdfa" * 300)), "once normalized (NFKC)"),  # 18 characters each, normalized
    ],
    ids=[
        "invalid-json",
        "missing-keys",
        "unknown-action-type",
        "label-2",
        "bad-timestamp",
        "not-an-object",
        "huge-integer",
        "too-deep",
        "far-too-deep",
        "too-long-normalized",
    ],
)
def test_read_trace_names_file_and_line_of_a_bad_line(tmp_path: Path, bad: str, mentions: str) -> None:
    trace = write_lines(tmp_path / "t.jsonl", [line(), bad, line()])
    with pytest.raises(TraceError) as caught:
        list(read_trace(trace))
    message = str(caught.value)
    assert message.startswith(f"{trace}:2: ")
    assert mentions in message


def test_read_trace_of_a_missing_file_raises_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace"):
        list(read_trace(tmp_path / "absent.jsonl"))


def test_trace_action_outcome_reads_status_rows_and_bytes(tmp_path: Path) -> None:
    trace = write_lines(
        tmp_path / "t.jsonl",
        [
            line(outcome={"status": "error", "rows": 5}),
            line(outcome={"status": "success", "bytes": 2048, "rows": "many"}),
            line(),
        ],
    )
    failed, succeeded, unreported = read_trace(trace)
    assert failed.outcome() == (False, 5, None)
    assert succeeded.outcome() == (True, None, 2048)
    assert unreported.outcome() == (True, None, None)


# ---- features -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "prefix"),
    [
        ("/reports/readonly/q3.csv", "/reports/readonly"),
        ("data.deidentified.claims", "data.deidentified"),
        ("mail.send/alice@example.com", "mail.send"),
        ("bank.transfer/DE89370400440532013000", "bank.transfer"),
        ("/etc", "/etc"),
        ("standalone", "standalone"),
    ],
)
def test_resource_prefix_is_the_folder_schema_or_service(resource: str, prefix: str) -> None:
    assert resource_prefix(resource) == prefix


@pytest.mark.parametrize(
    "url", ["https://EVIL.example./upload", "https://www.evil.example/upload", "http://evil.example"]
)
def test_a_host_is_one_destination_however_it_is_written(url: str) -> None:
    """The DNS root's trailing dot made another destination of a denied host: new, but no longer denied."""
    assert destinations("web.post", {"url": url})[0] == ("host:evil.example",)


def test_destinations_of_an_email_resource_are_the_address_and_its_domain() -> None:
    primary, every = destinations("mail.send/Alice@Example.com", {"subject": "hi"})
    assert primary == ("email:alice@example.com", "domain:example.com")
    assert every == primary


def test_destinations_from_the_payload_body_count_only_in_every() -> None:
    body = "see https://www.evil.example/x and www.phish.com or mail bob@corp.example"
    primary, every = destinations("mail.send/a@x.example", {"body": body})
    assert primary == ("email:a@x.example", "domain:x.example")
    assert set(every) - set(primary) == {
        "host:evil.example",
        "host:phish.com",
        "email:bob@corp.example",
        "domain:corp.example",
    }


def test_destinations_find_ibans_in_resource_and_payload() -> None:
    primary, every = destinations("bank.transfer/DE89370400440532013000", {"memo": "also CH9300762011623852957"})
    assert primary == ("iban:DE89370400440532013000",)
    assert "iban:CH9300762011623852957" in every
    assert "iban:CH9300762011623852957" not in primary


def test_destinations_take_recipient_arguments_as_primary() -> None:
    payload = {"tool": "send", "args": {"recipients": ["Bob@Corp.com", "carol"], "channel": "#ops", "flag": True}}
    primary, every = destinations("chat.post", payload)
    assert {"recipient:carol", "recipient:#ops"} <= set(primary)
    assert "recipient:true" not in primary and not any("flag" in d for d in primary)
    assert {"email:bob@corp.com", "domain:corp.com"} <= set(every)
    assert set(primary) <= set(every)


_ENDINGS = ["com", "org", "io", "co", "uk", "me", "COM", "comm", "community", "orgs", "c", "claims", ""]
_PIECE = st.one_of(st.text(alphabet="abcmow-@/. :", max_size=6), st.sampled_from(_ENDINGS))


@given(st.lists(_PIECE, max_size=8).map(".".join))
def test_the_tld_gate_never_hides_a_bare_host(text: str) -> None:
    """Bare hosts are only searched for in text the cheap gate lets through: it must let through every one."""
    if _BARE_HOST.search(text):
        assert _ENDS_IN_TLD.search(text)


def test_destinations_of_a_plain_read_are_empty() -> None:
    assert destinations("/reports/readonly/q3.csv", {"tool": "read_file", "args": {}}) == ((), ())


def vector(
    profile: AgentProfile,
    ts: float,
    action_type: ActionType | str,
    resource: str,
    payload: Any = None,
) -> dict[str, float]:
    """The named features of one action against `profile`, computed as the scorer does."""
    atype = ActionType.parse(action_type)
    _, reasons = RuleScorer().score(atype, resource, payload)
    x = feature_vector(
        profile,
        ts=ts,
        action_type=atype,
        resource=resource,
        prefix=resource_prefix(resource),
        dests=destinations(resource, payload)[1],
        rule_reasons=reasons,
        payload_bytes=len(json.dumps(payload)),
    )
    assert len(x) == N_FEATURES == len(FEATURES)
    assert all(isinstance(v, float) for v in x)
    return dict(zip(FEATURES, x, strict=True))


def record(profile: AgentProfile, ts: float, action_type: str, resource: str, payload: Any = None) -> None:
    profile.record_action(
        ts, action_type, resource, resource_prefix(resource), destinations(resource, payload)[1]
    )  # fmt: skip


def test_feature_vector_returns_one_float_per_feature_for_fresh_and_used_profiles() -> None:
    profile = AgentProfile("a")
    vector(profile, T0, "database_query", "data.claims", {"sql": "SELECT 1"})
    for i in range(30):
        record(profile, T0 + 60 * i, "database_query", "data.claims")
    profile.record_outcome(T0 + 1800, error=True, volume=12.0)
    profile.record_decision(True)
    x = vector(profile, T0 + 1900, "file_write", "/tmp/out.csv", {"content": "x" * 100})
    assert all(np.isfinite(list(x.values())))


def test_an_action_timed_before_the_profiles_latest_gets_finite_features() -> None:
    # Workers sharing a profile with clocks seconds apart, or a trace out of order: the model must still score.
    profile = AgentProfile("a")
    for i in range(30):
        record(profile, T0 + 60 * i, "database_query", "data.claims")
    for earlier in (T0 + 60 * 29 - 5, T0 - HOUR):
        x = vector(profile, earlier, "database_query", "data.claims")
        assert all(np.isfinite(list(x.values())))
        assert x["inter_arrival"] == 0.0


@pytest.mark.parametrize(
    ("feature", "first", "again", "other"),
    [
        (
            "new_action_type",
            ("file_write", "/out/a.csv", None),
            ("file_write", "/elsewhere/b.csv", None),
            ("file_delete", "/out/a.csv", None),
        ),
        (
            "new_resource",
            ("file_read", "/reports/q3.csv", None),
            ("file_write", "/reports/q3.csv", None),
            ("file_read", "/reports/q4.csv", None),
        ),
        (
            "new_prefix",
            ("database_query", "data.claims", None),
            ("database_query", "data.providers", None),
            ("database_query", "finance.ledger", None),
        ),
        (
            "new_destination",
            ("network_request", "mail.send/alice@example.com", None),
            ("api_call", "crm.notify", {"args": {"body": "cc alice@example.com"}}),
            ("network_request", "mail.send/mallory@evil.example", None),
        ),
    ],
)
def test_a_first_time_thing_is_new_until_the_profile_records_it(
    feature: str, first: tuple[str, str, Any], again: tuple[str, str, Any], other: tuple[str, str, Any]
) -> None:
    profile = AgentProfile("a")
    assert vector(profile, T0, *first)[feature] == 1.0
    record(profile, T0, *first)
    assert vector(profile, T0 + 60, *first)[feature] == 0.0
    assert vector(profile, T0 + 60, *again)[feature] == 0.0  # the same thing reached another way
    assert vector(profile, T0 + 60, *other)[feature] == 1.0  # something else is still new


def test_a_folder_the_agent_touched_as_a_resource_is_no_new_prefix() -> None:
    """An agent that listed a channel's members, then adds a user to it: the channel is no new folder to it
    (in AgentDojo's slack suite a benign session paused on that, every time)."""
    profile = AgentProfile("a")
    record(profile, T0, "database_query", "slack.channel_member/general")
    assert vector(profile, T0 + 60, "permission_change", "slack.channel_member/general/Dora")["new_prefix"] == 0.0
    assert vector(profile, T0 + 60, "permission_change", "slack.channel_member/private/Dora")["new_prefix"] == 1.0


def test_hour_rarity_is_zero_at_the_busiest_hour_and_highest_at_an_unseen_hour() -> None:
    profile = AgentProfile("a")
    for day in range(5):
        record(profile, T0 + day * 24 * HOUR + 60, "file_read", "/r/x")  # 08:01 UTC every day
    record(profile, T0 + 6 * HOUR, "file_read", "/r/x")  # once at 14:00
    rarity = {h: vector(profile, T0 + 10 * 24 * HOUR + h * HOUR, "file_read", "/r/x")["hour_rarity"] for h in (6, 16)}
    busiest = vector(profile, T0 + 10 * 24 * HOUR, "file_read", "/r/x")["hour_rarity"]
    assert busiest == 0.0
    assert 0.0 < rarity[6] < rarity[16] < 1.0  # 14:00 seen once, 00:00 never seen


def test_rate_1m_rises_through_a_burst() -> None:
    profile = AgentProfile("a")
    for i in range(30):
        record(profile, T0 + 60 * i, "file_read", "/r/x")  # one action a minute
    burst_start = T0 + 45 * 60
    usual = vector(profile, burst_start, "file_read", "/r/x")["rate_1m"]
    rates = []
    for k in range(12):
        rates.append(vector(profile, burst_start + k, "file_read", "/r/x")["rate_1m"])
        record(profile, burst_start + k, "file_read", "/r/x")
    assert rates[0] == usual
    assert all(a < b for a, b in itertools.pairwise(rates))
    assert rates[-1] > usual + 1.5  # 12 in a minute against 1 a minute is far from normal


@given(
    st.lists(st.tuples(st.integers(1, 5), st.integers(1, 9)), max_size=80),
    st.integers(-3, 70),
    st.floats(0, 59.999),
)
def test_counts_since_equal_a_sum_over_each_window(steps: list[tuple[int, int]], later: int, second: float) -> None:
    profile, minute = AgentProfile("a"), 1000
    for gap, count in steps:
        minute += gap
        profile.minutes.append([minute, count])
    ts = (minute + later) * 60 + second  # up to 3 minutes before the last one: a clock that ran backwards
    windows = (60.0, 600.0, 3600.0)

    def by_sum(seconds: float) -> int:
        first = int((ts - seconds) // 60) + 1
        return sum(count for m, count in profile.minutes if m >= first)

    assert profile.counts_since(ts, windows) == [by_sum(seconds) for seconds in windows]


def test_denied_destination_is_set_only_for_blamed_destinations() -> None:
    profile = AgentProfile("a")
    profile.record_decision(True)  # a denial that blames nothing
    assert vector(profile, T0, "network_request", "mail.send/eve@evil.example")["denied_destination"] == 0.0
    profile.record_decision(True, ("email:eve@evil.example",))
    assert vector(profile, T0, "network_request", "mail.send/eve@evil.example")["denied_destination"] == 1.0
    # It is in any destination of the action, not only the primary ones.
    body = {"args": {"body": "forward to eve@evil.example"}}
    assert vector(profile, T0, "api_call", "crm.notify", body)["denied_destination"] == 1.0
    assert vector(profile, T0, "network_request", "mail.send/bob@corp.example")["denied_destination"] == 0.0


def test_a_suspect_destination_is_cleared_by_an_approval_only_not_by_being_learned() -> None:
    """Two tool calls at once to a new address: one blocked (blaming it), the other run, learned from the profile as
    it was before the blame. Known and suspect, it must stay suspect until a reviewer clears it."""
    profile = AgentProfile("a")
    eve = destinations("mail.send/eve@evil.example", None)[1]
    profile.record_decision(True, eve)
    record(profile, T0, "network_request", "mail.send/eve@evil.example")  # the racing call that ran
    assert vector(profile, T0 + 60, "network_request", "mail.send/eve@evil.example")["denied_destination"] == 1.0
    profile.record_decision(False, (), eve)  # a reviewer approved an action going there
    assert vector(profile, T0 + 120, "network_request", "mail.send/eve@evil.example")["denied_destination"] == 0.0


# ---- calibration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "severity"), [(0.01, 0.5), (0.001, 1.0), (1e-6, 1.0), (0.0, 1.0)])
def test_severity_from_tail_is_half_at_the_1pct_tail_and_full_from_the_0_1pct_tail(p: float, severity: float) -> None:
    assert severity_from_tail(p) == pytest.approx(severity)


@pytest.mark.parametrize("p", [1.0, 0.5, 0.2, 0.1])
def test_severity_from_tail_is_about_zero_for_tails_a_tenth_of_benign_actions_reach(p: float) -> None:
    # At most 0.01 (a tie-break that keeps rankings informative), far below any threshold.
    assert 0.0 <= severity_from_tail(p) <= 0.01
    assert severity_from_tail(1.0) == 0.0


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_severity_from_tail_is_in_unit_range_and_non_increasing_in_p(p: float, q: float) -> None:
    low, high = sorted((p, q))
    assert 0.0 <= severity_from_tail(high) <= severity_from_tail(low) <= 1.0


def test_tail_calibrator_gives_the_share_of_benign_scores_at_or_above() -> None:
    cal = TailCalibrator(float(s) for s in reversed(range(100)))  # 0..99, unsorted input
    assert cal.tail(-5.0) == 1.0
    assert cal.tail(50.0) == 0.5
    assert cal.tail(99.0) == 0.01
    assert cal.tail(1000.0) == 1 / 101  # beyond every sample: small, never zero
    assert cal.severity(99.0) == pytest.approx(0.5)
    assert cal.severity(50.0) < 0.01


def test_tail_calibrator_needs_a_sample() -> None:
    with pytest.raises(ValueError, match="at least one"):
        TailCalibrator([])


def test_streaming_calibrator_reports_severity_zero_until_min_count() -> None:
    cal = StreamingTailCalibrator(size=100, min_count=3)
    cal.add(1.0)
    cal.add(2.0)
    assert cal.tail(50.0) == 1.0 and cal.severity(50.0) == 0.0
    cal.add(3.0)
    assert cal.tail(50.0) == 0.25
    assert cal.tail(2.0) == pytest.approx(2 / 3)


def test_streaming_calibrator_keeps_only_the_most_recent_size_scores() -> None:
    cal = StreamingTailCalibrator(size=5, min_count=1)
    for _ in range(5):
        cal.add(100.0)
    for _ in range(5):
        cal.add(0.0)  # pushes every 100 out
    assert cal.tail(50.0) == 1 / 6  # none of the 5 kept scores reaches 50
    assert cal.tail(0.0) == 1.0
    for s in (1.0, 2.0, 3.0):
        cal.add(s)  # window: 0, 0, 1, 2, 3
    assert cal.tail(1.0) == pytest.approx(3 / 5)
    assert cal.tail(0.5) == pytest.approx(3 / 5)


# ---- the batch model ----------------------------------------------------------------------------------------

WIDTH = len(MODEL_FEATURES)


def benign_rows(n: int = 400, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, size=(n, WIDTH))


def small_model(name: str = "t", version: str = "1", width: int = WIDTH) -> BehaviorModel:
    features = MODEL_FEATURES[:width]
    return fit_model(benign_rows()[:, :width], features, name=name, version=version, n_estimators=25)


def test_fit_model_severity_is_in_unit_range_and_higher_far_from_the_data() -> None:
    model = small_model()
    rng = np.random.default_rng(1)
    severities = [model.severity(row) for row in rng.normal(0.0, 1.0, size=(50, WIDTH))]
    assert all(0.0 <= s <= 1.0 for s in severities)
    typical, far = model.severity(np.zeros(WIDTH)), model.severity(np.full(WIDTH, 25.0))
    assert far >= typical
    assert far > 0.0
    assert model.raw_score(np.full(WIDTH, 25.0)) > model.raw_score(np.zeros(WIDTH))
    assert model.features == MODEL_FEATURES and model.model_version == "t-1"


def test_fit_model_rejects_rows_of_the_wrong_width_or_too_few_rows() -> None:
    with pytest.raises(ValueError, match="features"):
        fit_model(benign_rows()[:, :-1], MODEL_FEATURES)
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit_model(benign_rows(1), MODEL_FEATURES)


def test_explain_names_the_rare_features_of_an_unusual_row() -> None:
    model = small_model()
    x = np.zeros(WIDTH)
    x[3] = 40.0
    (name, value, share), *_ = model.explain(x)
    assert (name, value, share) == (MODEL_FEATURES[3], 40.0, 0.0)
    assert model.explain(np.full(WIDTH, -40.0)) == []


def test_save_model_writes_artifact_and_card_with_its_sha256(tmp_path: Path) -> None:
    artifact = save_model(small_model("t", "3"), tmp_path / "models", {"metrics": {"auroc": 0.9}})
    assert artifact == tmp_path / "models" / "t-3.joblib"
    card = json.loads((tmp_path / "models" / "t-3.json").read_text())
    assert card["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert (card["name"], card["version"], card["artifact"]) == ("t", "3", "t-3.joblib")
    assert card["features"] == list(MODEL_FEATURES)
    assert card["metrics"] == {"auroc": 0.9}
    assert {"python", "numpy", "scikit-learn", "joblib"} <= set(card["libraries"])


def test_load_model_round_trips_with_identical_severities(tmp_path: Path) -> None:
    model = small_model()
    artifact = save_model(model, tmp_path, {})
    loaded = load_model(artifact)
    assert loaded.model_version == model.model_version and loaded.features == model.features
    rows = [*benign_rows(20, seed=5), np.full(WIDTH, 9.0)]
    assert [loaded.severity(r) for r in rows] == [model.severity(r) for r in rows]
    assert [loaded.raw_score(r) for r in rows] == [model.raw_score(r) for r in rows]


def test_load_model_refuses_an_altered_artifact(tmp_path: Path) -> None:
    artifact = save_model(small_model(), tmp_path, {})
    with artifact.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(artifact)


def test_load_model_refuses_a_card_whose_sha256_was_edited(tmp_path: Path) -> None:
    artifact = save_model(small_model(), tmp_path, {})
    card_path = artifact.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(artifact)


def test_load_model_refuses_a_model_trained_on_features_that_meant_something_else(tmp_path: Path) -> None:
    """A model pickled before FEATURES_VERSION (so without it, as default-3 was) read the priors of a habit in full:
    scoring today's halved ones, it would misread every habitual action."""
    old = small_model("old", "1")
    del old.__dict__["features_version"]  # as an artifact pickled before the field: the class default, 1
    assert old.features_version == 1 != FEATURES_VERSION
    with pytest.raises(ModelError, match=r"trained on other features.*retrain it"):
        load_model(save_model(old, tmp_path, {}))
    with pytest.raises(ValueError, match="retrain it"):
        BehaviorScorer(old, None)
    assert load_model(save_model(small_model("new", "1"), tmp_path, {})).features_version == FEATURES_VERSION


def test_load_model_without_a_card_raises_model_error(tmp_path: Path) -> None:
    artifact = save_model(small_model(), tmp_path, {})
    artifact.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="model card"):
        load_model(artifact)


def test_resolve_model_picks_the_highest_version_from_risk_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "models"
    model = small_model()
    for version in ("2", "10", "9", "1.5"):
        model.version = version
        save_model(model, folder, {})
    monkeypatch.setenv("RISK_MODELS", str(folder))
    monkeypatch.chdir(tmp_path)
    assert resolve_model("t") == folder / "t-10.joblib"  # 10 > 9 > 2: numeric, not text, order
    assert load_model("t").version == "10"


def test_resolve_model_does_not_mistake_a_longer_name_for_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "models"
    save_model(small_model("t", "1"), folder, {})
    save_model(small_model("t-big", "1"), folder, {})
    monkeypatch.setenv("RISK_MODELS", str(folder))
    monkeypatch.chdir(tmp_path)
    assert resolve_model("t") == folder / "t-1.joblib"
    assert resolve_model("t-big") == folder / "t-big-1.joblib"


def test_resolve_model_does_not_return_another_model_whose_name_starts_with_the_requested_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_model(small_model("t-big", "1"), tmp_path, {})
    monkeypatch.setenv("RISK_MODELS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="no model named 't'"):
        resolve_model("t")


def test_resolve_model_of_an_unknown_name_raises_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_model(small_model("other", "1"), tmp_path, {})
    monkeypatch.setenv("RISK_MODELS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="no model named 'missing'"):
        resolve_model("missing")
    with pytest.raises(ModelError):
        load_model("missing")


# ---- the behavior scorer ------------------------------------------------------------------------------------

SIDE_EFFECTING = [t for t in ActionType if t not in (ActionType.FILE_READ, ActionType.DATABASE_QUERY)]


@pytest.mark.parametrize("action_type", SIDE_EFFECTING)
def test_novelty_rules_fire_for_side_effecting_actions(action_type: ActionType) -> None:
    x = [0.0] * N_FEATURES
    for name in ("new_destination", "denied_destination", "new_action_type", "new_prefix"):
        x[FEATURES.index(name)] = 1.0
    found = {r.code: r.weight for r in novelty(x, action_type)}
    assert found == {"new_destination": 0.6, "denied_destination": 0.7, "new_action_type": 0.3, "new_prefix": 0.2}
    assert novelty([0.0] * N_FEATURES, action_type) == []


@pytest.mark.parametrize("action_type", [ActionType.FILE_READ, ActionType.DATABASE_QUERY])
def test_novelty_rules_never_fire_for_reads(action_type: ActionType) -> None:
    assert novelty([1.0] * N_FEATURES, action_type) == []


def send_email(
    scorer: BehaviorScorer, ts: float, to: str, *, allowed: bool | None = True, blame: bool = False,
    approved: bool = False, body: str = "report", task: str | None = None, recipients: list[str] | None = None,
) -> Any:  # fmt: skip
    """Assess a send to `to` (or to `recipients`, on `mail.send/{to}`) and, unless allowed is None, tell the
    scorer what was decided."""
    args = {"recipients": recipients or [to], "body": body}
    resource, payload = f"mail.send/{to}", {"tool": "send_email", "args": args}
    atype = ActionType.NETWORK_REQUEST
    _, rules = RuleScorer().score(atype, resource, payload)
    assessment = scorer.assess(
        "mailer", ts=ts, action_type=atype, resource=resource, payload=payload, payload_bytes=60, rule_reasons=rules,
        task=task,
    )  # fmt: skip
    if allowed is not None:
        scorer.observe("mailer", f"id-{ts}", ts, atype, resource, assessment, allowed, blame=blame, approved=approved)
    return assessment


def codes(assessment: Any) -> set[str]:
    return {r.code for r in assessment.reasons}


def test_a_brand_new_agent_gets_no_behavioral_severity() -> None:
    scorer = BehaviorScorer(small_model(), None)
    first = send_email(scorer, T0, "mallory@evil.example", allowed=None)
    assert first.features[FEATURES.index("new_destination")] == 1.0  # novel, but not held against it
    assert first.severities == () and first.reasons == ()


def test_novelty_is_scaled_by_the_agents_maturity() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(5):
        send_email(scorer, T0 + 60 * i, "alice@corp.example")
    half = send_email(scorer, T0 + 600, "mallory@evil.example", allowed=None)
    weights = {r.code: r.weight for r in half.reasons}
    assert weights == {"new_destination": pytest.approx(0.3)}  # 0.6 at maturity 5/10


def denied_destinations(scorer: BehaviorScorer, agent: str) -> set[str]:
    return scorer.profiles.read(agent, Probe("", "", ()), lambda profile: set(profile.denied_destinations))


def test_a_mature_agents_first_send_to_a_new_destination_is_flagged() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        routine = send_email(scorer, T0 + 60 * i, "alice@corp.example")
    assert "new_destination" not in codes(routine) and not any(routine.severities)
    novel = send_email(scorer, T0 + 3600, "mallory@evil.example", allowed=None)
    assert "new_destination" in codes(novel)
    assert max(novel.severities) >= 0.5
    assert {"email:mallory@evil.example", "domain:evil.example"} <= set(novel.unseen_primary)


@pytest.mark.parametrize(
    "task, named",
    [
        ("Refund GB29NWBK60161331926819 for the dinner", {"iban:GB29NWBK60161331926819"}),
        ("Mail the report to Carol@Partner.example", {"email:carol@partner.example", "domain:partner.example"}),
        ("Share it with everyone at https://www.partner.example", {"host:partner.example"}),
        ("Send Bob the summary", {"recipient:bob"}),
        ("Send Bobby the summary", set()),  # a name is a whole word
        ("Pay GB29NWBK60161331926810 instead", set()),
        ("", set()),
    ],
)
def test_named_destinations_are_the_addresses_hosts_ibans_and_names_the_task_writes(task: str, named: set[str]) -> None:
    dests = ["iban:GB29NWBK60161331926819", "email:carol@partner.example", "domain:partner.example",
             "host:partner.example", "recipient:bob", "recipient:"]  # fmt: skip
    assert named_destinations(task, dests) == named


def test_a_destination_the_task_names_is_not_new_nor_blamed_but_others_in_the_action_still_are() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        send_email(scorer, T0 + 60 * i, "alice@corp.example")
    task = "Send the quarterly report to our new auditor, carol@partner.example."
    asked = send_email(scorer, T0 + 3600, "carol@partner.example", allowed=None, task=task)
    assert asked.features[FEATURES.index("new_destination")] == 0.0
    assert codes(asked) == {"named_by_task"} and not any(asked.severities) and asked.unseen_primary == ()
    assert "carol@partner.example" in next(r.message for r in asked.reasons)
    unasked = send_email(scorer, T0 + 3700, "mallory@evil.example", allowed=None, task=task)
    assert "new_destination" in codes(unasked)
    assert {"email:mallory@evil.example", "domain:evil.example"} <= set(unasked.unseen_primary)
    link = send_email(scorer, T0 + 3800, "carol@partner.example", allowed=None, task=task,
                      body="log in at https://evil.example/login")  # fmt: skip
    assert "new_destination" in codes(link)  # the host in the body is not the task's


def test_a_mature_agent_reading_something_new_gets_no_novelty_reason() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        send_email(scorer, T0 + 60 * i, "alice@corp.example")
    _, rules = RuleScorer().score(ActionType.FILE_READ, "/new/folder/file.txt", None)
    read = scorer.assess(
        "mailer", ts=T0 + 3600, action_type=ActionType.FILE_READ, resource="/new/folder/file.txt",
        payload=None, payload_bytes=4, rule_reasons=rules,
    )  # fmt: skip
    assert read.features[FEATURES.index("new_action_type")] == 1.0
    assert read.reasons == () and not any(read.severities)


def deploy(scorer: BehaviorScorer, ts: float, resource: str, *, allowed: bool | None = True,
           flagged: bool = False) -> Any:  # fmt: skip
    """Assess a kubectl run on `resource` and, unless allowed is None, tell the scorer what was decided."""
    atype, payload = ActionType.PROCESS_SPAWN, {"cmd": "kubectl rollout restart deploy/api"}
    _, rules = RuleScorer().score(atype, resource, payload)
    assessment = scorer.assess(
        "devops", ts=ts, action_type=atype, resource=resource, payload=payload, payload_bytes=40, rule_reasons=rules
    )
    if allowed is not None:
        scorer.observe("devops", f"id-{ts}", ts, atype, resource, assessment, allowed, flagged=flagged)
    return assessment


def test_an_action_type_the_agent_ran_unflagged_on_the_same_resource_is_a_habit_whose_priors_count_half() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        deploy(scorer, T0 + 60 * i, "k8s/staging/deployments")
    first = deploy(scorer, T0 + 900, "k8s/prod/deployments")  # run unflagged: a habit from now on
    again = deploy(scorer, T0 + 960, "k8s/prod/deployments", allowed=None)
    assert first.prior_discount == 0.0 and "habitual" not in codes(first)
    assert again.prior_discount == HABIT_DISCOUNT
    priors = [FEATURES.index("action_type_severity"), FEATURES.index("resource_severity")]
    assert [first.features[i] for i in priors] == [0.35, 0.35]  # process_spawn, production
    assert [again.features[i] for i in priors] == [0.175, 0.175]  # the models see them as the score counts them
    habit = next(r for r in again.reasons if r.code == "habitual")
    assert habit.weight == 0.0 and "process_spawn" in habit.message and "count 50%" in habit.message
    score, rules = RuleScorer().score(ActionType.PROCESS_SPAWN, "k8s/prod/deployments", {})
    assert score > 0.5 > habituated(score, rules, again.prior_discount)  # 0.58 (type and production) to 0.32


def test_a_habit_is_one_action_type_on_one_resource_and_only_what_ran_unflagged() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        deploy(scorer, T0 + 60 * i, "k8s/staging/deployments")
    deploy(scorer, T0 + 900, "k8s/prod/pods", flagged=True)  # alerted and run
    deploy(scorer, T0 + 960, "k8s/prod/configmaps", allowed=False)  # denied
    for resource in ("k8s/prod/pods", "k8s/prod/configmaps", "k8s/prod/statefulsets"):
        assert deploy(scorer, T0 + 1000, resource, allowed=None).prior_discount == 0.0
    _, rules = RuleScorer().score(ActionType.FILE_DELETE, "k8s/staging/deployments", None)
    delete = scorer.assess(
        "devops", ts=T0 + 1000, action_type=ActionType.FILE_DELETE, resource="k8s/staging/deployments",
        payload=None, payload_bytes=4, rule_reasons=rules,
    )  # fmt: skip
    assert delete.prior_discount == 0.0  # its resource is familiar, not this action on it


def test_a_habit_counts_with_the_agents_maturity_and_payload_rules_are_never_discounted() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(4):  # maturity 4/10, then 5/10 once the last one is in
        deploy(scorer, T0 + 60 * i, "k8s/prod/deployments")
    assert deploy(scorer, T0 + 600, "k8s/prod/deployments", allowed=None).prior_discount == pytest.approx(0.2)
    _, rules = RuleScorer().score(ActionType.PROCESS_SPAWN, "k8s/prod/deployments", {"cmd": "rm -rf /srv/backups"})
    assert habituated(0.0, rules, 1.0) == pytest.approx(0.7)  # the destructive shell rule alone is left


def test_a_blamed_denial_marks_its_destination_as_denied() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        send_email(scorer, T0 + 60 * i, "alice@corp.example")
    send_email(scorer, T0 + 3600, "mallory@evil.example", allowed=False, blame=True)
    retry = send_email(scorer, T0 + 3700, "mallory@evil.example", allowed=None)
    assert {"denied_destination", "new_destination"} <= codes(retry)  # the denial taught no baseline
    assert max(retry.severities) >= 0.7
    other = send_email(scorer, T0 + 3800, "bob@partner.example", allowed=None)
    assert "denied_destination" not in codes(other)


def test_a_denial_without_blame_marks_no_destination() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        send_email(scorer, T0 + 60 * i, "alice@corp.example")
    send_email(scorer, T0 + 3600, "mallory@evil.example", allowed=False, blame=False)
    assert denied_destinations(scorer, "mailer") == set()
    retry = send_email(scorer, T0 + 3700, "mallory@evil.example", allowed=None)
    assert "denied_destination" not in codes(retry)
    assert "new_destination" in codes(retry)


def test_blame_never_marks_a_destination_the_agent_already_used() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        send_email(scorer, T0 + 60 * i, "alice@corp.example")
    send_email(scorer, T0 + 3600, "alice@corp.example", allowed=False, blame=True)
    assert denied_destinations(scorer, "mailer") == set()
    assert "denied_destination" not in codes(send_email(scorer, T0 + 3700, "alice@corp.example", allowed=None))


def fetch(scorer: BehaviorScorer, ts: float, url: str, *, allowed: bool | None = True) -> Any:
    payload = {"tool": "http_get", "args": {"url": url}}
    atype = ActionType.NETWORK_REQUEST
    _, rules = RuleScorer().score(atype, "http.get", payload)
    assessment = scorer.assess(
        "fetcher", ts=ts, action_type=atype, resource="http.get", payload=payload, payload_bytes=60, rule_reasons=rules
    )
    if allowed is not None:
        scorer.observe("fetcher", f"id-{ts}", ts, atype, "http.get", assessment, allowed)
    return assessment


def test_a_request_to_a_new_path_on_a_known_host_is_not_a_new_destination() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        fetch(scorer, T0 + 60 * i, f"https://api.partner.example/orders/{i % 3}")
    same_host = fetch(scorer, T0 + 3600, "https://api.partner.example/orders/99", allowed=None)
    assert "new_destination" not in codes(same_host)  # the destination is the host, as for a URL resource
    other_host = fetch(scorer, T0 + 3700, "https://collector.evil.example/orders/1", allowed=None)
    assert "new_destination" in codes(other_host)


def pay(
    scorer: BehaviorScorer, ts: float, resource: str, payload: Any, *, allowed: bool | None, blame: bool = False,
    flagged: bool = False,
) -> Any:  # fmt: skip
    atype = ActionType.API_CALL
    _, rules = RuleScorer().score(atype, resource, payload)
    assessment = scorer.assess(
        "payer", ts=ts, action_type=atype, resource=resource, payload=payload, payload_bytes=60, rule_reasons=rules
    )
    if allowed is not None:
        scorer.observe("payer", f"id-{ts}", ts, atype, resource, assessment, allowed, flagged=flagged, blame=blame)
    return assessment


def test_a_blamed_payee_is_recognised_however_the_retry_names_its_iban() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        pay(scorer, T0 + 60 * i, "bank.transfer", transfer(KNOWN_IBANS[i % 2]), allowed=True)
    pay(scorer, T0 + 3600, "bank.transfer", transfer(NEW_IBAN), allowed=False, blame=True)
    retry = pay(scorer, T0 + 3700, f"bank.transfer/{NEW_IBAN}", {"amount": 100}, allowed=None)
    assert "denied_destination" in codes(retry)


def test_an_amount_far_outside_the_agents_range_is_flagged_whoever_the_payee() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        pay(scorer, T0 + 60 * i, "bank.transfer", transfer(KNOWN_IBANS[i % 2], 50 + 20 * i), allowed=True)
    usual = pay(scorer, T0 + 3600, "bank.transfer", transfer(KNOWN_IBANS[0], 120), allowed=None)
    penny = pay(scorer, T0 + 3600, "bank.transfer", transfer(KNOWN_IBANS[0], 0.01), allowed=None)
    everything = pay(scorer, T0 + 3600, "bank.transfer", transfer(KNOWN_IBANS[1], 1_000_000), allowed=None)
    tenfold = pay(scorer, T0 + 3600, "bank.transfer", transfer(KNOWN_IBANS[1], 2_700), allowed=None)
    assert "amount_deviation" not in codes(usual) and not any(usual.severities)
    for odd in (penny, everything):  # a transfer, as the agent's habit is: only the amount weighs
        assert {r.code: r.weight for r in odd.reasons} == {"amount_deviation": pytest.approx(0.6), "habitual": 0}
    # 2,700 is ten times the largest so far (270): half-way to the full severity.
    assert {r.code: r.weight for r in tenfold.reasons} == {"amount_deviation": pytest.approx(0.3), "habitual": 0}


def test_an_amount_counts_only_after_a_few_uses_and_a_flagged_one_does_not_widen_the_range() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):  # a mature agent that never sent an amount
        send_email(scorer, T0 + 60 * i, "alice@corp.example")
    for i in range(MIN_AMOUNTS):
        first_uses = pay(
            scorer, T0 + 900 + 60 * i, "bank.transfer", transfer(KNOWN_IBANS[0], 10 ** (i + 1)), allowed=True
        )
        assert first_uses.features[FEATURES.index("amount_deviation")] == 0.0  # no range yet
    pay(scorer, T0 + 1800, "bank.transfer", transfer(KNOWN_IBANS[0], 0.01), allowed=False)  # flagged: not learned
    again = pay(scorer, T0 + 1900, "bank.transfer", transfer(KNOWN_IBANS[0], 0.01), allowed=None)
    assert again.features[FEATURES.index("amount_deviation")] == 1.0  # 10 was the least; 0.01 is 3 decades below


def test_amounts_are_read_from_quantity_arguments_only() -> None:
    payload = {"tool": "order", "args": {"id": 7, "amount": 12.5, "flag": True, "price": "9.99", "lines": [{"qty": 3}]}}
    assert amounts(ActionType.API_CALL, payload) == (("api_call/amount", pytest.approx(1.0969, abs=1e-4)),
                                                     ("api_call/qty", pytest.approx(0.4771, abs=1e-4)))  # fmt: skip
    assert amounts(ActionType.API_CALL, {"amount": 0}) == ()
    assert amounts(ActionType.API_CALL, {"amount": float("nan")}) == ()
    assert amounts(ActionType.API_CALL, "amount 100") == ()


def test_outcome_volumes_are_kept_by_the_minute_for_an_hour_however_many_are_reported() -> None:
    """An agent reporting hundreds of outcomes a minute keeps one entry a minute: every decision reads the hour's
    volume, and a shared store moves the profile on each, so it must not grow with the outcomes."""
    profile = AgentProfile("a")
    for i in range(600):  # ten a second for a minute, then one a minute later
        profile.record_outcome(T0 + i / 10, error=False, volume=2.5)
    profile.record_outcome(T0 + 60, error=False, volume=1.0)
    profile.record_outcome(T0 + 30, error=False, volume=0.5)  # timed before the latest minute: counted in it
    assert [v for _, v in profile.volume] == [pytest.approx(1500.0), 1.5]
    assert vector(profile, T0 + 61, "database_query", "data.claims")["volume_ratio"] > 0
    profile.record_outcome(T0 + HOUR + 30, error=False, volume=4.0)  # an hour on: the first minute is gone
    assert [v for _, v in profile.volume] == [1.5, 4.0]
    profile.record_outcome(T0 + 3 * HOUR, error=False, volume=0)  # a report without volume still expires them
    assert not profile.volume


def test_volume_ratio_forgets_an_hour_old_volume_though_no_outcome_came_since() -> None:
    """The first action after a quiet hour read the last session's volume as this hour's: it stays in the profile
    until the next outcome, and volume_ratio summed it, so a session start looked like a bulk read."""
    profile = AgentProfile("a")
    for i in range(20):
        record(profile, T0 + 60 * i, "database_query", "data.claims")
        profile.record_outcome(T0 + 60 * i, error=False, volume=1.0)
    record(profile, T0 + 1260, "database_query", "data.claims")
    profile.record_outcome(T0 + 1260, error=False, volume=5000.0)  # one bulk export, then nothing
    assert vector(profile, T0 + 1320, "database_query", "data.claims")["volume_ratio"] > 1
    later = vector(profile, T0 + 1260 + HOUR, "database_query", "data.claims")  # its minute has left the hour
    assert later["volume_ratio"] <= 0


def test_a_profile_stored_with_a_volume_per_outcome_loads_them_by_the_minute() -> None:
    profile = AgentProfile("a")
    profile.record_outcome(T0, error=False, volume=3.0)
    core = profile_core(profile)
    assert "volume" not in core and profile_from_core("a", core).volume == profile.volume
    del core["volume_minutes"]
    core["volume"] = [[T0, 1.0], [T0 + 30, 2.0], [T0 + 90, 5.0]]  # as stored before: (ts, volume) per outcome
    minute = int(T0 // 60)
    assert list(profile_from_core("a", core).volume) == [[minute, 3.0], [minute + 1, 5.0]]


def test_a_profile_stored_before_amounts_were_kept_loads_with_none() -> None:
    profile = AgentProfile("a")
    profile.record_action(T0, "api_call", "bank.transfer", "bank", (), (("api_call/amount", 2.0),))
    core = profile_core(profile)
    assert profile_from_core("a", core).amounts == {"api_call/amount": [1, 2.0, 2.0]}
    del core["amounts"]
    assert profile_from_core("a", core).amounts == {}
    for broken in ([["api_call/amount", 1, 2.0, 2.0]], {"api_call/amount": [1, 2.0]}):
        with pytest.raises((ValueError, TypeError)):
            profile_from_core("a", {**core, "amounts": broken})


def test_an_alerted_action_shapes_the_baseline_but_not_where_it_sent_nor_how_much() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        pay(scorer, T0 + 60 * i, "bank.transfer", transfer(KNOWN_IBANS[i % 2], 100 + i), allowed=True)
    pay(
        scorer, T0 + 3600, "bank.api/v2/transfer", transfer(NEW_IBAN, 1_000_000), allowed=True, flagged=True, blame=True
    )
    probe = Probe("bank.api/v2/transfer", "bank.api/v2", (f"iban:{NEW_IBAN}",))
    seen = scorer.profiles.read("payer", probe, lambda p: (p.actions, p.resources, p.destinations, p.amounts))
    actions, resources, known, ranges = seen
    assert actions == 13 and "bank.api/v2/transfer" in resources  # it ran: the agent's activity counts it
    assert f"iban:{NEW_IBAN}" not in known and ranges["api_call/amount"][2] < 3  # 1,000,000 did not widen it
    again = pay(scorer, T0 + 3700, "bank.api/v2/transfer", transfer(NEW_IBAN, 1_000_000), allowed=None)
    assert {"new_destination", "denied_destination", "amount_deviation"} <= codes(again)
    assert "new_prefix" not in codes(again)


def test_behavior_scorer_refuses_a_model_trained_on_other_features() -> None:
    with pytest.raises(ValueError, match="other features"):
        BehaviorScorer(small_model(width=WIDTH - 1), None)


# ---- the Guard ----------------------------------------------------------------------------------------------

KNOWN_IBANS = ("DE89370400440532013000", "GB29NWBK60161331926819")
NEW_IBAN = "CH9300762011623852957"


def transfer(iban: str, amount: int = 100) -> dict[str, Any]:
    return {"tool": "transfer", "args": {"iban": iban, "amount": amount}}


def make_guard(tmp_path: Path, name: str = "audit", **kwargs: Any) -> Guard:
    return Guard(audit=f"sqlite:///{tmp_path}/{name}.db", home=tmp_path / "home", agent_id="payer", **kwargs)


def payments_model() -> BehaviorModel:
    """A forest fitted on a payer's routine: transfers to two known IBANs every five minutes."""
    from risk.traces import TraceAction
    from risk.train import training_rows

    history = [
        TraceAction(T0 - 10 * HOUR + 300 * i, "payer", "s-0", ActionType.API_CALL, "bank.transfer",
                    transfer(KNOWN_IBANS[i % 2], 100 + i), 0)
        for i in range(60)
    ]  # fmt: skip
    return fit_model(training_rows(history).X, MODEL_FEATURES, name="payments", version="3", n_estimators=50)


def run_payments(guard: Guard, clock: Clock) -> list[Any]:
    """A baseline of 15 transfers to the known IBANs, then one to a new IBAN."""
    decisions = []
    for i in range(15):
        clock.now = T0 + 300 * i
        decisions.append(guard.check("api_call", "bank.transfer", transfer(KNOWN_IBANS[i % 2], 100 + i)))
        if decisions[-1].allowed:
            guard.record_outcome(decisions[-1].action_id)
    clock.now = T0 + 300 * 16
    decisions.append(guard.check("api_call", "bank.transfer", transfer(NEW_IBAN)))
    return decisions


def test_guard_scores_with_the_shipped_model_and_online_learning_by_default(tmp_path: Path) -> None:
    clock = Clock()
    guard = make_guard(tmp_path, max_risk_score=0.5, clock=clock)
    assert guard.model_version == "rules-1+default-5+online-hst10x6"
    novel = run_payments(guard, clock)[-1]
    assert not novel.allowed and "new_destination" in novel.reason_codes


def test_an_alerted_action_does_not_teach_the_baseline(tmp_path: Path) -> None:
    """ALERT mode lets a flagged transfer run, but does not learn where it sent: each repeat to the new IBAN is
    still new, and now also a destination a flagged action tried to reach."""
    clock = Clock()
    guard = make_guard(tmp_path, model=payments_model(), online=False, max_risk_score=0.5, mode="alert", clock=clock)
    first = run_payments(guard, clock)[-1]
    assert first.allowed and first.outcome.value == "alerted" and "new_destination" in first.reason_codes
    guard.record_outcome(first.action_id)
    repeats = []
    for k in range(1, 4):
        clock.now = T0 + 300 * (16 + k)
        repeats.append(guard.check("api_call", "bank.transfer", transfer(NEW_IBAN)))
        guard.record_outcome(repeats[-1].action_id)
    for repeat in repeats:
        assert repeat.outcome.value == "alerted"
        assert {"new_destination", "denied_destination"} <= set(repeat.reason_codes)
        assert repeat.risk_score > first.risk_score


def test_an_unflagged_action_teaches_the_baseline(tmp_path: Path) -> None:
    """The same transfers under a threshold that flags nothing: the new IBAN is learned on first use."""
    clock = Clock()
    guard = make_guard(tmp_path, model=payments_model(), online=False, mode="alert", clock=clock)
    first = run_payments(guard, clock)[-1]
    assert first.outcome.value == "allowed" and "new_destination" in first.reason_codes
    guard.record_outcome(first.action_id)
    clock.now = T0 + 300 * 17
    again = guard.check("api_call", "bank.transfer", transfer(NEW_IBAN))
    assert not {"new_destination", "denied_destination"} & set(again.reason_codes)


def test_guards_over_one_state_store_share_profiles_and_the_streaming_model(tmp_path: Path) -> None:
    """A guard rebuilt over the same state (a new policy, say) keeps what the last one learned."""
    state = MemoryState()
    clock = Clock()
    first = make_guard(tmp_path, model=None, online=True, state=state, clock=clock)
    run_payments(first, clock)
    second = make_guard(tmp_path, model=None, online=True, state=state, clock=clock, max_risk_score=0.5)
    assert second._behavior is not None and first._behavior is not None
    assert second._behavior.online is first._behavior.online
    clock.now = T0 + 300 * 17
    assert "new_destination" not in second.check("api_call", "bank.transfer", transfer(NEW_IBAN)).reason_codes
    other = make_guard(tmp_path, model=None, online=True, clock=clock)  # its own state: a new agent's baseline
    assert other._behavior is not None and other._behavior.online is not first._behavior.online


def test_guard_with_model_none_decides_by_rules_alone(tmp_path: Path) -> None:
    clock = Clock()
    guard = make_guard(tmp_path, max_risk_score=0.5, clock=clock, model=None, online=False)
    assert guard.model_version == "rules-1"
    decisions = run_payments(guard, clock)
    decisions.append(guard.check("database_query", "data.claims", {"sql": "DROP TABLE claims"}))
    for d in decisions:
        assert not BEHAVIOR_CODES & set(d.reason_codes)
    assert decisions[-2].allowed  # the new IBAN is just another transfer to the rules
    assert decisions[-2].risk_score == RuleScorer().score(ActionType.API_CALL, "bank.transfer", transfer(NEW_IBAN))[0]
    assert not decisions[-1].allowed  # the destructive SQL is still caught by the rules


def test_guard_with_a_model_blocks_a_first_transfer_to_a_new_iban(tmp_path: Path) -> None:
    model = payments_model()
    clock = Clock()
    guard = make_guard(tmp_path, model=model, online=False, max_risk_score=0.5, mode="block", clock=clock)
    assert "payments-3" in guard.model_version
    decisions = run_payments(guard, clock)
    baseline, novel = decisions[:-1], decisions[-1]
    assert all(d.allowed for d in baseline)
    assert not novel.allowed and novel.outcome.value == "blocked"
    assert novel.reason_codes[0] == "risk_above_threshold"
    assert "new_destination" in novel.reason_codes
    assert novel.risk_score > 0.5
    (audited,) = [
        r for r in guard.audit.query(AuditQuery(kind="decision", limit=100)) if r.action_id == novel.action_id
    ]
    assert audited.decision == "deny"
    assert audited.model_version is not None and "payments" in audited.model_version
    # Block mode: the agent goes on, and its known payees still pass.
    clock.now += 300
    assert guard.check("api_call", "bank.transfer", transfer(KNOWN_IBANS[0], 180)).allowed
    # The blocked payee is now suspect: a retry is blocked and says so.
    clock.now += 300
    retry = guard.check("api_call", "bank.transfer", transfer(NEW_IBAN, 99))
    assert not retry.allowed and "denied_destination" in retry.reason_codes


def test_guard_lets_a_mature_agents_habit_pass_where_the_priors_alone_pause_a_first_time(tmp_path: Path) -> None:
    """A deploy to production scores 0.58 on its rules (a command in production); the agent's own deploys, run
    unflagged before, make it a habit that a threshold of 0.5 lets pass, and the audit trail says why."""
    clock, state = Clock(), MemoryState()
    cmd = {"cmd": "kubectl rollout restart deploy/api -n prod"}
    # No batch model, and a streaming model that says nothing before it has learned 250 actions: rules and profiles.
    learning = make_guard(tmp_path, model=None, online=True, mode="alert", state=state, clock=clock)  # flags nothing
    for i in range(12):
        clock.now = T0 + 60 * i
        learning.record_outcome(learning.check("process_spawn", "k8s/prod/deployments", cmd).action_id)
    guard = make_guard(tmp_path, model=None, online=True, max_risk_score=0.5, mode="pause", state=state, clock=clock)
    clock.now += 60
    routine = guard.check("process_spawn", "k8s/prod/deployments", cmd)
    assert routine.allowed and routine.risk_score == pytest.approx(0.3194, abs=1e-4)
    (audited,) = guard.audit.query(AuditQuery(action_id=routine.action_id))
    assert audited.risk_score == routine.risk_score and any(r["code"] == "habitual" for r in audited.reasons)
    clock.now += 60
    other = guard.check("process_spawn", "k8s/prod/statefulsets", cmd)  # a first time there
    assert other.outcome.value == "paused" and "habitual" not in other.reason_codes
    guard.close()
    learning.close()


def test_a_file_reached_through_a_symlink_is_never_a_habit(tmp_path: Path) -> None:
    """The agent reads the same summary every day; pointed at patient records, the link's read must weigh the PHI
    rule in full, not halved as the habit of reading that path would have it."""
    clock, state = Clock(), MemoryState()
    shared = tmp_path / "shared"
    (shared / "patients").mkdir(parents=True)
    (shared / "patients" / "records.csv").write_text("mrn,diagnosis\n")
    summary = shared / "summary.csv"
    summary.write_text("month,claims\n")
    learning = make_guard(tmp_path, model=None, online=True, mode="alert", state=state, clock=clock)
    for i in range(12):
        clock.now = T0 + 60 * i
        learning.record_outcome(learning.check("file_read", str(summary)).action_id)
    guard = make_guard(tmp_path, model=None, online=True, max_risk_score=0.5, mode="block", state=state, clock=clock)
    clock.now += 60
    assert "habitual" in guard.check("file_read", str(summary)).reason_codes  # the path, read as ever
    summary.unlink()
    summary.symlink_to(shared / "patients" / "records.csv")
    clock.now += 60
    linked = guard.check("file_read", str(summary))
    assert not linked.allowed and "resource_phi" in linked.reason_codes and "habitual" not in linked.reason_codes
    summary.unlink()
    summary.write_text("month,claims\n")
    (shared / "L").symlink_to(shared / "patients")  # L/../summary.csv reads as the summary, opens patients/
    (shared / "patients" / "summary.csv").write_text("mrn,diagnosis\n")
    clock.now += 60
    through = guard.check("file_read", f"{shared}/L/../summary.csv")
    assert through.normalized_resource == str(summary) and "habitual" not in through.reason_codes
    guard.close()
    learning.close()


def test_a_url_that_resembles_the_agents_usual_one_is_neither_its_habit_nor_its_known_host(tmp_path: Path) -> None:
    """Normalized, `https://evil.example/../reports.example/api/upload` reads `https:/reports.example/api/upload`,
    the agent's daily upload; a client sends it to evil.example, so it must count as a new host, and no habit."""
    clock, state = Clock(), MemoryState()
    learning = make_guard(tmp_path, model=None, online=True, mode="alert", state=state, clock=clock)
    for i in range(12):
        clock.now = T0 + 60 * i
        learning.check("network_request", "https://reports.example/api/upload", {"body": f"status {i}"})
    guard = make_guard(tmp_path, model=None, online=True, max_risk_score=0.5, mode="block", state=state, clock=clock)
    leak = {"body": "patient SSN 078-05-1120"}
    clock.now += 60
    usual = guard.check("network_request", "https://reports.example/api/upload", {"body": "status 12"})
    assert usual.allowed and "habitual" in usual.reason_codes and "new_destination" not in usual.reason_codes
    for url in ("https://evil.example/api/upload", "https://evil.example/../reports.example/api/upload"):
        clock.now += 60
        sent = guard.check("network_request", url, leak)
        assert not sent.allowed and "new_destination" in sent.reason_codes and "habitual" not in sent.reason_codes
    guard.close()
    learning.close()


def test_an_approved_action_runs_once_and_makes_no_habit_for_other_payloads(tmp_path: Path) -> None:
    """The reviewer approved one command in production; another command there must not pass on that approval."""
    guard = make_guard(tmp_path, model=None, online=True, max_risk_score=0.5, mode="pause", clock=(clock := Clock()))
    for i in range(12):  # a mature agent: routine reads
        clock.now = T0 + 60 * i
        assert guard.check("file_read", f"/srv/app/logs/{i}.log").allowed
    restart = {"cmd": "kubectl rollout restart deploy/api -n prod"}
    assert guard.check("process_spawn", "k8s/prod/deployments", restart).outcome.value == "paused"
    guard.approve("payer", actor="reviewer")
    clock.now += 60
    assert "approved" in guard.check("process_spawn", "k8s/prod/deployments", restart).reason_codes
    clock.now += 60
    outage = {"cmd": "kubectl scale deployments --all --replicas=0 -n prod"}  # no payload rule knows it
    other = guard.check("process_spawn", "k8s/prod/deployments", outage)
    assert other.outcome.value == "paused" and "habitual" not in other.reason_codes
    guard.close()


def test_a_payee_a_reviewer_approved_is_no_longer_suspect_but_one_only_resumed_past_stays_so(tmp_path: Path) -> None:
    """Approving the payment that paused the agent vouches for its payee: every later payment there paused the
    agent again on denied_destination (0.7), since nothing took a destination off the suspects."""
    clock = Clock()
    guard = make_guard(tmp_path, model=payments_model(), online=False, max_risk_score=0.5, mode="pause", clock=clock)
    assert run_payments(guard, clock)[-1].outcome.value == "paused"  # NEW_IBAN, blamed
    guard.approve(actor="reviewer")
    assert "approved" in guard.check("api_call", "bank.transfer", transfer(NEW_IBAN)).reason_codes
    clock.now += 300
    again = guard.check("api_call", "bank.transfer", transfer(NEW_IBAN, 120))
    assert again.allowed and not {"denied_destination", "new_destination"} & set(again.reason_codes)

    other = "NL91ABNA0417164300"  # paused, then resumed without running: still suspect
    clock.now += 300
    assert guard.check("api_call", "bank.transfer", transfer(other)).outcome.value == "paused"
    guard.resume(actor="reviewer")
    clock.now += 300
    retry = guard.check("api_call", "bank.transfer", transfer(other))
    assert not retry.allowed and "denied_destination" in retry.reason_codes
    guard.close()


def test_a_suspect_destination_is_not_learned_from_an_action_the_threshold_let_through() -> None:
    """Only a reviewer's approval vouches for a destination: an action there that scored under the threshold ran
    unflagged, and learning its destination would have cleared the suspicion without anyone looking."""
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        pay(scorer, T0 + 60 * i, "bank.transfer", transfer(KNOWN_IBANS[i % 2], 100 + i), allowed=True)
    pay(scorer, T0 + 900, "bank.transfer", transfer(NEW_IBAN), allowed=False, blame=True)
    passed = pay(scorer, T0 + 960, "bank.transfer", transfer(NEW_IBAN), allowed=True)  # under a threshold of 0.8
    assert "denied_destination" in {r.code for r in passed.reasons}
    assert "denied_destination" in codes(pay(scorer, T0 + 1020, "bank.transfer", transfer(NEW_IBAN), allowed=None))


def test_an_approval_vouches_for_where_the_action_goes_not_for_what_its_payload_mentions() -> None:
    scorer = BehaviorScorer(None, None)
    for i in range(12):
        send_email(scorer, T0 + 60 * i, "alice@corp.example")
    send_email(scorer, T0 + 900, "eve@evil.example", allowed=False, blame=True)
    send_email(scorer, T0 + 960, "bob@newco.example", allowed=False, blame=True)
    send_email(scorer, T0 + 1020, "bob@newco.example", body="write to eve@evil.example", approved=True)
    assert "denied_destination" not in codes(send_email(scorer, T0 + 1080, "bob@newco.example", allowed=None))
    assert "denied_destination" in codes(send_email(scorer, T0 + 1140, "eve@evil.example", allowed=None))
    # What a reviewer is shown names each suspect destination, and whether the action goes there.
    again = send_email(scorer, T0 + 1200, "bob@newco.example", body="see eve@evil.example", allowed=None)
    (shown,) = [r for r in again.reasons if r.code == "denied_destination"]
    assert shown.message.endswith("email:eve@evil.example (in its payload), domain:evil.example (in its payload)")


def test_the_denied_destination_reason_names_a_few_suspects_however_many_the_action_has() -> None:
    scorer = BehaviorScorer(None, None)
    everyone = [f"user{i}@list.example" for i in range(2_000)]
    for i in range(12):
        send_email(scorer, T0 + 60 * i, "alice@corp.example")
    send_email(scorer, T0 + 900, "all", recipients=everyone, allowed=False, blame=True)
    again = send_email(scorer, T0 + 960, "all", recipients=everyone, allowed=None)
    (shown,) = [r for r in again.reasons if r.code == "denied_destination"]
    assert len(shown.message) < 1_000 and shown.message.endswith(" and 1996 more")


def test_guard_lets_a_new_payee_the_users_task_names_pass_and_audits_why(tmp_path: Path) -> None:
    clock = Clock()
    guard = make_guard(tmp_path, model=payments_model(), online=False, max_risk_score=0.5, mode="block", clock=clock)
    run_payments(guard, clock)  # its last transfer, to NEW_IBAN without a task, is blocked and blames NEW_IBAN
    other = "FR7630006000011234567890189"
    asked = guard.check("api_call", "bank.transfer", transfer(other), task=f"Pay my new landlord, IBAN {other}")
    assert asked.allowed and "new_destination" not in asked.reason_codes and "named_by_task" in asked.reason_codes
    (audited,) = guard.audit.query(AuditQuery(action_id=asked.action_id))
    assert any(r["code"] == "named_by_task" and other in r["message"] for r in audited.reasons)
    assert audited.task_digest == hashlib.sha256(f"Pay my new landlord, IBAN {other}".encode()).hexdigest()
    clock.now += 300
    unasked = guard.check("api_call", "bank.transfer", transfer("NL91ABNA0417164300"), task=f"Pay {other}")
    assert not unasked.allowed and "new_destination" in unasked.reason_codes
    with pytest.raises(ValueError, match="task must be a string"):
        guard.check("api_call", "bank.transfer", transfer(other), task=[other])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the limit is 32768"):
        guard.check("api_call", "bank.transfer", transfer(other), task="x" * 32_769)


def test_a_guarded_tool_inside_working_on_carries_the_task_and_an_explicit_task_wins(tmp_path: Path) -> None:
    clock = Clock()
    guard = make_guard(tmp_path, model=payments_model(), online=False, max_risk_score=0.5, mode="block", clock=clock)
    run_payments(guard, clock)

    @guard.tool("api_call", resource=lambda iban, amount: "bank.transfer")
    def pay(iban: str, amount: int) -> str:
        return f"paid {amount} to {iban}"

    landlord, stranger = "FR7630006000011234567890189", "NL91ABNA0417164300"
    with guard.working_on(f"Pay the rent to my new landlord, {landlord}"):
        clock.now += 300
        assert pay(landlord, 100) == f"paid 100 to {landlord}"
        clock.now += 300
        with pytest.raises(ActionDenied):
            pay(stranger, 100)
        clock.now += 300
        own = guard.check("api_call", "bank.transfer", transfer(stranger), task=f"Pay {stranger}")
        assert "named_by_task" in own.reason_codes  # the check's own task, not the block's
    with pytest.raises(ValueError, match="task must be a string"), guard.working_on(42):  # type: ignore[arg-type]
        pass
    (paid,) = [r for r in guard.audit.query(AuditQuery(kind="decision", limit=100)) if r.resource == "bank.transfer"
               and landlord in json.dumps(r.reasons)]  # fmt: skip
    assert paid.decision == "allow"


def test_guard_refuses_a_model_fitted_on_the_wrong_feature_width(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="other features"):
        make_guard(tmp_path, model=small_model(width=WIDTH - 1))


def test_guard_with_an_unknown_model_name_raises_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_MODELS", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="no-such-model"):
        make_guard(tmp_path, model="no-such-model")


def test_guard_loads_a_model_by_name_from_risk_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_model(payments_model(), tmp_path / "models", {})
    monkeypatch.setenv("RISK_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    guard = make_guard(tmp_path, model="payments", online=False, max_risk_score=0.5, clock=Clock())
    assert guard.model_version == "rules-1+payments-3"


# ---- the default model, and models written over ------------------------------------------------------------


def installed_default(folder: Path) -> Path:
    """A copy of the shipped default model (artifact and card) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for shipped in SHIPPED_MODELS.glob("default-*"):
        shutil.copy(shipped, folder / shipped.name)
    return next(folder.glob("default-*.joblib"))


@pytest.mark.parametrize("damage", ["artifact", "card", "artifact gone"])
def test_a_damaged_default_model_is_refused_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """Only a default model that is not installed at all may be left out: an altered one, or one whose card no
    longer reads, was silently dropped ("no default model"), and the guard scored without it."""
    artifact = installed_default(tmp_path / "models")
    if damage == "artifact":
        artifact.write_bytes(artifact.read_bytes()[:-1] + b"\0")
    elif damage == "card":
        artifact.with_suffix(".json").write_text("{")
    else:
        artifact.unlink()
    monkeypatch.setenv("RISK_MODELS", str(tmp_path / "models"))
    with pytest.raises(ModelError):
        make_guard(tmp_path)


def test_without_a_default_model_the_guard_scores_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_MODELS", str(tmp_path / "empty"))
    assert make_guard(tmp_path, online=False).model_version == "rules-1"


def test_a_folder_named_like_the_model_does_not_hide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model name was read as a path when one existed: `mkdir default` in the working directory turned the
    shipped model off."""
    monkeypatch.delenv("RISK_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    assert "default-" in make_guard(tmp_path, online=False).model_version


def test_a_service_reload_of_a_damaged_model_keeps_the_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = installed_default(tmp_path / "models")
    monkeypatch.setenv("RISK_MODELS", str(tmp_path / "models"))
    tenants = Tenants(Catalog(f"sqlite:///{tmp_path}/catalog.db"), open_audit(f"sqlite:///{tmp_path}/audit.db"),
                      MemoryState())  # fmt: skip
    running = tenants.model_version
    assert running is not None and running.startswith("default-")
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\0")  # or caught half written by `risk train`
    with pytest.raises(ModelError, match="SHA-256"):
        tenants.reload_model("admin")
    assert tenants.model_version == running
    artifact.unlink()
    artifact.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="no model named 'default'"):
        tenants.reload_model("admin")
    assert tenants.model_version == running


def test_save_model_refuses_to_write_over_a_model_or_outside_its_folder(tmp_path: Path) -> None:
    first = save_model(small_model("t", "1"), tmp_path, {})
    umask = os.umask(0)
    os.umask(umask)
    for written in (first, first.with_suffix(".json")):  # as open() makes files, not a temporary file's 0600
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
    sha = json.loads(first.with_suffix(".json").read_text())["sha256"]
    with pytest.raises(ModelError, match="exists"):
        save_model(fit_model(benign_rows(), MODEL_FEATURES, name="t", version="1", seed=1), tmp_path, {})
    assert json.loads(first.with_suffix(".json").read_text())["sha256"] == sha
    assert load_model(first).version == "1"
    save_model(small_model("t", "1"), tmp_path, {}, replace=True)  # as `make model` does, on purpose
    for name, version in (("../escaped", "1"), ("t", "1/../../x"), ("", "1"), (".hidden", "1")):
        with pytest.raises(ModelError, match="must be letters"):
            save_model(small_model(name, version), tmp_path / "models", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-1.joblib", "t-1.json"]


def test_a_card_that_names_another_model_is_refused(tmp_path: Path) -> None:
    artifact = save_model(small_model("t", "1"), tmp_path, {})
    card_path = artifact.with_suffix(".json")
    card = json.loads(card_path.read_text())
    for field, value in (("name", "prod"), ("version", "9"), ("features", ["only_this_one"])):
        card_path.write_text(json.dumps({**card, field: value}))
        with pytest.raises(ModelError, match="does not describe"):
            load_model(artifact)


def test_a_destination_longer_than_the_limit_is_remembered_by_its_digest() -> None:
    """A recipient argument is any text: one of a megabyte was kept whole in the agent's set of destinations, for
    every action (400 such actions held 95 MiB in the review pass). It is one digest now, the same each time."""
    huge = "r" * 1_000_000
    (primary,), _ = destinations("chat.post", {"to": huge})
    assert primary.startswith("recipient:sha256:") and len(primary) <= MAX_DESTINATION_CHARS
    assert destinations("chat.post", {"to": huge})[0] == (primary,)
    assert destinations("chat.post", {"to": huge + "s"})[0] != (primary,)
    assert destinations("chat.post", {"to": "ann"})[0] == ("recipient:ann",)
