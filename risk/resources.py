"""Resource normalization: every way a resource string could be read, so none slips past a pattern.

An attacker who may write `/reports/readonly/*` tries `/reports/readonly/../../etc/passwd`, `%2e%2e`,
fullwidth letters, zero-width spaces or a symlink. The policy checks *every* reading returned here: a
resource is allowed only if all readings are allowed and none is blocked.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

MAX_RESOURCE_LENGTH = 4096
# %252e%252e decodes in two rounds. A resource still decoding after this many rounds is flagged, not read.
MAX_DECODE_ROUNDS = 4


@dataclass(frozen=True, slots=True)
class Readings:
    """The distinct readings of one resource; `canonical` is the one shown to people and stored.

    `has_control_characters` and `over_encoded` mark resources no honest caller sends; the policy denies them.
    """

    canonical: str
    all: tuple[str, ...]
    has_control_characters: bool
    over_encoded: bool = False


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


def _canonical(text: str) -> str:
    if text.isascii():  # NFKC and format characters only concern non-ASCII text: skip them on the hot path
        text = _CONTROL.sub("", text)
    else:
        text = _strip_invisible(unicodedata.normalize("NFKC", _strip_invisible(text)))
    # Normalizing can bring spaces to an end ("./ a") and stripping can expose segments ("a/. "): repeat.
    while (normalized := _normalize_path(text.strip())) != text:
        text = normalized
    return text


def readings(resource: str, *, resolve_symlinks: bool = False) -> Readings:
    """Every reading of `resource`: as given, percent-decoded and NFKC-folded (repeatedly, in either order),
    invisible characters removed, path-normalized and, for file actions, with symlinks resolved.

    >>> r = readings("/reports/readonly/%2e%2e/secret.pii")
    >>> r.canonical
    '/reports/secret.pii'
    >>> sorted(r.all)
    ['/reports/readonly/%2e%2e/secret.pii', '/reports/readonly/../secret.pii', '/reports/secret.pii']

    Raises ValueError for something that is not a resource at all (not a string, empty, too long).
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
    for form in lexical.all:
        resolved = _resolved_path(form)
        if resolved is not None:
            found[resolved] = None
    return Readings(lexical.canonical, tuple(found), lexical.has_control_characters, lexical.over_encoded)


# Agents touch the same resources again and again; the lexical readings depend on the string alone.
@functools.lru_cache(maxsize=16384)
def _lexical_readings(resource: str) -> Readings:
    forms: dict[str, None] = {resource: None}
    current, over_encoded = resource, False
    for round_ in range(MAX_DECODE_ROUNDS + 1):
        # NFKC first: fullwidth ％２ｅ folds to %2e, which the decode then reads as "."
        folded = current if current.isascii() else unicodedata.normalize("NFKC", current)
        decoded = unquote(folded, errors="replace") if "%" in folded else folded
        forms[folded] = None
        forms[decoded] = None
        if decoded == current:
            break
        if round_ == MAX_DECODE_ROUNDS:
            over_encoded = True
        current = decoded
    control = any(_CONTROL.search(form) for form in forms)
    canonical = _canonical(current)
    found = dict(forms)
    for form in forms:
        found[_canonical(form)] = None
    return Readings(canonical=canonical, all=tuple(found), has_control_characters=control, over_encoded=over_encoded)


def _resolved_path(path: str) -> str | None:
    """The real path when symlinks change where `path` points (realpath resolves the part that exists)."""
    if _CONTROL.search(path):
        return None
    try:
        real = os.path.realpath(path)
        return real if real != os.path.abspath(path) else None
    except (OSError, ValueError):
        return None
