"""Resource readings: every way a resource string could be read, so none slips past a pattern."""

from __future__ import annotations

import os
import string
import unicodedata
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from risk.resources import MAX_READINGS, MAX_RESOURCE_LENGTH, normalized_path, readings


def canonical(resource: str) -> str:
    return readings(resource).canonical


# ---- the raw reading and percent-decoding -------------------------------------------------------------------


def test_plain_resource_has_one_reading() -> None:
    r = readings("data.deidentified.claims")
    assert r.canonical == "data.deidentified.claims"
    assert r.all == ("data.deidentified.claims",)
    assert not r.has_control_characters


def test_raw_resource_is_always_a_reading() -> None:
    for raw in ("/a/../b", "%2e%2e", "ｄａｔａ", "a\u200bb", " x ", "a\x00"):
        assert raw in readings(raw).all, raw


def test_percent_encoded_traversal_is_decoded_and_normalized() -> None:
    r = readings("/reports/readonly/%2e%2e/%2e%2e/etc/passwd")
    assert "/reports/readonly/../../etc/passwd" in r.all
    assert r.canonical == "/etc/passwd"
    assert r.canonical in r.all


def test_double_encoding_is_decoded_in_two_rounds() -> None:
    r = readings("/reports/readonly/%252e%252e/x")
    assert "/reports/readonly/%2e%2e/x" in r.all
    assert "/reports/readonly/../x" in r.all
    assert r.canonical == "/reports/x"


def test_triple_encoding_is_decoded_in_three_rounds() -> None:
    r = readings("%25252e%25252e/x")
    assert {"%252e%252e/x", "%2e%2e/x", "../x"} <= set(r.all)
    assert r.canonical == "../x"


def test_uppercase_percent_escapes_are_decoded() -> None:
    assert canonical("/a/%2E%2E/b") == "/b"
    assert canonical("/a%2Fb") == "/a/b"


def test_percent_encoded_utf8_is_decoded() -> None:
    # %EF%BD%84 is fullwidth 'ｄ': decoded, then NFKC-folded.
    assert canonical("%EF%BD%84ata.phi") == "data.phi"


def test_invalid_percent_sequences_are_kept() -> None:
    r = readings("100%zz")
    assert r.canonical == "100%zz"
    assert not r.has_control_characters


# ---- Unicode ---------------------------------------------------------------------------------------------------


def test_fullwidth_is_folded_by_nfkc() -> None:
    r = readings("ｄａｔａ.phi.patients")
    assert "data.phi.patients" in r.all
    assert r.canonical == "data.phi.patients"


def test_fullwidth_path_separators_and_dots_are_normalized() -> None:
    assert canonical("／reports／readonly／．．／．．／etc／passwd") == "/etc/passwd"


def test_compatibility_characters_are_folded() -> None:
    assert canonical("ﬁle.txt") == "file.txt"  # ligature
    assert canonical("data.ᵖhi") == "data.phi"  # modifier letter


@pytest.mark.parametrize("invisible", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u00ad"])
def test_format_characters_are_removed(invisible: str) -> None:
    r = readings(f"data.p{invisible}hi.patients")
    assert r.canonical == "data.phi.patients"
    assert "data.phi.patients" in r.all
    assert not r.has_control_characters


def test_format_characters_inside_dotdot_do_not_hide_traversal() -> None:
    assert canonical("/reports/readonly/.\u200b./.\u200d./etc/passwd") == "/etc/passwd"


# ---- control characters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    ["x\x00", "\x00", "x\x01y", "x\x1f", "x\x7f", "x\x85", "x\x9f", "x\n", "x\ty", "%00", "x%0a", "x%2500", "x%C2%85"],
)
def test_control_characters_raw_or_decoded_are_reported(resource: str) -> None:
    r = readings(resource)
    assert r.has_control_characters
    assert not any(unicodedata.category(ch) == "Cc" for ch in r.canonical)


@pytest.mark.parametrize("resource", ["x", "x%41", "x%2541", "ｘ", "x\u200by", "x%25"])
def test_no_control_characters_reported_when_there_are_none(resource: str) -> None:
    assert not readings(resource).has_control_characters


