"""Resource normalization: every way a resource string could be read, so none slips past a pattern.

An attacker who may write `/reports/readonly/*` tries `/reports/readonly/../../etc/passwd`, `%2e%2e`,
fullwidth letters, zero-width spaces or a symlink. The policy checks *every* reading returned here: a
resource is allowed only if all readings are allowed and none is blocked.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

MAX_RESOURCE_LENGTH = 4096
# %252e%252e decodes in two rounds. A resource still decoding after this many rounds is flagged, not read.
MAX_DECODE_ROUNDS = 4
# An honest resource has a handful of lexical readings. One built so that each step exposes work for another,
# round after round, could multiply them: past this many it is flagged, not read further.
MAX_READINGS = 64


@dataclass(frozen=True, slots=True)
class Readings:
    """The distinct readings of one resource; `canonical` is the one shown to people and stored.

    `has_control_characters`, `over_encoded` and `too_many_readings` mark resources no honest caller sends; the
    policy denies them.
    """

    canonical: str
    all: tuple[str, ...]
    has_control_characters: bool
    over_encoded: bool = False
    too_many_readings: bool = False
    real: str | None = None  # where `canonical` points when symlinks change it (file actions only)
    # The resource by every reading (symlinks resolved, where they were): two resources are the same only if they
    # read alike every way, so `/r/x.csv` and `/r/link/../x.csv`, one canonical form for two files, are not, nor
    # `https://a.example/../b.example/x` and `https://b.example/x`. Made once: lexical readings are cached.
    identity: str = field(init=False)

    def __post_init__(self) -> None:
        # ASCII escapes: a lone surrogate cannot break what hashes or stores it.
        object.__setattr__(self, "identity", json.dumps(sorted(self.all)))


# Unicode category Cc is exactly C0, DEL and C1; unpaired surrogates (Cs) are no honest resource either.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _strip_invisible(text: str) -> str:
    """Remove format characters (zero-width space/joiner, BOM, bidi controls) and control characters."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc"))


def _normalize_path(text: str) -> str:
    """Lexical path normalization: `.` and `..` segments, duplicate and trailing slashes; backslashes count as
    slashes. The trailing slash goes because the OS ignores it on a file (`x.pii/` opens `x.pii`), and a pattern
    such as `*.pii` must see the name that is opened.

    >>> _normalize_path("/reports/readonly/../../etc//passwd")
    '/etc/passwd'
    >>> _normalize_path("data.deidentified.claims")
    'data.deidentified.claims'
    """
    if "/" not in text and "\\" not in text and text not in (".", ".."):
        return text
    slashed = text.replace("\\", "/")
    absolute = slashed.startswith("/")
    parts: list[str] = []
    for segment in slashed.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append("..")
            continue
        parts.append(segment)
    joined = "/".join(parts)
    if absolute:
        joined = "/" + joined
    return joined or "."


def _fold(text: str) -> str:
    # NFKC leaves ASCII as it is: skip it on the hot path
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


def _visible(text: str) -> str:
    # Format characters only concern non-ASCII text: ASCII takes the cheaper path
    return _CONTROL.sub("", text) if text.isascii() else _strip_invisible(text)


def _forward_slashes(text: str) -> str:
    return text.replace("\\", "/")


_IDENTIFIER_QUOTES = str.maketrans("", "", '"`[]')


def _unquoted_identifiers(text: str) -> str:
    """SQL identifier quoting removed: `"data"."phi".x`, `[data].[phi].x` and `` `data`.`phi`.x `` all name
    data.phi.x, and `x."members.pii"` names a table called members.pii."""
    return text.translate(_IDENTIFIER_QUOTES)


# The steps that clean a resource, besides percent-decoding. Each can expose work for another (a zero-width
# space splits `%2e`, NFKC makes `％` a `%`), so every form goes through every step, in every order, until
# nothing new comes. Unquoting identifiers is a step too, but the reading shown to people keeps the quotes; so is
# path normalization (below), since collapsing `..` can expose a quote for unquoting: `"/../a"` reads `a"`, so `a`.
_CLEANING = (_fold, _visible, _forward_slashes)


def normalized_path(text: str) -> str:
    """`text` stripped and path-normalized (`_normalize_path`) until it no longer changes."""
    # Normalizing can bring spaces to an end ("./ a") and stripping can expose segments ("a/. "): repeat.
    while (normalized := _normalize_path(text.strip())) != text:
        text = normalized
    return text


