"""Rule-based severity: what an action is, what it touches and what its payload says, as a score in [0, 1].

Each rule that fires contributes a severity s in (0, 1]; the rules combine by noisy-OR,
``score = 1 - prod(1 - s)``, so the score only rises as rules fire (monotone), stays in [0, 1], and two
moderate signals together outweigh either alone. The table of rules and weights is in the README.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

from risk.actions import ActionType, Reason, heaviest_first
from risk.redaction import EMAIL_PATTERN, contains_identifiers

ACTION_TYPE_SEVERITY: dict[ActionType, float] = {
    ActionType.FILE_READ: 0.05,
    ActionType.DATABASE_QUERY: 0.05,
    ActionType.API_CALL: 0.10,
    ActionType.NETWORK_REQUEST: 0.15,
    ActionType.CUSTOM: 0.15,
    ActionType.FILE_WRITE: 0.20,
    ActionType.DATABASE_WRITE: 0.25,
    ActionType.FILE_DELETE: 0.35,
    ActionType.PROCESS_SPAWN: 0.35,
    ActionType.CODE_EXECUTION: 0.40,
    ActionType.PERMISSION_CHANGE: 0.45,
}

# (code, severity, pattern over the normalized resource, lower-cased). Short words are bounded by non-letters,
# not `\b`: `_` is a word character, so `\bphi\b` missed `phi_claims`; digits count as bounds too (`mrn2`).
RESOURCE_RULES: tuple[tuple[str, float, re.Pattern[str]], ...] = (
    (
        "resource_secrets",
        0.60,
        re.compile(
            r"secret|passw|credential|token|api[_-]?key|private[_-]?key|\.env(?![a-z])|id_rsa|id_ed25519|\.ssh(?:/|$)"
            r"|\.aws(?:/|$)|\.pem(?![a-z])|vault"  # the folders themselves too: a read of one makes it known
        ),
    ),
    (
        "resource_phi",
        0.50,
        re.compile(r"(?<![a-z])(?:phi|ehr|emr|mrn)(?![a-z])|patient|medical|diagnos|clinical|prescription"),
    ),
    (
        "resource_pii",
        0.45,
        re.compile(r"(?<![a-z])(?:pii|ssn|dob)(?![a-z])|social[_-]?security|birth[_-]?date|passport"),
    ),
    (
        "resource_system",
        0.45,
        re.compile(
            r"^/(?:etc|root|proc|sys|boot|dev|var/log|usr/s?bin)(?:/|$)|^[a-z]:/windows|/\.bashrc$|/authorized_keys$"
        ),
    ),
    ("resource_production", 0.35, re.compile(r"(?:^|[^a-z])prod(?:uction)?(?:[^a-z]|$)")),
)

_DROP = re.compile(r"\b(?:drop\s+(?:table|database|schema|view|index|user|role)|truncate\s+(?:table\s+)?[\w\"`\[])")
_DELETE_ALL = re.compile(r"\bdelete\s+from\s+[\w.\"`\[\]]+\s*$")
_UPDATE_ALL = re.compile(r"\bupdate\s+[\w.\"`\[\]]+\s+set\b(?!.*\bwhere\b)", re.S)


def _same_command_until(*words: str) -> str:
    """One character of the same command (no newline, `|`, `;` or `&`), not where one of `words` begins as a token
    of its own: a scan over these stops at the next such token, so no text is scanned again from every one."""
    return rf"(?:(?!(?<![^\s/])(?:{'|'.join(words)})(?=\s|$))[^\n|;&])"


def _token(word: str) -> str:
    """`word` as a token of a command line: after a space, a `/` (a program's path) or the start."""
    return rf"(?<![^\s/]){word}(?=\s|$)"


_KUBECTL_ARG = _same_command_until("kubectl", "delete")
_KUBECTL_VALUE_FLAGS = "n|namespace|context|cluster|kubeconfig|user|l|selector|o|output|timeout|grace-period"
# A flag between `delete` and the kind deleted: one that takes a value takes it (`-n prod`), so that neither a
# namespace's name nor a flag's value reads as the kind.
_KUBECTL_FLAG = (
    rf"(?:--?(?:{_KUBECTL_VALUE_FLAGS})(?:=\S*|\s+[^\s-]\S*)"
    rf"|--?(?!(?:{_KUBECTL_VALUE_FLAGS})(?![\w-]))[a-z][\w-]*(?:=\S*)?)"
)
_TERRAFORM_ARG = _same_command_until("terraform")
_AWS_ARG = _same_command_until("aws", "s3")
_SHELL_DESTRUCTIVE = re.compile(
    r"\brm\s+-[a-z]*[rf][a-z]*\b|\bmkfs\b|\bdd\s+if=|\bchmod\s+(?:-r\s+)?777\b|:\(\)\s*\{|>\s*/dev/sd|\bshred\b"
    # A download piped into a shell. The scan after each curl or wget stops at the next one, which scans on
    # itself: `[^|]*` alone would rescan the rest of the text from every occurrence (quadratic in its length).
    r"|(?:curl|wget)(?:(?!curl|wget)[^|])*\|\s*(?:ba|z)?sh\b"
    # Infrastructure torn down whole: every object of a kind (`--all`) or a namespace in Kubernetes, a Terraform
    # stack, a bucket's contents; global flags (`kubectl -n prod`, `terraform -chdir=infra`) before the verb or not.
    rf"|{_token('kubectl')}{_KUBECTL_ARG}*\sdelete(?=\s)"
    rf"(?:{_KUBECTL_ARG}*?\s--all(?:=\S*)?(?=\s|$)|(?:\s+{_KUBECTL_FLAG})*\s+(?:namespaces?|ns)(?=[\s/]|$))"
    rf"|{_token('terraform')}(?:\s+-\S+)*\s+(?:destroy(?=\s|$)|apply(?=\s){_TERRAFORM_ARG}*?\s-destroy(?=\s|$))"
    rf"|{_token('aws')}{_AWS_ARG}*\ss3\s+"
    rf"(?:rm(?=\s){_AWS_ARG}*?\s--recursive(?=\s|$)|rb(?=\s){_AWS_ARG}*?\s--force(?=\s|$))"
    rf"|{_token('gsutil')}(?:\s+-\S+)*\s+rm(?=\s)(?:\s+-\S+)*?\s+-[a-z]*r"
)
_PRIVILEGE = re.compile(r"\bsudo\b|\bgrant\s+all\b|\bsetuid\b|\bchown\s+root\b|\badministrator\b|\bsuperuser\b")
_CREDENTIAL = re.compile(
    r"-----begin (?:rsa |ec |openssh )?private key|\bakia[0-9a-z]{16}\b|\bghp_[0-9a-z]{30,}|\bsk-[0-9a-z]{20,}"
    r"|\bbearer\s+[0-9a-z._-]{20,}|(?:password|passwd|secret|api[_-]?key)\s*[:=]\s*\S+"
    # ... and in prose, as an agent passing a secret on writes it: "the secret key is 1a7b3d". The value must hold
    # a digit, so "the password is wrong" is not one.
    r"|\b(?:password|passwd|passcode|secret(?:[ _-]?key)?|api[ _-]?key|access[ _-]?token)\s+is\s+[^\s\d]*\d"
)
# A URL, a host written without a scheme but with www., or an email address.
_DESTINATION = re.compile(rf"https?://[^\s\"'/]+|\bwww\.[a-z0-9-]+\.[a-z]|{EMAIL_PATTERN}")

PAYLOAD_SEVERITY = {
    "payload_destructive_sql": 0.70,
    "payload_destructive_shell": 0.70,
    "payload_credentials": 0.50,
    "payload_privilege": 0.40,
    "payload_identifiers": 0.35,
    "payload_outbound_destination": 0.15,
}

_OUTBOUND_TYPES = frozenset({ActionType.NETWORK_REQUEST, ActionType.API_CALL, ActionType.CUSTOM})


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list | tuple):
                yield str(k)
                yield from _strings(v)
            else:  # "password: hunter2" reads as the credential it is
                yield f"{k}: {v}"
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
    elif value is not None:
        yield str(value)