# ---- path normalization --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("/..", "/"),
        ("/../..", "/"),
        ("/", "/"),
        ("//", "/"),
        ("a/./b//c", "a/b/c"),
        ("a/b/", "a/b"),
        ("/a/b/", "/a/b"),
        ("/a/b//", "/a/b"),
        ("/a/b/../", "/a"),
        ("./", "."),
        ("a/b/..", "a"),
        ("a/..", "."),
        (".", "."),
        ("..", ".."),
        ("./a", "a"),
        ("a/../..", ".."),
        ("../a/../../b", "../../b"),
        ("..\\..\\windows", "../../windows"),
        ("C:\\Users\\..\\Windows\\system32", "C:/Windows/system32"),
        ("/reports/readonly/../../etc//passwd", "/etc/passwd"),
        ("/reports/readonly/./q3.csv", "/reports/readonly/q3.csv"),
        ("data.deidentified.claims", "data.deidentified.claims"),
        ("data..phi", "data..phi"),
        ("  /a/../b  ", "/b"),
    ],
)
def test_path_normalization(resource: str, expected: str) -> None:
    r = readings(resource)
    assert r.canonical == expected
    assert expected in r.all


@pytest.mark.parametrize(
    "resource", ['"data"."phi".x', "[data].[phi].x", "`data`.`phi`.x", 'data."phi".x', "data.%5Bphi%5D.x"]
)
def test_identifier_quotes_are_removed_in_a_reading(resource: str) -> None:
    r = readings(resource)
    assert "data.phi.x" in r.all
    assert resource in r.all


def test_the_canonical_reading_keeps_identifier_quotes() -> None:
    assert readings('data."Claims 2024"').canonical == 'data."Claims 2024"'


# ---- symlinks ------------------------------------------------------------------------------------------------------


@pytest.fixture
def base(tmp_path: Path) -> Path:
    root = Path(os.path.realpath(tmp_path))
    (root / "inside").mkdir()
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_text("s")
    (root / "inside" / "plain.txt").write_text("p")
    (root / "inside" / "link").symlink_to(root / "outside" / "secret.txt")
    (root / "inside" / "dirlink").symlink_to(root / "outside", target_is_directory=True)
    return root


def test_symlink_is_read_at_its_target(base: Path) -> None:
    r = readings(f"{base}/inside/link", resolve_symlinks=True)
    assert f"{base}/inside/link" in r.all
    assert f"{base}/outside/secret.txt" in r.all
    assert r.canonical == f"{base}/inside/link"


def test_new_file_in_a_symlinked_directory_is_read_at_its_target(base: Path) -> None:
    r = readings(f"{base}/inside/dirlink/new.txt", resolve_symlinks=True)
    assert f"{base}/outside/new.txt" in r.all


def test_symlinks_are_not_followed_unless_asked(base: Path) -> None:
    assert readings(f"{base}/inside/link").all == (f"{base}/inside/link",)


def test_plain_file_gets_no_extra_reading(base: Path) -> None:
    assert readings(f"{base}/inside/plain.txt", resolve_symlinks=True).all == (f"{base}/inside/plain.txt",)


def test_path_that_does_not_exist_gets_no_extra_reading(base: Path) -> None:
    assert readings(f"{base}/nowhere/x.txt", resolve_symlinks=True).all == (f"{base}/nowhere/x.txt",)


def test_symlinks_are_resolved_before_dotdot(base: Path) -> None:
    # The OS follows dirlink (-> <base>/outside) before applying `..`, so this opens <base>/secret.txt;
    # lexically it is <base>/inside/secret.txt. The reading must say where the OS goes.
    (base / "secret.txt").write_text("top")
    resource = f"{base}/inside/dirlink/../secret.txt"
    assert Path(resource).read_text() == "top"
    r = readings(resource, resolve_symlinks=True)
    assert f"{base}/secret.txt" in r.all, r.all


@pytest.mark.parametrize(
    "spelling", ["dir\u200blink/../", "dirlink\\..\\", "dirlink/%2\u200be%2\u200be/", "ｄirlink/../"]
)
def test_symlinks_are_resolved_on_every_cleaned_form(base: Path, spelling: str) -> None:
    # Cleaned, each is inside/dirlink/../top.txt, which the OS opens as <base>/top.txt (dirlink -> outside).
    (base / "top.txt").write_text("top")
    r = readings(f"{base}/inside/{spelling}top.txt", resolve_symlinks=True)
    assert f"{base}/top.txt" in r.all, r.all


# ---- inputs that are not resources ----------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["", " ", "\t\n", None, 5, b"data.x", ["data.x"]])
def test_not_a_resource_is_a_value_error(resource: object) -> None:
    with pytest.raises(ValueError, match="resource"):
        readings(resource)  # type: ignore[arg-type]