_STEPS = (*_CLEANING, _unquoted_identifiers, normalized_path)


def readings(resource: str, *, resolve_symlinks: bool = False) -> Readings:
    """Every reading of `resource`: as given and through every combination of the lexical steps (percent-
    decoding, up to four rounds; NFKC; invisible characters removed; `\\` as `/`; SQL identifier quotes
    removed), each of those also path-normalized and, for file actions, with symlinks resolved (before its
    `..` are collapsed, as the OS does, and after).

    >>> r = readings("/reports/readonly/%2e%2e/secret.pii")
    >>> r.canonical
    '/reports/secret.pii'
    >>> sorted(r.all)
    ['/reports/readonly/%2e%2e/secret.pii', '/reports/readonly/../secret.pii', '/reports/secret.pii']

    Raises ValueError for something that is not a resource at all (not a string, empty, too long as given or
    once normalized).
    Control characters are not an error: they are reported in `has_control_characters` so the policy
    can deny the action and the audit trail can keep the attempt.
    """
    if not isinstance(resource, str):
        raise ValueError(f"resource must be a string, got {type(resource).__name__}")
    if not resource.strip():
        raise ValueError("resource must be a non-empty string such as 'data.claims' or '/reports/q3.csv'")
    if len(resource) > MAX_RESOURCE_LENGTH:
        raise ValueError(f"resource is {len(resource)} characters long; the limit is {MAX_RESOURCE_LENGTH}")
    lexical = _lexical_readings(resource)
    if not resolve_symlinks:
        return lexical
    found = dict.fromkeys(lexical.all)
    # realpath resolves each link before the ".." after it, as the OS does; every form gets resolved.
    resolved = {form: _resolved_path(form) for form in lexical.all}
    found.update(dict.fromkeys(r for r in resolved.values() if r is not None))
    return Readings(
        lexical.canonical,
        tuple(found),
        lexical.has_control_characters,
        lexical.over_encoded,
        lexical.too_many_readings,
        real=resolved.get(lexical.canonical),
    )


def _variants(forms: dict[str, None], new: list[str]) -> list[str]:
    """Add to `forms` what the steps make of the `new` forms and of theirs; return every form added."""
    added, pending = [], list(new)
    while pending and len(forms) <= MAX_READINGS:
        form = pending.pop()
        for step in _STEPS:
            if (stepped := step(form)) not in forms:
                forms[stepped] = None
                added.append(stepped)
                pending.append(stepped)
    return added


# Agents touch the same resources again and again; the lexical readings depend on the string alone.
@functools.lru_cache(maxsize=16384)
def _lexical_readings(resource: str) -> Readings:
    forms: dict[str, None] = {resource: None}
    level = [resource, *_variants(forms, [resource])]
    over_encoded = False
    # Each round decodes every form the previous round made, then puts what it decoded through the steps.
    for round_ in range(MAX_DECODE_ROUNDS + 1):
        decoded = [d for form in level if "%" in form and (d := unquote(form, errors="replace")) not in forms]
        if not decoded or len(forms) > MAX_READINGS:
            break
        if round_ == MAX_DECODE_ROUNDS:
            over_encoded = True
        forms.update(dict.fromkeys(decoded))
        level = [*dict.fromkeys(decoded), *_variants(forms, decoded)]
    # NFKC can lengthen text eighteen-fold (U+FDFA): the limit holds for every reading, not only the raw one.
    if (longest := max(map(len, forms))) > MAX_RESOURCE_LENGTH:
        raise ValueError(
            f"resource is {longest} characters long once normalized (NFKC); the limit is {MAX_RESOURCE_LENGTH}"
        )
    control = any(_CONTROL.search(form) for form in forms)
    too_many = len(forms) > MAX_READINGS
    canonical = normalized_path(_cleaned(resource))
    forms[canonical] = None  # path normalization is a step, so the other forms are in `forms` already
    return Readings(
        canonical=canonical,
        all=tuple(forms),
        has_control_characters=control,
        over_encoded=over_encoded,
        too_many_readings=too_many,
    )


def _cleaned(resource: str) -> str:
    """`resource` through every step and decoded until it no longer changes: the reading shown to people."""
    current = resource
    for _ in range(MAX_DECODE_ROUNDS + 1):
        for step in _CLEANING:
            current = step(current)
        decoded = unquote(current, errors="replace") if "%" in current else current
        if decoded == current:
            break
        current = decoded
    return _visible(_fold(current))


