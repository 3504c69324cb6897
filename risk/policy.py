"""The policy: which action types and resources an agent may touch, its limits, and the kill-switch mode.

Semantics (the README has the full table): an allow-list that is not configured allows everything in its
dimension; a block always beats an allow; blocked patterns match case-insensitively, allowed patterns
exactly; a resource passes only if every reading of it (see `risk.resources`) is allowed and none is blocked.
Patterns are shell globs (`*`, `?`, `[abc]`) where `*` also matches `.` and `/`.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import re
import tomllib
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, field_validator

from risk.actions import ActionType, KillSwitchMode, Reason
from risk.errors import PolicyError
from risk.resources import Readings, normalized_path, payload_tables
from risk.resources import readings as resource_readings


class PatternSet:
    """A list of glob patterns compiled into one regular expression, so a check is one regex match
    per reading instead of one `fnmatch` call per pattern.

    >>> blocked = PatternSet(["data.phi.*", "*.pii"], ignore_case=True)
    >>> blocked.matches("DATA.PHI.patients"), blocked.matches("data.deidentified.claims")
    (True, False)
    """

    def __init__(self, patterns: Iterable[str], *, ignore_case: bool) -> None:
        self.ignore_case = ignore_case
        self.patterns = tuple(_fold(p, ignore_case) for p in patterns)
        # Each pattern also matches as normalized the way resources are (`C:\\Secrets\\*` as `C:/Secrets/*`,
        # `https://x/*` as `https:/x/*`), or the normalized readings of the very resources it names would escape
        # it. Maps each form to the pattern as written, which is what a message names.
        self._forms = {form: p for p in self.patterns for form in (p, _normalized_pattern(p))}
        self._regex = re.compile("|".join(fnmatch.translate(f) for f in self._forms)) if self._forms else None

    def matches(self, text: str) -> bool:
        if self._regex is None:
            return False
        return self._regex.match(_fold(text, self.ignore_case)) is not None

    def first_match(self, text: str) -> str | None:
        """The first pattern that matches; only called on the deny path, to say which pattern fired."""
        folded = _fold(text, self.ignore_case)
        return next((p for form, p in self._forms.items() if fnmatch.fnmatchcase(folded, form)), None)


def _fold(text: str, ignore_case: bool) -> str:
    return text.lower() if ignore_case else text


def _normalized_pattern(pattern: str) -> str:
    """The lexical steps resources go through that keep a glob a glob: backslashes as slashes, `.`/`..`/`//`
    and trailing slashes, identifier quotes `"` and `` ` `` (brackets are glob syntax and stay)."""
    return normalized_path(pattern.replace('"', "").replace("`", ""))