@pytest.mark.parametrize("expanding", ["\ufdfa", "%EF%B7%BA", "\u3300"])
def test_length_limit_holds_after_nfkc_expansion(expanding: str) -> None:
    # U+FDFA is one character that NFKC makes eighteen; U+3300 (a squared katakana word) makes four.
    with pytest.raises(ValueError, match=f"once normalized.*{MAX_RESOURCE_LENGTH}"):
        readings("/reports/readonly/" + expanding * (MAX_RESOURCE_LENGTH // len(expanding) // 2))
    assert readings("/r/" + expanding).canonical != "/r/" + expanding


def test_length_limit() -> None:
    assert readings("a" * MAX_RESOURCE_LENGTH).canonical == "a" * MAX_RESOURCE_LENGTH
    with pytest.raises(ValueError, match=str(MAX_RESOURCE_LENGTH)):
        readings("a" * (MAX_RESOURCE_LENGTH + 1))


# ---- properties ------------------------------------------------------------------------------------------------------

ascii_without_percent = st.text(alphabet=st.sampled_from([c for c in map(chr, range(128)) if c != "%"]), min_size=1)
path_like = st.lists(st.sampled_from(["a", "b", ".", "..", "/", "\\", " ", "\x00", "x y"]), min_size=1).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(ascii_without_percent, path_like, st.text(alphabet=string.printable.replace("%", ""), min_size=1)))
@example("./ a")
@example("a /.")
def test_canonical_is_idempotent_for_ascii_without_percent(resource: str) -> None:
    if not resource.strip():
        return
    once = canonical(resource)
    if not once.strip():
        return
    assert canonical(once) == once


unicode_resources = st.text(
    alphabet=st.sampled_from(["a", "B", ".", "/", "%", "2", "e", "0", "ａ", "\u200b", "\x00", "\x85", "ﬁ", "．", " "]),
    min_size=1,
).filter(lambda s: s.strip() != "")


@settings(max_examples=300, deadline=None)
@given(unicode_resources)
def test_readings_hold_the_raw_form_and_a_clean_canonical_form(resource: str) -> None:
    r = readings(resource)
    assert resource in r.all
    assert r.canonical in r.all
    assert len(set(r.all)) == len(r.all)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in r.canonical)
    assert r.canonical == unicodedata.normalize("NFKC", r.canonical)
    if any(unicodedata.category(ch) == "Cc" for ch in resource):
        assert r.has_control_characters


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("/a/b/%2\u200be%2\u200be/c", "/a/c"),  # a zero-width space splitting an escape
        ("/a/b/%\u200b2e%2e/c", "/a/c"),
        ("/a/b/%25\u200b2e%2e/c", "/a/c"),  # ... or a double escape
        ("/a/b/％2e％2e/c", "/a/c"),  # fullwidth percent signs
        ("/a/b/..%5c..%5cc", "/c"),  # an encoded backslash
    ],
)
def test_every_step_runs_after_every_other(resource: str, expected: str) -> None:
    r = readings(resource)
    assert r.canonical == expected
    assert expected in r.all


composable = (
    st.lists(
        st.sampled_from(["a", "/", ".", "..", "%", "2", "e", "5", "c", "\\", "\u200b", "％", "ｅ", " ", '"', "["]),
        max_size=16,
    )
    .map("".join)
    .filter(lambda s: s.strip() != "")
)


@settings(max_examples=300, deadline=None)
@given(composable)
@example("%2\u200be")
@example("a\\%\u200b2e")
def test_readings_are_closed_under_every_step(resource: str) -> None:
    # Whatever step a consumer applies to whichever reading, the result (path-normalized) is a reading too.
    r = readings(resource)
    if r.over_encoded or r.too_many_readings:
        return
    steps = [
        lambda t: unicodedata.normalize("NFKC", t),
        lambda t: "".join(c for c in t if unicodedata.category(c) not in ("Cf", "Cc")),
        lambda t: t.replace("\\", "/"),
        lambda t: unquote(t, errors="replace"),
        lambda t: t.translate(str.maketrans("", "", '"`[]')),
    ]
    for reading in r.all:
        for step in steps:
            if stepped := step(reading).strip():
                assert normalized_path(stepped) in r.all, (reading, stepped)


def layered(n: int) -> str:
    """A zero-width space, a backslash and a fullwidth percent, then the same percent-encoded n times over:
    every step can run or not before every decoding, so the readings multiply."""
    text = layer = "\u200b\\％"
    for _ in range(n):
        layer = quote(layer, safe="")
        text += layer
    return text


def test_readings_stay_bounded() -> None:
    assert not readings(f"/a/{layered(1)}").too_many_readings
    r = readings(f"/a/{layered(4)}")
    assert r.too_many_readings
    assert len(r.all) <= 2 * MAX_READINGS + 10


def test_resource_still_encoded_after_the_decode_rounds_is_flagged() -> None:
    assert not readings("/r/%2525252e%2525252e/x").over_encoded  # four rounds: read as "..", not flagged
    assert readings("/r/%252525252e%252525252e/x").over_encoded