def _resolved_path(path: str) -> str | None:
    """The real path when symlinks change where `path` points (realpath resolves the part that exists)."""
    if _CONTROL.search(path):
        return None
    try:
        real = os.path.realpath(path)
        return real if real != os.path.abspath(path) else None
    except (OSError, ValueError):
        return None


# ---- tables named in SQL ------------------------------------------------------------------------------------

# Literals, comments and quoted identifiers, matched in one left-to-right pass, so whichever starts first wins:
# `'--'` is a literal, and `-- it's` a comment. One left open runs to the end of the text: matched only when
# closed, each of a run of openings (`/*/*/*...`) would scan the rest of the text, and the pass be quadratic.
_SQL_COMMENT_PATTERN = r"--[^\n]*|/\*.*?(?:\*/|\Z)"
# Whitespace and comments, which PostgreSQL skips between tokens; atomic, so a failed match after it never
# reads a comment again to end it at a later `*/`.
_SQL_GAP = rf"(?>\s|{_SQL_COMMENT_PATTERN})*+"
_SQL_TOKENS = re.compile(
    # U&"d\0061ta", or with an escape character of its own: U&"d!0061ta" UESCAPE '!'.
    r"""(?P<unicode>\b[uU]&(?P<escaped>"(?:[^"]|"")*(?:"|\Z)|'(?:[^']|'')*(?:'|\Z))"""
    rf"""(?:{_SQL_GAP}\b(?i:uescape){_SQL_GAP}'(?P<escape>[^'])')?)"""
    # E'...', where a backslash escapes: E'ph\x69' is 'phi', and E'it\'s' one literal.
    r"""|(?P<backslashed>\b[eE]'(?:[^'\\]|''|\\.)*(?:'|\Z))"""
    rf"""|(?P<literal>'(?:[^']|'')*(?:'|\Z))|(?P<comment>{_SQL_COMMENT_PATTERN})"""
    r"""|"(?:[^"]|"")*(?:"|\Z)|`[^`]*(?:`|\Z)|\[[^\]]*(?:\]|\Z)""",
    re.S,
)
_SQL_PART = r"""(?:"(?:[^"]|"")*(?:"|\Z)|`[^`]*(?:`|\Z)|\[[^\]]*(?:\]|\Z)|[^\W\d][\w$]*)"""
_SQL_NAME = re.compile(rf"{_SQL_PART}(?:\s*\.\s*{_SQL_PART})*")
# A qualified name anywhere, starting only where a name can start (never inside one: each start reads on to the
# name's end, and a start at every character of a long word would be quadratic).
_SQL_QUALIFIED = re.compile(rf"""(?<![\w$"`\[\].]){_SQL_PART}(?:\s*\.\s*{_SQL_PART})+""")
# The words after which SQL names a table: SELECT ... FROM, JOIN, INSERT/MERGE INTO, UPDATE, DELETE FROM, TRUNCATE,
# COPY, ALTER/DROP/CREATE TABLE, and words that may stand between those and the name.
_SQL_TABLE_WORD = re.compile(r"""\b(?:from|join|into|update|truncate|copy|table|using)(?:\s+|(?=["`\[]))""", re.I)
_SQL_SKIPPED = re.compile(r"(?:(?:only|lateral|table|if|not|exists)\s+)*", re.I)
_SQL_NEXT_TABLE = re.compile(r"(?:\s+(?:as\s+)?[^\W\d][\w$]*)?\s*,\s*", re.I)  # an alias, then a comma
_SQL_DOTS = re.compile(r"\s*\.\s*")
_SQL_COMMENT = re.compile(_SQL_COMMENT_PATTERN, re.S)