class Policy(BaseModel):
    """What one agent may do. Configuration only: validated once, hashed into every audit record.

    >>> p = Policy(allowed_resources=["data.deidentified.*"], blocked_resources=["data.phi.*"], mode="pause")
    >>> p.mode
    <KillSwitchMode.PAUSE: 'pause'>
    >>> len(p.policy_hash)
    64
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_action_types: tuple[ActionType, ...] | None = None
    allowed_resources: tuple[str, ...] | None = None
    blocked_resources: tuple[str, ...] = ()
    # Strict numbers: "0.5", True or 10.0 is refused, not read as 0.5, 1 or 10 (an int is a float, though).
    max_risk_score: StrictFloat = Field(default=1.0, ge=0.0, le=1.0)
    max_actions_per_minute: StrictInt | None = Field(default=None, gt=0)
    max_rows_per_window: StrictInt | None = Field(default=None, gt=0)
    max_bytes_per_window: StrictInt | None = Field(default=None, gt=0)
    volume_window_seconds: StrictFloat = Field(default=3600.0, gt=0)
    mode: KillSwitchMode = KillSwitchMode.BLOCK
    rollback_window: StrictFloat = Field(default=900.0, gt=0, description="seconds of history ROLLBACK undoes")

    @field_validator("allowed_action_types", mode="before")
    @classmethod
    def _parse_action_types(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str | ActionType):
            value = [value]
        if not isinstance(value, list | tuple | set | frozenset):
            raise ValueError("must be a list of action types such as ['database_query', 'file_read']")
        return tuple(ActionType.parse(v) for v in value)

    @field_validator("mode", mode="before")
    @classmethod
    def _parse_mode(cls, value: Any) -> KillSwitchMode:
        return KillSwitchMode.parse(value)

    @field_validator("allowed_resources", "blocked_resources", mode="before")
    @classmethod
    def _check_patterns(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple | set | frozenset):
            raise ValueError("must be a list of glob patterns such as ['data.phi.*', '*.pii']")
        patterns = []
        for pattern in value:
            if not isinstance(pattern, str) or not pattern.strip():
                raise ValueError(f"pattern {pattern!r} must be a non-empty string such as 'data.phi.*'")
            if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in pattern):
                raise ValueError(f"pattern {pattern!r} contains control or invisible characters")
            patterns.append(unicodedata.normalize("NFKC", pattern.strip()))
        return tuple(patterns)

    @functools.cached_property  # the policy is frozen; the service asks for its hash on every request
    def policy_hash(self) -> str:
        """SHA-256 of the policy's canonical JSON: the audit trail names the exact rules behind each decision."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def build(cls, **fields: Any) -> Policy:
        """Validate `fields` into a Policy, raising PolicyError with one readable line per problem."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise PolicyError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = []
    accepted = ", ".join(Policy.model_fields)
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "policy"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown field {field!r}; accepted fields: {accepted}")
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{field}: {message} (got {err.get('input')!r})")
    return "invalid policy: " + "; ".join(lines)


def load_policy_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML policy file into a dict of fields (validated by the caller)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {path} is not UTF-8 text") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise PolicyError(f"policy file {path} must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise PolicyError(f"policy file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"policy file {path} must hold a mapping of fields, not {type(data).__name__}")
    return data


class CompiledPolicy:
    """A Policy with its patterns compiled; `violations` is the hot-path check."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.policy_hash = policy.policy_hash
        types = policy.allowed_action_types
        self._allowed_types = frozenset(types) if types is not None else None
        self._allowed = (
            PatternSet(policy.allowed_resources, ignore_case=False) if policy.allowed_resources is not None else None
        )
        self._blocked = PatternSet(policy.blocked_resources, ignore_case=True)

    def violations(self, action_type: ActionType, readings: Readings, payload: Any = None) -> list[Reason]:
        """The policy rules this action breaks, empty when it complies."""
        found: list[Reason] = []
        if self._allowed_types is not None and action_type not in self._allowed_types:
            found.append(
                _violation("action_type_not_allowed", f"action type {action_type.value} is not in the allowed types")
            )
        if readings.has_control_characters:
            found.append(_violation("resource_control_characters", "resource has NUL, control or surrogate characters"))
        if readings.over_encoded:
            found.append(_violation("resource_over_encoded", "resource is still percent-encoded after four decodings"))
        if readings.too_many_readings:
            found.append(
                _violation("resource_too_many_readings", "resource has too many readings (encodings within encodings)")
            )
        if action_type.is_file and any(_GLOB_CHARACTERS.search(r) for r in readings.all):
            found.append(
                _violation(
                    "resource_glob_characters", "file resource has glob characters (*, ?, [ or ]) a tool may expand"
                )
            )
        blocked = self.blocked_reading(readings)
        if blocked is not None:
            pattern = self._blocked.first_match(blocked)
            found.append(_violation("resource_blocked", f"resource {blocked!r} matches blocked pattern {pattern!r}"))
        elif action_type in _DATABASE and self._blocked.patterns and (table := self._blocked_table(payload)):
            found.append(table)
        if self._allowed is not None:
            outside = next((r for r in readings.all if not self._allowed.matches(r)), None)
            if outside is not None:
                found.append(_violation("resource_not_allowed", f"resource {outside!r} matches no allowed pattern"))
        return found

    def blocked_reading(self, readings: Readings) -> str | None:
        """The first reading a blocked pattern matches, if any."""
        return next((r for r in readings.all if self._blocked.matches(r)), None)

    def _blocked_table(self, payload: Any) -> Reason | None:
        """The violation of a table the payload's SQL names (see `sql_tables`) that a blocked pattern matches
        under some reading: the resource names one table, and the query it carries may read another."""
        for count, table in enumerate(dict.fromkeys(payload_tables(payload)), start=1):
            if count > MAX_SQL_TABLES:
                return _violation(
                    "sql_too_many_tables", f"the SQL names more than {MAX_SQL_TABLES} tables, too many to check"
                )
            reading = self.blocked_reading(resource_readings(table))
            if reading is not None:
                pattern = self._blocked.first_match(reading)
                return _violation("resource_blocked", f"table {table!r} in the SQL matches blocked pattern {pattern!r}")
        return None


_DATABASE = frozenset({ActionType.DATABASE_QUERY, ActionType.DATABASE_WRITE})
# Each table is read every way a resource is (tens of microseconds for a new name); an honest query names a few.
MAX_SQL_TABLES = 1000

# A tool that expands globs opens whatever `members.pi[i]` or `dirlin[k]/x` matches (members.pii, a symlink's
# target), which no reading of the string shows. Expanding them here would judge what the file system holds at
# check time, by our expansion rules rather than the tool's (shells add `{a,b}`, `**`, `~`); denying file
# resources that carry glob characters fails closed instead. File names with them are rare.
_GLOB_CHARACTERS = re.compile(r"[*?\[\]]")


def _violation(code: str, message: str) -> Reason:
    return Reason(code=code, message=message, weight=1.0, violation=True)
