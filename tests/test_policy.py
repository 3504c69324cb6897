"""The policy contract: allow-lists, blocks, globs, every reading of a resource, and policy validation.

The Guard tests run the product's seed configuration through the public API; the property tests hold the
compiled policy against a slow reference written with `fnmatch` one pattern and one reading at a time.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from risk import ActionType, Guard, KillSwitchMode, Outcome, PolicyError
from risk.policy import MAX_SQL_TABLES, CompiledPolicy, Policy, load_policy_file
from risk.resources import normalized_path, readings

SEED = {
    "allowed_action_types": [ActionType.DATABASE_QUERY, ActionType.FILE_READ],
    "allowed_resources": ["data.deidentified.*", "/reports/readonly/*"],
    "blocked_resources": ["data.phi.*", "*.pii", "prod.*"],
}


def make_guard(tmp_path: Path, **policy: object) -> Guard:
    return Guard(
        audit=f"sqlite:///{tmp_path}/audit.db",
        home=tmp_path / "home",
        mode=KillSwitchMode.BLOCK,
        **policy,  # type: ignore[arg-type]
    )


@pytest.fixture
def seed_guard(tmp_path: Path) -> Iterator[Guard]:
    guard = make_guard(tmp_path, **SEED)
    yield guard
    guard.close()


def codes(policy: Policy, action_type: ActionType, resource: str) -> set[str]:
    """The violation codes the compiled policy reports for one action."""
    found = CompiledPolicy(policy).violations(action_type, readings(resource, resolve_symlinks=action_type.is_file))
    assert all(reason.violation for reason in found)
    return {reason.code for reason in found}


# ---- the seed configuration through the public API ---------------------------------------------------------


@pytest.mark.parametrize(
    ("action_type", "resource", "code"),
    [
        pytest.param(
            ActionType.FILE_READ, "/reports/readonly/../../etc/passwd", "resource_not_allowed", id="traversal"
        ),
        pytest.param(
            ActionType.FILE_READ,
            "/reports/readonly/%2e%2e/%2e%2e/etc/passwd",
            "resource_not_allowed",
            id="percent-encoded-traversal",
        ),
        pytest.param(
            ActionType.FILE_READ,
            "/reports/readonly/%252e%252e/%252e%252e/etc/passwd",
            "resource_not_allowed",
            id="double-encoded-traversal",
        ),
        pytest.param(
            ActionType.FILE_READ,
            "/reports/readonly/%25252e%25252e/%25252e%25252e/etc/passwd",
            "resource_not_allowed",
            id="triple-encoded-traversal",
        ),
        pytest.param(
            ActionType.FILE_READ,
            "/reports/readonly/..\\..\\etc\\passwd",
            "resource_not_allowed",
            id="backslash-traversal",
        ),
        pytest.param(
            ActionType.FILE_READ,
            "／reports／readonly／．．／．．／etc／passwd",
            "resource_not_allowed",
            id="fullwidth-traversal",
        ),
        pytest.param(ActionType.DATABASE_QUERY, "DATA.PHI.patients", "resource_blocked", id="uppercase-blocked"),
        pytest.param(ActionType.DATABASE_QUERY, "Prod.db", "resource_blocked", id="mixed-case-prod"),
        pytest.param(ActionType.DATABASE_QUERY, "ｄａｔａ.phi.patients", "resource_blocked", id="fullwidth"),
        pytest.param(ActionType.DATABASE_QUERY, "ＤＡＴＡ.ＰＨＩ.patients", "resource_blocked", id="fullwidth-upper"),
        pytest.param(ActionType.DATABASE_QUERY, "data.p\u200bhi.patients", "resource_blocked", id="zero-width-space"),
        pytest.param(ActionType.DATABASE_QUERY, "data.phi\u200d.patients", "resource_blocked", id="zero-width-joiner"),
        pytest.param(ActionType.DATABASE_QUERY, "\ufeffdata.phi.patients", "resource_blocked", id="bom"),
        pytest.param(ActionType.DATABASE_QUERY, "data.%70hi.patients", "resource_blocked", id="percent-encoded-letter"),
        pytest.param(ActionType.DATABASE_QUERY, "data.deidentified.x\x00", "resource_control_characters", id="raw-nul"),
        pytest.param(
            ActionType.DATABASE_QUERY, "data.deidentified.x%00", "resource_control_characters", id="encoded-nul"
        ),
        pytest.param(
            ActionType.DATABASE_QUERY, "data.deidentified.x%2500", "resource_control_characters", id="double-enc-nul"
        ),
        pytest.param(ActionType.DATABASE_QUERY, "%00", "resource_control_characters", id="only-encoded-nul"),
        pytest.param(ActionType.DATABASE_QUERY, "data.deidentified.x\n", "resource_control_characters", id="newline"),
        pytest.param(ActionType.DATABASE_QUERY, "data.deidentified.\x85x", "resource_control_characters", id="c1"),
        pytest.param(ActionType.FILE_READ, "/reports/readonly/x.pii", "resource_blocked", id="pii-suffix"),
        pytest.param(ActionType.FILE_READ, "/reports/readonly/X.PII", "resource_blocked", id="pii-suffix-upper"),
        pytest.param(ActionType.FILE_READ, "/reports/readonly/x%2epii", "resource_blocked", id="pii-encoded-dot"),
        pytest.param(ActionType.FILE_WRITE, "/reports/readonly/q3.csv", "action_type_not_allowed", id="file-write"),
        pytest.param(ActionType.FILE_DELETE, "data.deidentified.claims", "action_type_not_allowed", id="delete"),
        pytest.param(ActionType.DATABASE_QUERY, "data.other.claims", "resource_not_allowed", id="not-listed"),
        pytest.param(ActionType.DATABASE_QUERY, "Data.deidentified.claims", "resource_not_allowed", id="allow-case"),
    ],
)
def test_seed_policy_denies_every_reading_trick(
    seed_guard: Guard, action_type: ActionType, resource: str, code: str
) -> None:
    decision = seed_guard.check(action_type, resource)
    assert not decision.allowed
    assert decision.outcome is Outcome.BLOCKED
    assert code in decision.reason_codes, decision.explain()


@pytest.mark.parametrize(
    ("action_type", "resource"),
    [
        (ActionType.DATABASE_QUERY, "data.deidentified.claims"),
        (ActionType.FILE_READ, "/reports/readonly/q3.csv"),
        (ActionType.FILE_READ, "/reports/readonly/2024/q3.csv"),
        (ActionType.DATABASE_QUERY, "data.deidentified.claims%20archive"),
        ("file_read", "/reports/readonly/./q3.csv"),
    ],
)
def test_seed_policy_allows_what_it_lists(seed_guard: Guard, action_type: ActionType, resource: str) -> None:
    decision = seed_guard.check(action_type, resource)
    assert decision.allowed, decision.explain()
    assert decision.outcome is Outcome.ALLOWED
    assert not [reason for reason in decision.reasons if reason.violation]


@pytest.mark.parametrize(
    "resource",
    [
        'data.deidentified."members.pii"',
        "data.deidentified.[members.pii]",
        "data.deidentified.`members.pii`",
        '"data"."phi"."patients"',
        "[data].[phi].[patients]",
        "`data`.`phi`.`patients`",
        "data.%22phi%22.patients",
        '"prod".claims',
    ],
)
def test_quoted_identifiers_are_read_unquoted(tmp_path: Path, resource: str) -> None:
    # A database reads "members.pii" as a table named members.pii, and "data"."phi" as data.phi.
    for policy in (SEED, {"blocked_resources": SEED["blocked_resources"]}):
        guard = make_guard(tmp_path, **policy)
        decision = guard.check(ActionType.DATABASE_QUERY, resource)
        assert not decision.allowed, decision.explain()
        assert "resource_blocked" in decision.reason_codes
        guard.close()


def test_quoted_identifiers_of_an_allowed_table_are_allowed(seed_guard: Guard) -> None:
    assert seed_guard.check(ActionType.DATABASE_QUERY, 'data.deidentified."claims"').allowed
    # Every reading must be allowed, the form as given too: a fully quoted name matches no allowed pattern.
    assert not seed_guard.check(ActionType.DATABASE_QUERY, '"data"."deidentified"."claims"').allowed


def test_traversal_decision_shows_the_normalized_resource(seed_guard: Guard) -> None:
    decision = seed_guard.check(ActionType.FILE_READ, "/reports/readonly/%2e%2e/%2e%2e/etc/passwd")
    assert decision.resource == "/reports/readonly/%2e%2e/%2e%2e/etc/passwd"
    assert decision.normalized_resource == "/etc/passwd"
    assert not decision.allowed


def test_blocked_message_names_the_reading_and_the_pattern(seed_guard: Guard) -> None:
    decision = seed_guard.check(ActionType.DATABASE_QUERY, "ｄａｔａ.phi.patients")
    blocked = next(r for r in decision.reasons if r.code == "resource_blocked")
    assert "'data.phi.patients'" in blocked.message
    assert "'data.phi.*'" in blocked.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM data.phi.patients",
        'SELECT p.name FROM data.deidentified.claims c JOIN "data"."phi"."patients" p ON p.id = c.member',
        "SELECT * FROM data.deidentified.claims, data . phi . patients WHERE 1 = 1",
        "SELECT * FROM (SELECT * FROM ｄａｔａ.phi.patients) AS sub",
        "INSERT INTO exports.out SELECT * FROM data./* hidden */phi.patients",
        "SELECT '--' AS x FROM [data].[phi].patients",
        "select ssn from data.deidentified.members_pii, members.PII",
        "DELETE FROM prod.users",
        # Literals and comments are read too: EXECUTE, dblink and query_to_xml run a literal as SQL, MySQL runs
        # /*! ... */, and what a comment or literal says does not hide what follows it.
        "DO $$ BEGIN EXECUTE 'SELECT * FROM data.phi.patients'; END $$",
        "SELECT query_to_xml('SELECT * FROM data./**/phi.patients', true, false, '')",
        "SELECT /*! FROM data.phi.patients */ 1",
        "SELECT 1 -- it's\n FROM data.phi.patients WHERE a = 'x'",
        "SELECT '--' AS x FROM data.phi.patients",
        # A qualified name counts anywhere: in parentheses, or after a function or a column list in a FROM list.
        "SELECT * FROM ONLY (data.phi.patients)",
        "SELECT * FROM data.deidentified.claims AS c(id, amount), data.phi.patients",
        "SELECT * FROM ROWS FROM (generate_series(1, 2)), data.phi.patients",
        "SELECT * FROM data.deidentified.claims c, (data.phi.patients CROSS JOIN data.deidentified.x)",
        # PostgreSQL's Unicode escapes, in a name and in a literal run as SQL, with an escape character of its own.
        'SELECT * FROM U&"d\\0061ta".phi.patients',
        "SELECT query_to_xml(U&'SELECT * FROM data.ph\\0069.patients', true, false, '')",
        """SELECT * FROM U&"d!0061ta" UESCAPE '!'.phi.patients""",
        """SELECT * FROM data.U&"ph!+000069"/* c */uescape -- d\n '!' . patients""",
        """SELECT query_to_xml(U&'SELECT * FROM data.ph#0069.patients' UESCAPE '#', true, false, '')""",
        # And the backslash escapes of an E'...' literal run as SQL (a quote escaped in it ends nothing).
        r"""SELECT query_to_xml(E'SELECT * FROM data.ph\x69.patients', true, false, '')""",
        r"""SELECT query_to_xml(e'SELECT * FROM data.ph\151.patients', true, false, '')""",
        r"""DO $$ BEGIN EXECUTE E'SELECT \'\' FROM data.ph\u0069.patients'; END $$""",
    ],
)
def test_a_blocked_table_in_the_sql_of_a_database_action_is_blocked_whatever_resource_it_names(
    seed_guard: Guard, sql: str
) -> None:
    """The resource names one table and the query the action carries may read another: an agent allowed to
    query data.deidentified.* read data.phi.patients by naming the allowed table as its resource."""
    for payload in ({"sql": sql}, {"tool": "run_sql", "args": {"query": [sql]}}):
        decision = seed_guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims", payload)
        assert not decision.allowed, decision.explain()
        blocked = next(r for r in decision.reasons if r.code == "resource_blocked")
        assert "in the SQL matches blocked pattern" in blocked.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM claims",
        "SELECT c.amount FROM data.deidentified.claims c /* totals, not phi */",
        "SELECT * FROM data.deidentified.claims WHERE note = 'from the phi team'",
    ],
)
def test_sql_that_names_no_blocked_table_is_judged_by_its_resource(seed_guard: Guard, sql: str) -> None:
    decision = seed_guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims", {"sql": sql})
    assert decision.allowed, decision.explain()


def test_sql_naming_more_tables_than_can_be_checked_is_denied(seed_guard: Guard) -> None:
    many = "SELECT * FROM " + ", ".join(f"data.deidentified.t{i}" for i in range(MAX_SQL_TABLES + 1))
    decision = seed_guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims", {"sql": many})
    assert not decision.allowed and "sql_too_many_tables" in decision.reason_codes
    just = "SELECT * FROM " + ", ".join(f"data.deidentified.t{i}" for i in range(MAX_SQL_TABLES))
    assert seed_guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims", {"sql": just}).allowed


def test_only_database_actions_have_their_payload_read_as_sql(tmp_path: Path) -> None:
    """A message that quotes a query sends text, it reads no table."""
    guard = make_guard(tmp_path, blocked_resources=SEED["blocked_resources"])
    try:
        text = {"body": "run SELECT * FROM data.phi.patients to see them"}
        assert guard.check(ActionType.NETWORK_REQUEST, "mail.send/ops@example.com", text).allowed
        assert not guard.check(ActionType.DATABASE_WRITE, "data.deidentified.claims", text).allowed
    finally:
        guard.close()


# ---- symlinks ------------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """<base>/readonly/{report.csv, link -> ../secret.txt, alias -> real/, outdir -> ../outside/dir}."""
    base = Path(os.path.realpath(tmp_path)) / "tree"  # realpath: the base itself must contain no symlink
    (base / "readonly" / "real").mkdir(parents=True)
    (base / "outside" / "dir").mkdir(parents=True)
    (base / "secret.txt").write_text("secret")
    (base / "outside" / "secret.txt").write_text("secret")
    (base / "readonly" / "report.csv").write_text("a,b\n")
    (base / "readonly" / "real" / "inner.csv").write_text("a,b\n")
    (base / "readonly" / "link").symlink_to(base / "secret.txt")
    (base / "readonly" / "alias").symlink_to(base / "readonly" / "real", target_is_directory=True)
    (base / "readonly" / "outdir").symlink_to(base / "outside" / "dir", target_is_directory=True)
    return base


@pytest.fixture
def tree_guard(tmp_path: Path, tree: Path) -> Iterator[Guard]:
    guard = make_guard(
        tmp_path,
        allowed_action_types=[ActionType.FILE_READ, ActionType.FILE_WRITE, ActionType.DATABASE_QUERY],
        allowed_resources=[f"{tree}/readonly/*"],
    )
    yield guard
    guard.close()


def test_symlink_out_of_the_allowed_tree_is_denied(tree_guard: Guard, tree: Path) -> None:
    decision = tree_guard.check(ActionType.FILE_READ, f"{tree}/readonly/link")
    assert not decision.allowed
    assert "resource_not_allowed" in decision.reason_codes
    assert str(tree / "secret.txt") in decision.explain()


def test_regular_file_in_the_allowed_tree_is_allowed(tree_guard: Guard, tree: Path) -> None:
    assert tree_guard.check(ActionType.FILE_READ, f"{tree}/readonly/report.csv").allowed


def test_symlink_that_stays_inside_the_allowed_tree_is_allowed(tree_guard: Guard, tree: Path) -> None:
    assert tree_guard.check(ActionType.FILE_READ, f"{tree}/readonly/alias/inner.csv").allowed


def test_new_file_under_a_symlinked_directory_out_of_the_tree_is_denied(tree_guard: Guard, tree: Path) -> None:
    decision = tree_guard.check(ActionType.FILE_WRITE, f"{tree}/readonly/outdir/new.csv")
    assert not decision.allowed
    assert "resource_not_allowed" in decision.reason_codes


def test_symlink_resolution_only_applies_to_file_actions(tree_guard: Guard, tree: Path) -> None:
    # A database query names a table, not a path on this machine: the link is not followed.
    assert tree_guard.check(ActionType.DATABASE_QUERY, f"{tree}/readonly/link").allowed


def test_dotdot_after_a_symlinked_directory_is_denied(tree_guard: Guard, tree: Path) -> None:
    # The OS resolves `outdir` before `..`, so this opens <base>/outside/secret.txt; lexically it is
    # <base>/readonly/secret.txt. The escape must be judged by where the OS goes.
    resource = f"{tree}/readonly/outdir/../secret.txt"
    assert Path(resource).read_text() == "secret"
    assert os.path.realpath(resource) == str(tree / "outside" / "secret.txt")
    decision = tree_guard.check(ActionType.FILE_READ, resource)
    assert not decision.allowed, decision.explain()
    assert "resource_not_allowed" in decision.reason_codes


def test_new_nested_path_under_a_symlinked_directory_out_of_the_tree_is_denied(tree_guard: Guard, tree: Path) -> None:
    # <base>/readonly/outdir/sub does not exist yet; a tool that creates parents writes to <base>/outside/dir/sub.
    resource = f"{tree}/readonly/outdir/sub/new.csv"
    assert os.path.realpath(resource) == str(tree / "outside" / "dir" / "sub" / "new.csv")
    decision = tree_guard.check(ActionType.FILE_WRITE, resource)
    assert not decision.allowed, decision.explain()
    assert "resource_not_allowed" in decision.reason_codes


@pytest.mark.parametrize(
    "link_then_up",
    ["out\u200bdir/../", "outdir\\..\\", "outdir/%2\u200be%2\u200be/", "outdir%2\u200bf..%2\u200bf", "ｏutdir／..／"],
)
def test_dotdot_after_a_symlink_is_denied_however_it_is_spelled(
    tree_guard: Guard, tree: Path, link_then_up: str
) -> None:
    # Each spelling reads, once cleaned, as outdir/../secret.txt: the OS follows outdir (-> <base>/outside/dir)
    # before `..` and opens <base>/outside/secret.txt. Symlinks must be resolved on the cleaned form too.
    resource = f"{tree}/readonly/{link_then_up}secret.txt"
    decision = tree_guard.check(ActionType.FILE_READ, resource)
    assert not decision.allowed, decision.explain()
    assert "resource_not_allowed" in decision.reason_codes
    assert str(tree / "outside" / "secret.txt") in readings(resource, resolve_symlinks=True).all


@pytest.mark.parametrize(
    ("pattern", "opens"),
    [("readonly/report.cs[v]", "readonly/report.csv"), ("readonly/outdi[r]/*", "outside/dir/secret.txt")],
)
def test_glob_characters_in_a_file_resource_are_a_violation(
    tree_guard: Guard, tree: Path, pattern: str, opens: str
) -> None:
    (tree / "outside" / "dir" / "secret.txt").write_text("secret")
    # A tool that expands globs opens what the pattern matches, which may be outside the allowed folder.
    assert [os.path.realpath(p) for p in glob.glob(f"{tree}/{pattern}")] == [str(tree / opens)]
    decision = tree_guard.check(ActionType.FILE_READ, f"{tree}/{pattern}")
    assert not decision.allowed, decision.explain()
    assert "resource_glob_characters" in decision.reason_codes


@pytest.mark.parametrize("resource", ["/r/x?.csv", "/r/*", "/r/x%5Ba%5D.csv", "/r/x％5b1].csv"])
def test_glob_characters_are_a_violation_for_file_actions_only(resource: str) -> None:
    policy = Policy.build()
    assert codes(policy, ActionType.FILE_READ, resource) == {"resource_glob_characters"}
    assert codes(policy, ActionType.FILE_DELETE, resource) == {"resource_glob_characters"}
    assert codes(policy, ActionType.DATABASE_QUERY, resource) == set()


@pytest.mark.parametrize("suffix", ["/", "//", "/./"])
def test_trailing_slash_does_not_hide_a_blocked_suffix(tmp_path: Path, tree: Path, suffix: str) -> None:
    # The OS ignores a trailing slash on a file name: `members.pii/` opens members.pii.
    (tree / "readonly" / "members.pii").write_text("pii")
    resource = f"{tree}/readonly/members.pii{suffix}"
    assert os.path.realpath(resource) == str(tree / "readonly" / "members.pii")
    guard = make_guard(tmp_path, allowed_resources=[f"{tree}/readonly/*"], blocked_resources=["*.pii"])
    decision = guard.check(ActionType.FILE_READ, resource)
    assert not decision.allowed, decision.explain()
    assert "resource_blocked" in decision.reason_codes
    guard.close()


# ---- allow-lists, blocks and globs -------------------------------------------------------------------------


@pytest.mark.parametrize("action_type", list(ActionType))
def test_unconfigured_allow_lists_allow_everything(action_type: ActionType) -> None:
    policy = Policy.build()
    assert policy.allowed_action_types is None
    assert policy.allowed_resources is None
    for resource in ("data.phi.patients", "/etc/passwd", "ANYTHING", "../../x", "%2e%2e"):
        assert codes(policy, action_type, resource) == set()


def test_empty_allowed_resources_allow_nothing() -> None:
    policy = Policy.build(allowed_resources=[])
    assert policy.allowed_resources == ()
    assert codes(policy, ActionType.DATABASE_QUERY, "data.deidentified.claims") == {"resource_not_allowed"}


def test_empty_allowed_action_types_allow_no_action_type() -> None:
    policy = Policy.build(allowed_action_types=[])
    assert policy.allowed_action_types == ()
    assert codes(policy, ActionType.DATABASE_QUERY, "data.deidentified.claims") == {"action_type_not_allowed"}


def test_empty_allowed_action_types_deny_through_the_guard(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, allowed_action_types=[])
    try:
        decision = guard.check(ActionType.CODE_EXECUTION, "script.py")
        assert not decision.allowed
        assert "action_type_not_allowed" in decision.reason_codes
    finally:
        guard.close()


def test_action_type_outside_the_allow_list_is_a_violation() -> None:
    policy = Policy.build(allowed_action_types=["database_query", ActionType.FILE_READ])
    assert policy.allowed_action_types == (ActionType.DATABASE_QUERY, ActionType.FILE_READ)
    assert codes(policy, ActionType.DATABASE_QUERY, "t") == set()
    assert codes(policy, ActionType.FILE_READ, "t") == set()
    [reason] = CompiledPolicy(policy).violations(ActionType.DATABASE_WRITE, readings("t"))
    assert reason.code == "action_type_not_allowed"
    assert "database_write" in reason.message


def test_single_action_type_string_is_accepted() -> None:
    assert Policy.build(allowed_action_types="FILE_READ").allowed_action_types == (ActionType.FILE_READ,)


def test_blocked_pattern_beats_allowed_pattern() -> None:
    policy = Policy.build(allowed_resources=["data.*"], blocked_resources=["data.phi.*"])
    assert codes(policy, ActionType.DATABASE_QUERY, "data.claims") == set()
    assert codes(policy, ActionType.DATABASE_QUERY, "data.phi.patients") == {"resource_blocked"}


def test_same_pattern_allowed_and_blocked_is_blocked() -> None:
    policy = Policy.build(allowed_resources=["data.*"], blocked_resources=["data.*"])
    assert codes(policy, ActionType.DATABASE_QUERY, "data.claims") == {"resource_blocked"}


def test_blocked_patterns_match_case_insensitively_on_both_sides() -> None:
    policy = Policy.build(blocked_resources=["DATA.PHI.*"])
    for resource in ("data.phi.x", "DATA.PHI.X", "Data.Phi.x"):
        assert codes(policy, ActionType.DATABASE_QUERY, resource) == {"resource_blocked"}, resource
    assert codes(policy, ActionType.DATABASE_QUERY, "data.phl.x") == set()


def test_allowed_patterns_match_case_sensitively() -> None:
    policy = Policy.build(allowed_resources=["data.deidentified.*"])
    assert codes(policy, ActionType.DATABASE_QUERY, "data.deidentified.Claims") == set()
    for resource in ("Data.deidentified.claims", "DATA.DEIDENTIFIED.CLAIMS"):
        assert codes(policy, ActionType.DATABASE_QUERY, resource) == {"resource_not_allowed"}, resource
    upper = Policy.build(allowed_resources=["DATA.*"])
    assert codes(upper, ActionType.DATABASE_QUERY, "data.claims") == {"resource_not_allowed"}


def test_star_matches_dots_and_slashes() -> None:
    policy = Policy.build(allowed_resources=["/reports/*", "data.*"])
    assert codes(policy, ActionType.DATABASE_QUERY, "/reports/2024/q3/summary.csv") == set()
    assert codes(policy, ActionType.DATABASE_QUERY, "data.a.b.c") == set()
    assert codes(policy, ActionType.DATABASE_QUERY, "/reports") == {"resource_not_allowed"}


def test_star_matches_the_empty_string() -> None:
    assert codes(Policy.build(allowed_resources=["data.*"]), ActionType.DATABASE_QUERY, "data.") == set()


def test_question_mark_matches_exactly_one_character() -> None:
    policy = Policy.build(allowed_resources=["t?"])
    assert codes(policy, ActionType.DATABASE_QUERY, "t1") == set()
    assert codes(policy, ActionType.DATABASE_QUERY, "t.") == set()
    assert codes(policy, ActionType.DATABASE_QUERY, "t") == {"resource_not_allowed"}
    assert codes(policy, ActionType.DATABASE_QUERY, "t12") == {"resource_not_allowed"}


def test_bracket_matches_one_listed_character() -> None:
    policy = Policy.build(blocked_resources=["table_[abc]"])
    assert codes(policy, ActionType.DATABASE_QUERY, "table_b") == {"resource_blocked"}
    assert codes(policy, ActionType.DATABASE_QUERY, "TABLE_C") == {"resource_blocked"}
    assert codes(policy, ActionType.DATABASE_QUERY, "table_d") == set()
    assert codes(policy, ActionType.DATABASE_QUERY, "table_ab") == set()


def test_negated_bracket() -> None:
    policy = Policy.build(allowed_resources=["v[!0]"])
    assert codes(policy, ActionType.DATABASE_QUERY, "v1") == set()
    assert codes(policy, ActionType.DATABASE_QUERY, "v0") == {"resource_not_allowed"}


def test_pattern_must_match_the_whole_resource() -> None:
    policy = Policy.build(blocked_resources=["phi"], allowed_resources=["data"])
    assert codes(policy, ActionType.DATABASE_QUERY, "data.phi") == {"resource_not_allowed"}
    assert codes(policy, ActionType.DATABASE_QUERY, "xdata") == {"resource_not_allowed"}


def test_every_reading_must_be_allowed() -> None:
    # Raw reading matches the allow-list, the decoded one (/reports/secret.csv) does not.
    policy = Policy.build(allowed_resources=["/reports/readonly/*"])
    assert codes(policy, ActionType.DATABASE_QUERY, "/reports/readonly/%2e%2e/secret.csv") == {"resource_not_allowed"}


def test_no_reading_may_be_blocked() -> None:
    # Only the raw reading contains '%2e'; one blocked reading is enough.
    policy = Policy.build(blocked_resources=["*%2e*"])
    assert codes(policy, ActionType.DATABASE_QUERY, "/a/%2e/b") == {"resource_blocked"}
    # Only the decoded reading matches.
    policy = Policy.build(blocked_resources=["/a/b"])
    assert codes(policy, ActionType.DATABASE_QUERY, "/a/%2e/b") == {"resource_blocked"}


def test_control_characters_are_a_violation_even_without_patterns() -> None:
    policy = Policy.build()
    for resource in ("x\x00", "x%00", "x%2500", "\x1bx", "x\x7f", "x%C2%85"):
        assert codes(policy, ActionType.DATABASE_QUERY, resource) == {"resource_control_characters"}, resource
    assert codes(policy, ActionType.DATABASE_QUERY, "x%2541") == set()


def test_resource_with_too_many_readings_is_a_violation() -> None:
    layer = text = "\u200b\\％"
    for _ in range(4):  # a zero-width space, a backslash and a fullwidth percent hidden in each layer of encoding
        layer = quote(layer, safe="")
        text += layer
    assert "resource_too_many_readings" in codes(Policy.build(), ActionType.DATABASE_QUERY, f"data.x{text}")


@pytest.mark.parametrize(
    ("pattern", "resource"),
    [
        (r"C:\Secrets\*", "C:/Secrets/key.txt"),
        (r"C:\Secrets\*", r"C:\Secrets\key.txt"),
        ("/srv/secrets/", "/srv/secrets"),
        ("/srv/./secrets//*", "/srv/secrets/key"),
        ('"data"."phi".*', "data.phi.patients"),
    ],
)
def test_patterns_are_normalized_like_resources(pattern: str, resource: str) -> None:
    assert "resource_blocked" in codes(Policy.build(blocked_resources=[pattern]), ActionType.FILE_READ, resource)
    assert not codes(Policy.build(allowed_resources=[pattern]), ActionType.FILE_READ, resource)


def test_blocked_message_names_the_pattern_as_written() -> None:
    policy = CompiledPolicy(Policy.build(blocked_resources=[r"C:\Secrets\*"]))
    (reason,) = policy.violations(ActionType.FILE_READ, readings("C:/Secrets/key.txt"))
    assert "'c:\\\\secrets\\\\*'" in reason.message, reason.message


def test_url_allowed_pattern_allows_its_urls() -> None:
    # Resource readings collapse `//`, so an allowed `https://host/*` must match `https:/host/...` as well.
    assert not codes(Policy.build(allowed_resources=["https://api.example.com/*"]), ActionType.API_CALL,
                     "https://api.example.com/v1")  # fmt: skip


def test_all_violations_are_reported_together() -> None:
    policy = Policy.build(allowed_action_types=["file_read"], allowed_resources=["ok.*"], blocked_resources=["*.pii"])
    assert codes(policy, ActionType.DATABASE_WRITE, "x.pii\x00") == {
        "action_type_not_allowed",
        "resource_control_characters",
        "resource_blocked",
        "resource_not_allowed",
    }


def test_patterns_are_nfkc_normalized_and_stripped() -> None:
    policy = Policy.build(allowed_resources=["  ｄａｔａ.*  "], blocked_resources=["ＰＲＯＤ.*"])
    assert policy.allowed_resources == ("data.*",)
    assert policy.blocked_resources == ("PROD.*",)
    assert codes(policy, ActionType.DATABASE_QUERY, "data.x") == set()
    assert codes(policy, ActionType.DATABASE_QUERY, "prod.x") == {"resource_blocked", "resource_not_allowed"}


def test_single_pattern_string_is_a_one_pattern_list() -> None:
    assert Policy.build(blocked_resources="data.phi.*").blocked_resources == ("data.phi.*",)


def test_policy_hash_changes_with_the_rules() -> None:
    a = Policy.build(blocked_resources=["data.phi.*"])
    assert a.policy_hash == Policy.build(blocked_resources=["data.phi.*"]).policy_hash
    assert a.policy_hash != Policy.build(blocked_resources=["data.pii.*"]).policy_hash


# ---- validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"allowed_resourcs": ["x"]}, "allowed_resourcs"),
        ({"mode": "explode"}, "mode"),
        ({"mode": 3}, "mode"),
        ({"allowed_action_types": ["file_reed"]}, "allowed_action_types"),
        ({"allowed_action_types": ["file_read", "teleport"]}, "allowed_action_types"),
        ({"allowed_resources": [""]}, "allowed_resources"),
        ({"allowed_resources": ["   "]}, "allowed_resources"),
        ({"blocked_resources": [""]}, "blocked_resources"),
        ({"blocked_resources": [3]}, "blocked_resources"),
        ({"blocked_resources": ["data.\x00*"]}, "blocked_resources"),
        ({"blocked_resources": ["data\tphi"]}, "blocked_resources"),
        ({"allowed_resources": ["data.\u200b*"]}, "allowed_resources"),
        ({"allowed_resources": ["\u202edata.*"]}, "allowed_resources"),
        ({"max_risk_score": -0.01}, "max_risk_score"),
        ({"max_risk_score": 1.01}, "max_risk_score"),
        ({"max_risk_score": float("nan")}, "max_risk_score"),
        ({"max_risk_score": "high"}, "max_risk_score"),
        ({"max_actions_per_minute": 0}, "max_actions_per_minute"),
        ({"rollback_window": -1}, "rollback_window"),
    ],
)
def test_invalid_policy_raises_policy_error_naming_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.build(**fields)
    assert isinstance(info.value, ValueError)
    assert named in str(info.value)


@pytest.mark.parametrize("field", ["allowed_action_types", "allowed_resources", "blocked_resources"])
def test_non_list_value_is_a_policy_error_not_a_type_error(field: str) -> None:
    # e.g. `blocked_resources: 5` in a YAML file
    with pytest.raises(PolicyError, match=field):
        Policy.build(**{field: 5})


def test_unknown_field_error_lists_the_accepted_fields() -> None:
    with pytest.raises(PolicyError, match="unknown field 'alowed_resources'") as info:
        Policy.build(alowed_resources=["x"])
    assert "allowed_resources" in str(info.value).split("accepted fields:")[1]


def test_several_problems_are_reported_in_one_error() -> None:
    with pytest.raises(PolicyError) as info:
        Policy.build(mode="nope", max_risk_score=2)
    assert "mode" in str(info.value)
    assert "max_risk_score" in str(info.value)


@pytest.mark.parametrize("score", [0.0, 0.5, 1.0])
def test_max_risk_score_bounds_are_inclusive(score: float) -> None:
    assert Policy.build(max_risk_score=score).max_risk_score == score


def test_mode_is_parsed_case_insensitively() -> None:
    assert Policy.build(mode=" PAUSE ").mode is KillSwitchMode.PAUSE


def test_guard_rejects_an_invalid_policy(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="blocked_resources"):
        make_guard(tmp_path, blocked_resources=["ok", "bad\x00"])


# ---- policy files ---------------------------------------------------------------------------------------------

YAML_POLICY = """\
allowed_action_types: [database_query, file_read]
allowed_resources:
  - "data.deidentified.*"
  - "/reports/readonly/*"