@functools.lru_cache(maxsize=4096)  # an agent sends the same queries again and again
def sql_tables(text: str) -> tuple[str, ...]:
    """The tables `text`, read as SQL, names: after FROM (and each of a comma-separated list), JOIN, INTO,
    UPDATE, TRUNCATE, COPY and TABLE, and every qualified name anywhere (a table in parentheses, or after a
    function or a column list in a FROM list, is one), quotes kept as written and `U&"..."` escapes decoded.

    A heuristic, not a parser, that errs toward naming more, since a name counts only where it matches a
    blocked pattern: a comment separates names (`data./**/phi.x` is data.phi.x) and is read too (MySQL runs
    `/*! ... */`), and so is a string literal (`EXECUTE`, `dblink` and `query_to_xml` run one as SQL), but
    neither hides what follows it; a function after FROM, or a word in prose, is named as well.

    >>> sql_tables('SELECT a FROM data.deidentified.claims c, "data"."phi".patients p -- see FROM x.pii')
    ('data.deidentified.claims', '"data"."phi".patients', 'x.pii')
    >>> sql_tables("SELECT '--' FROM data . /* the */ phi . x WHERE id IN (SELECT query_to_xml('TABLE y.pii'))")
    ('data.phi.x', 'y.pii')
    """
    if not _SQL_TABLE_WORD.search(text):
        return ()
    inner: list[str] = []

    def spaced(token: re.Match[str]) -> str:
        kind, text = token.lastgroup, token.group()
        if kind == "unicode":  # U&"d\0061ta" is the identifier "data"; U&'...' a literal
            text = _unicode_unescaped(token.group("escaped"), token.group("escape") or "\\")
            kind = "literal" if text.startswith("'") else None
        elif kind == "backslashed":
            text, kind = _SQL_BACKSLASH_ESCAPE.sub(_backslash_unescaped, text[1:]), "literal"
        if kind is None:  # a quoted identifier: part of a name
            return text
        # Read once more on its own (a literal unescaped, comments in it as spaces), not deeper: each character
        # is read at most twice, however the text nests.
        if kind == "literal":
            inner.append(_SQL_COMMENT.sub(" ", text[1:].replace("''", "'")))
        else:
            inner.append(text[2:])
        return " "

    found: dict[str, None] = {}
    for code in (_SQL_TOKENS.sub(spaced, text), *inner):
        read_to = 0  # a word inside a list already read starts no list of its own: each list is read once
        for word in _SQL_TABLE_WORD.finditer(code):
            if word.start() < read_to:
                continue
            at = _SQL_SKIPPED.match(code, word.end()).end()  # type: ignore[union-attr]  # matches empty at worst
            while name := _SQL_NAME.match(code, at):
                found[_SQL_DOTS.sub(".", name.group())] = None
                read_to = name.end()
                following = _SQL_NEXT_TABLE.match(code, read_to)
                if following is None:
                    break
                at = following.end()
        for name in _SQL_QUALIFIED.finditer(code):
            found[_SQL_DOTS.sub(".", name.group())] = None
    return tuple(found)


_SQL_BACKSLASH_ESCAPE = re.compile(r"\\(?:x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.S)
_SQL_BACKSLASHED = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _backslash_unescaped(found: re.Match[str]) -> str:
    """An escape of an E'...' literal, as PostgreSQL reads it: `\\x69`, `\\151`, `\\u0069` and `\\U00000069`
    are all `i`, `\\n` a newline, and a backslash before anything else is that character."""
    escape = found.group()[1:]
    if escape[0] in "01234567":
        return chr(int(escape, 8))
    if escape[0] in "xuU" and len(escape) > 1:
        try:
            return chr(int(escape[1:], 16))
        except (ValueError, OverflowError):  # past the last code point: PostgreSQL refuses it
            return found.group()
    return _SQL_BACKSLASHED.get(escape, escape)


def _unicode_unescaped(text: str, escape: str) -> str:
    """`text` (a quoted identifier or literal) with its `escape`-character escapes decoded: `\\0061` (4 hex
    digits), `\\+000061` (6) and a doubled escape character, which stands for itself."""

    def unescaped(found: re.Match[str]) -> str:
        digits = found.group()[1:].lstrip("+")
        if digits == escape:
            return escape
        try:
            return chr(int(digits, 16))
        except (ValueError, OverflowError):  # past the last code point: PostgreSQL refuses it, so it names nothing
            return found.group()

    marker = re.escape(escape)
    return re.sub(rf"{marker}(?:{marker}|[0-9A-Fa-f]{{4}}|\+[0-9A-Fa-f]{{6}})", unescaped, text)


def payload_texts(payload: Any) -> Iterator[str]:
    """Every string value in `payload`, at any depth (keys left out)."""
    stack = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)


def payload_tables(payload: Any) -> Iterator[str]:
    """The tables the SQL anywhere in `payload` names (see `sql_tables`)."""
    for text in payload_texts(payload):
        yield from sql_tables(text)