_PROGRAMS = ("kubectl", "terraform", "aws", "gsutil")  # the programs of the rule's argv forms (rm's needs none)
_PROGRAM_KEYS = ("command", "cmd", "program", "executable")
_ARGUMENT_KEYS = ("args", "argv", "arguments")


def _command_lines(value: Any) -> Iterator[str]:
    """The command lines an argv list spells, for the destructive shell rule alone: a list of strings whose first
    names a program (`["kubectl", "delete", ...]`, as the watch reports a spawned process), or a program beside
    its arguments (`{"command": "kubectl", "args": ["delete", ...]}`). Joined, other rules would read separate
    strings as one: digits as a card number, two commands as one."""
    if isinstance(value, dict):
        program = next((value[k] for k in _PROGRAM_KEYS if isinstance(value.get(k), str)), None)
        for k, v in value.items():
            if program is not None and k in _ARGUMENT_KEYS and _all_strings(v):
                yield " ".join((program, *v))
            yield from _command_lines(v)
    elif isinstance(value, list | tuple):
        if len(value) > 1 and _all_strings(value) and not any(c.isspace() for c in value[0]):
            yield " ".join(value)
        for v in value:
            yield from _command_lines(v)


def _all_strings(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


# Cheap tests first: a family's full expressions run only if one of its words is in the text. Substring tests
# run in C at memory speed; one regex alternation of all the words costs about ten times more on short text.
_FAMILY_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sql", ("drop", "truncate", "delete", "update")),
    (
        "shell",
        (
            "rm",
            "mkfs",
            "dd",
            "chmod",
            ":()",
            "/dev/sd",
            "shred",
            "curl",
            "wget",
            "kubectl",
            "terraform",
            "aws",
            "gsutil",
        ),
    ),
    (
        "credentials",
        (
            "private key",
            "akia",
            "ghp_",
            "sk-",
            "bearer",
            "passw",
            "passcode",
            "secret",
            "api_key",
            "api-key",
            "apikey",
            "api key",
            "access token",
            "access_token",
            "access-token",
        ),
    ),
    ("privilege", ("sudo", "grant", "setuid", "chown", "administrator", "superuser")),
    ("destination", ("@", "://", "www.")),
)
_THREE_DIGITS = re.compile(r"\d{3}")  # every identifier pattern (SSN, card, MRN) has three digits in a row