blocked_resources: ["data.phi.*", "*.pii", "prod.*"]
max_risk_score: 0.8
mode: pause
"""

TOML_POLICY = """\
allowed_action_types = ["database_query", "file_read"]
allowed_resources = ["data.deidentified.*", "/reports/readonly/*"]
blocked_resources = ["data.phi.*", "*.pii", "prod.*"]
max_risk_score = 0.8
mode = "pause"
"""


@pytest.mark.parametrize(
    ("name", "text"), [("policy.yaml", YAML_POLICY), ("policy.yml", YAML_POLICY), ("p.toml", TOML_POLICY)]
)
def test_policy_file_loads_into_the_same_policy(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    policy = Policy.build(**load_policy_file(path))
    assert policy.allowed_action_types == (ActionType.DATABASE_QUERY, ActionType.FILE_READ)
    assert policy.allowed_resources == ("data.deidentified.*", "/reports/readonly/*")
    assert policy.blocked_resources == ("data.phi.*", "*.pii", "prod.*")
    assert policy.max_risk_score == 0.8
    assert policy.mode is KillSwitchMode.PAUSE
    assert policy.policy_hash == Policy.build(**SEED, max_risk_score=0.8, mode="pause").policy_hash
    assert codes(policy, ActionType.DATABASE_QUERY, "DATA.PHI.x") == {"resource_blocked", "resource_not_allowed"}


def test_guard_from_policy_file_enforces_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(TOML_POLICY.replace('"pause"', '"block"'), encoding="utf-8")
    guard = Guard.from_file(path, audit=f"sqlite:///{tmp_path}/audit.db", home=tmp_path / "home")
    try:
        assert guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").allowed
        assert not guard.check(ActionType.DATABASE_QUERY, "ｄａｔａ.phi.patients").allowed
    finally:
        guard.close()


def test_empty_yaml_file_is_an_empty_policy(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_policy_file(path) == {}


@pytest.mark.parametrize(
    ("name", "text"),
    [("p.yaml", "allowed_resources: [x]\nblocked_resorces: [y]\n"), ("p.toml", 'blocked_resorces = ["y"]\n')],
)
def test_unknown_field_in_policy_file_is_named(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError, match="blocked_resorces"):
        Policy.build(**load_policy_file(path))
    with pytest.raises(PolicyError, match="blocked_resorces") as info:
        Guard.from_file(path, audit=f"sqlite:///{tmp_path}/audit.db", home=tmp_path / "home")
    assert str(path) in str(info.value)


def test_invalid_value_in_policy_file_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("mode: explode\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="mode") as info:
        Guard.from_file(path, audit=f"sqlite:///{tmp_path}/audit.db", home=tmp_path / "home")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("p.yaml", "allowed_resources: [data.*\nmode: block\n", "YAML"),
        ("p.yaml", "a: b: c\n", "YAML"),
        ("p.toml", 'allowed_resources = ["data.*"\n', "TOML"),
        ("p.toml", "mode = block\n", "TOML"),
    ],
)
def test_invalid_syntax_in_policy_file_is_a_policy_error(tmp_path: Path, name: str, text: str, kind: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError, match=f"not valid {kind}"):
        load_policy_file(path)


def test_policy_file_must_hold_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("- data.*\n- prod.*\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="mapping"):
        load_policy_file(path)


def test_policy_file_needs_a_known_suffix(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"\.yaml, \.yml or \.toml"):
        load_policy_file(path)


def test_missing_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy_file(tmp_path / "absent.yaml")


def test_policy_file_that_is_not_utf8_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes("blocked_resources: [donn\u00e9es.*]\n".encode("latin-1"))
    with pytest.raises(PolicyError, match=str(path.name)):
        load_policy_file(path)


# ---- the compiled policy against a slow reference ----------------------------------------------------------

PATTERN_TOKENS = ["a", "b", "A", ".", "/", "*", "?", "[ab]", "%2e", "ａ", "..", "B"]
RESOURCE_TOKENS = ["a", "b", "A", ".", "/", "%2e", "%252e", "ａ", "\u200b", "..", "B", "%00", "\x00", "\\", " "]

patterns = st.lists(st.sampled_from(PATTERN_TOKENS), min_size=1, max_size=6).map("".join)
pattern_lists = st.lists(patterns, max_size=4)
resources = (
    st.lists(st.sampled_from(RESOURCE_TOKENS), min_size=1, max_size=8).map("".join).filter(lambda s: s.strip() != "")
)
# Non-empty: an empty allow-list of action types has its own test (test_empty_allowed_action_types_...).
action_type_lists = st.none() | st.lists(st.sampled_from(list(ActionType)), min_size=1, max_size=3)


def pattern_forms(pattern: str) -> tuple[str, str]:
    """A pattern as written and normalized like a resource's path (identifier quotes other than brackets gone)."""
    return pattern, normalized_path(pattern.replace('"', "").replace("`", ""))


