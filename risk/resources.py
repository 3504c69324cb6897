"""Resource normalization: every way a resource string could be read, so none slips past a pattern.

An attacker who may write `/reports/readonly/*` tries `/reports/readonly/../../etc/passwd`, `%2e%2e`,
fullwidth letters, zero-width spaces or a symlink. The policy checks *every* reading returned here: a
resource is allowed only if all readings are allowed and none is blocked.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

MAX_RESOURCE_LENGTH = 4096
_PERCENT_ROUNDS = 3  # %252e%252e decodes in two rounds; more than three is an attack in itself


@dataclass(frozen=True, slots=True)
class Readings:
    """The distinct readings of one resource; `canonical` is the one shown to people and stored."""

    canonical: str
    all: tuple[str, ...]
    has_control_characters: bool


# Unicode category Cc is exactly C0, DEL and C1.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _strip_invisible(text: str) -> str:
    """Remove format characters (zero-width space/joiner, BOM, bidi controls) and control characters."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc"))


def _normalize_path(text: str) -> str:
    """Lexical path normalization: `.` and `..` segments and duplicate slashes; backslashes count as slashes.

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
    if slashed.endswith("/") and joined not in ("", "/"):
        joined += "/"
    return joined or "."


def _percent_decodings(text: str) -> list[str]:
    out = [text]
    for _ in range(_PERCENT_ROUNDS):
        decoded = unquote(out[-1], errors="replace") if "%" in out[-1] else out[-1]
        if decoded == out[-1]:
            break
        out.append(decoded)
    return out


def _canonical(text: str) -> str:
    if text.isascii():  # NFKC and format characters only concern non-ASCII text: skip them on the hot path
        text = _CONTROL.sub("", text)
    else:
        text = _strip_invisible(unicodedata.normalize("NFKC", _strip_invisible(text)))
    return _normalize_path(text.strip())


def readings(resource: str, *, resolve_symlinks: bool = False) -> Readings:
    """Every reading of `resource`: as given, percent-decoded, NFKC-folded, invisible characters removed,
    path-normalized and, for file actions on a path that exists, with symlinks resolved.

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

    found: dict[str, None] = {}
    control = False
    canonical = resource
    for decoded in _percent_decodings(resource):
        control = control or _CONTROL.search(decoded) is not None
        found[decoded] = None
        if not decoded.isascii():
            found[unicodedata.normalize("NFKC", decoded)] = None
        canonical = _canonical(decoded)
        found[canonical] = None
    if resolve_symlinks:
        resolved = _resolved_path(canonical)
        if resolved is not None:
            found[resolved] = None
    return Readings(canonical=canonical, all=tuple(found), has_control_characters=control)


def _resolved_path(path: str) -> str | None:
    """The real path when symlinks change where `path` points, else None."""
    if "\x00" in path:
        return None
    try:
        if not os.path.lexists(path) and not os.path.lexists(os.path.dirname(path) or "."):
            return None
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return None
    return real if real != os.path.abspath(path) else None