def _families(text: str) -> set[str]:
    found = {family for family, words in _FAMILY_WORDS if any(word in text for word in words)}
    if _THREE_DIGITS.search(text):
        found.add("identifiers")
    return found


# Payloads repeat (the same query, the same poll), so their rule codes are cached by text; texts longer than
# this are scanned every time, which bounds the cache at a few MB.
CACHED_TEXT_CHARS = 2048


def payload_signals(payload: Any, action_type: ActionType) -> list[str]:
    """The payload rule codes that fire for `payload` (also used as model features)."""
    if payload is None:
        return []
    texts = tuple(t.lower() for t in _strings(payload))
    # Walking the payload again costs more than the first walk: only where a program it matters for is named.
    text = "\n".join(texts)
    commands = tuple(c.lower() for c in _command_lines(payload)) if any(p in text for p in _PROGRAMS) else ()
    outbound = action_type in _OUTBOUND_TYPES
    # The size as the cache holds it: a hundred thousand empty strings are no small payload.
    if sum(map(len, texts)) + len(texts) + sum(map(len, commands)) > CACHED_TEXT_CHARS:
        return list(_text_signals.__wrapped__(texts, outbound, commands))
    return list(_text_signals(texts, outbound, commands))


@functools.lru_cache(maxsize=4096)
def _text_signals(texts: tuple[str, ...], outbound: bool, commands: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The payload rules over a payload's strings, lower-cased; `outbound` for action types that send; `commands`,
    the command lines its argv lists spell (`_command_lines`), for the destructive shell rule."""
    joined = "\n".join(texts)
    families = _families(joined)
    if not families:
        return ()
    found = []
    if "sql" in families and (
        _DROP.search(joined)
        or any(_DELETE_ALL.search(s) or _UPDATE_ALL.search(s) for t in texts for s in map(str.strip, t.split(";")))
    ):
        found.append("payload_destructive_sql")
    if "shell" in families:
        shell = "\n".join((joined, *commands)).replace("\\\n", " ")  # a line continued with a backslash: one command
        if _SHELL_DESTRUCTIVE.search(shell):
            found.append("payload_destructive_shell")
    if "credentials" in families and _CREDENTIAL.search(joined):
        found.append("payload_credentials")
    if "privilege" in families and _PRIVILEGE.search(joined):
        found.append("payload_privilege")
    if "identifiers" in families and contains_identifiers(joined):
        found.append("payload_identifiers")
    if "destination" in families and outbound and _DESTINATION.search(joined):
        found.append("payload_outbound_destination")
    return tuple(found)


_MESSAGES = {
    "resource_secrets": "resource looks like secrets or credentials",
    "resource_phi": "resource looks like protected health information",
    "resource_pii": "resource looks like personal data",
    "resource_system": "resource is a system path",
    "resource_production": "resource is in production",
    "payload_destructive_sql": "payload has a destructive SQL statement (DROP, TRUNCATE, DELETE/UPDATE without WHERE)",
    "payload_destructive_shell": "payload has a destructive shell command",
    "payload_credentials": "payload carries credentials",
    "payload_privilege": "payload asks for elevated privileges",
    "payload_identifiers": "payload carries SSNs, card numbers or medical record numbers",
    "payload_outbound_destination": "payload sends to an outbound destination",
}


@functools.lru_cache(maxsize=16384)  # agents touch the same resources again and again
def resource_signals(normalized_resource: str) -> tuple[str, ...]:
    lowered = normalized_resource.lower()
    return tuple(code for code, _, pattern in RESOURCE_RULES if pattern.search(lowered))


_RESOURCE_SEVERITY = {code: severity for code, severity, _ in RESOURCE_RULES}
# The rules that judge what an action is and where it acts, not what it carries: priors about any agent, which an
# agent's own habit can outweigh (risk.scoring.behavior.habituated).
PRIOR_CODES = frozenset({"action_type", *_RESOURCE_SEVERITY})


def noisy_or(severities: list[float]) -> float:
    """1 - prod(1 - s): in [0, 1] and non-decreasing in every severity.

    >>> round(noisy_or([0.5, 0.5]), 2)
    0.75
    """
    remaining = 1.0
    for s in severities:
        remaining *= 1.0 - s
    return 1.0 - remaining


class RuleScorer:
    """Severity from the action type, the resource and the payload, with a reason for every rule that fired.

    >>> score, reasons = RuleScorer().score(ActionType.DATABASE_QUERY, "data.claims", {"sql": "DROP TABLE claims"})
    >>> score > 0.5, [r.code for r in reasons]
    (True, ['payload_destructive_sql', 'action_type'])
    """

    def score(
        self, action_type: ActionType, normalized_resource: str, payload: Any, *, real_resource: str | None = None
    ) -> tuple[float, list[Reason]]:
        """`real_resource` is where a file resource's symlinks lead (`Readings.real`): a link `summary.csv` to
        patient_records.csv reads patient records, so each rule fires if it fires on either path."""
        codes = resource_signals(normalized_resource)
        if real_resource is not None:
            codes = tuple(dict.fromkeys((*codes, *resource_signals(real_resource))))
        reasons = [_REASONS[c] for c in codes]
        reasons += [_REASONS[c] for c in payload_signals(payload, action_type)]
        reasons.append(_ACTION_REASONS[action_type])
        reasons.sort(key=heaviest_first)
        return noisy_or([r.weight for r in reasons]), reasons


# Reasons are immutable: build each once.
_REASONS = {code: Reason(code, _MESSAGES[code], {**_RESOURCE_SEVERITY, **PAYLOAD_SEVERITY}[code]) for code in _MESSAGES}
_ACTION_REASONS = {
    t: Reason("action_type", f"{t.value} carries base severity {s:.2f}", s) for t, s in ACTION_TYPE_SEVERITY.items()
}