def reference_violations(policy: Policy, action_type: ActionType, resource: str) -> set[str]:
    """The contract, one pattern and one reading at a time."""
    read = readings(resource)
    found = set()
    if policy.allowed_action_types is not None and action_type not in policy.allowed_action_types:
        found.add("action_type_not_allowed")
    if any(unicodedata.category(ch) == "Cc" for reading in read.all for ch in reading):
        found.add("resource_control_characters")
    if any(glob_character in r for r in read.all for glob_character in "*?[]") and action_type.is_file:
        found.add("resource_glob_characters")
    blocked = [form for p in policy.blocked_resources for form in pattern_forms(p)]
    if any(fnmatch.fnmatchcase(r.lower(), p.lower()) for r in read.all for p in blocked):
        found.add("resource_blocked")
    if policy.allowed_resources is not None:
        allowed = [form for p in policy.allowed_resources for form in pattern_forms(p)]
        if not all(any(fnmatch.fnmatchcase(r, p) for p in allowed) for r in read.all):
            found.add("resource_not_allowed")
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    allowed=st.none() | pattern_lists,
    blocked=pattern_lists,
    types=action_type_lists,
    action_type=st.sampled_from([ActionType.DATABASE_QUERY, ActionType.API_CALL, ActionType.CUSTOM]),
    resource=resources,
)
@example(allowed=["a*"], blocked=["A*"], types=None, action_type=ActionType.DATABASE_QUERY, resource="ab")
@example(allowed=["a/*"], blocked=[], types=None, action_type=ActionType.DATABASE_QUERY, resource="a/%2e%2e/b")
@example(
    allowed=["ａ*"], blocked=["*B"], types=[ActionType.API_CALL], action_type=ActionType.CUSTOM, resource="ａ\u200bb"
)
def test_compiled_policy_agrees_with_reference(
    allowed: list[str] | None,
    blocked: list[str],
    types: list[ActionType] | None,
    action_type: ActionType,
    resource: str,
) -> None:
    policy = Policy.build(allowed_resources=allowed, blocked_resources=blocked, allowed_action_types=types)
    found = CompiledPolicy(policy).violations(action_type, readings(resource))
    found_codes = [reason.code for reason in found]
    assert len(found_codes) == len(set(found_codes))
    assert set(found_codes) == reference_violations(policy, action_type, resource)


@settings(max_examples=300, deadline=None)
@given(pattern=patterns, resource=resources)
def test_a_pattern_both_allowed_and_blocked_never_allows(pattern: str, resource: str) -> None:
    policy = Policy.build(allowed_resources=[pattern], blocked_resources=[pattern])
    assert CompiledPolicy(policy).violations(ActionType.DATABASE_QUERY, readings(resource)) != []
