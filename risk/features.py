"""The behavioral feature vector: how one action looks against its agent's profile.

Every feature is a float where larger means less usual, so the models' anomaly scores and the reasons
built from them read the same way. The README's feature table documents each one.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from risk.actions import ActionType, Reason
from risk.profiles import AgentProfile
from risk.redaction import emails
from risk.resources import payload_texts
from risk.scoring.rules import noisy_or

FEATURES: tuple[str, ...] = (
    "action_type_severity",  # the rule prior of the action type (halved for a habit, as in the risk score)
    "resource_severity",  # strongest resource rule (PHI, PII, secrets, system, production), halved for a habit
    "payload_severity",  # payload rules combined (destructive SQL or shell, credentials, ...)
    "is_write",
    "is_delete",
    "is_exec",
    "is_permission",
    "new_action_type",  # first time this agent uses this action type
    "new_resource",  # ... this exact resource
    "new_prefix",  # ... this resource's folder, schema or service (touched as a resource of its own, it is known)
    "new_destination",  # 1 if any destination (email, domain, host, IBAN, recipient) was never used before
    "denied_destination",  # 1 if any was where a denied action tried to go (until a reviewer approves one there)
    "rate_1m",  # log ratio of actions in the last minute to the agent's usual per-active-minute rate
    "rate_10m",  # log ratio of actions in the last 10 minutes to the agent's long-run rate
    "rate_60m",  # the same over an hour
    "inter_arrival",  # log seconds since the agent's previous action (capped at an hour)
    "hour_rarity",  # how unusual this hour of day is for the agent (0 its busiest hour, 1 never seen)
    "distinct_recent",  # share of distinct resources among the last 20 actions and this one
    "payload_size",  # log bytes of the payload's JSON
    "sequence_rarity",  # how unusual this action type is after the previous one, for this agent
    "recent_denial_rate",  # share of the agent's last 20 decisions that were denials
    "recent_error_rate",  # share of the agent's last 20 reported outcomes that were errors
    "volume_ratio",  # log ratio of rows and bytes reported in the last hour to the agent's usual
    "amount_deviation",  # decades an amount argument lies outside the agent's range for it, halved, capped at 1
)
N_FEATURES = len(FEATURES)
# Raised whenever a feature's meaning changes, so a model trained on the old meaning is refused, not misread.
# 2: action_type_severity and resource_severity are halved for a habit (the model default-4).
# 3: new_prefix is 0 for a folder the agent touched itself, as a resource; volume_ratio counts only the last
#    hour's volume (it counted minutes older than that until the next outcome came). The model default-5.
FEATURES_VERSION = 3
# What the models see: all but the guard's own past decisions, and the amounts. A model that learned only
# denial-free history would read every denial as an anomaly and feed on its own output; novelty rules use those
# two instead. amount_deviation is read by its novelty rule only: the shipped forest was trained without it, and
# a model that sees it needs retraining under a new version.
MODEL_FEATURES = tuple(f for f in FEATURES if f not in ("denied_destination", "recent_denial_rate", "amount_deviation"))
_MODEL_INDEX = tuple(FEATURES.index(f) for f in MODEL_FEATURES)


def model_input(x: Sequence[float]) -> list[float]:
    """The MODEL_FEATURES of a full feature vector."""
    return [x[i] for i in _MODEL_INDEX]


BASELINE_ACTIONS = 10  # allowed actions before an agent's behavior counts fully (see `maturity`)

_WRITE = frozenset({ActionType.FILE_WRITE, ActionType.DATABASE_WRITE})
_DELETE = frozenset({ActionType.FILE_DELETE})
_EXEC = frozenset({ActionType.CODE_EXECUTION, ActionType.PROCESS_SPAWN})
_DESTRUCTIVE = frozenset({"payload_destructive_sql", "payload_destructive_shell"})
_N_TYPES = len(ActionType)
# A gap longer than this is a pause between sessions, and every session starts after one: counted longer (a day, as
# the model default-1 did), the first action of a session that followed a quiet day was an anomaly, and most benign
# sessions of the synthetic sample were paused on their first action.
INTER_ARRIVAL_CAP = 3600.0
_RATE_WINDOWS = (60.0, 600.0, 3600.0)  # seconds: rate_1m, rate_10m, rate_60m

_HOST = re.compile(r"https?://([^\s\"'/?#:]+)", re.I)
# Hosts written without a scheme: a www. name, or a name under a common top-level domain.
_TLDS = "com|org|net|io|co|info|biz|ai|dev|app|xyz|ru|cn|uk|de|ch|fr|me"
_BARE_HOST = re.compile(rf"(?<![\w@.-])((?:www\.)?(?:[a-z0-9-]+\.)+(?:{_TLDS}))\b", re.I)
# Every bare host ends in one of these; this search starts from a literal dot, so it costs a fraction of
# _BARE_HOST's on the dotted text that is not a host (table names, SQL).
_ENDS_IN_TLD = re.compile(rf"\.(?:{_TLDS})\b", re.I)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b")
_RECIPIENT_KEYS = frozenset({"recipient", "recipients", "to", "cc", "bcc", "user", "channel", "url", "iban"})
# Arguments that carry a quantity (money, items). An amount far outside what the agent ever used is how payment
# fraud looks, whatever the payee: a penny transfer whose memo carries data out, or a transfer of everything.
_AMOUNT_KEYS = frozenset({"amount", "price", "total", "value", "quantity", "qty", "sum"})
MIN_AMOUNTS = 3  # uses of an amount argument before its range counts
AMOUNT_DECADES_TO_FULL = 2.0  # a hundredfold outside the range gives amount_deviation 1


def resource_prefix(resource: str) -> str:
    """The folder, schema or service a resource sits in.

    >>> resource_prefix("/reports/readonly/q3.csv"), resource_prefix("data.deidentified.claims")
    ('/reports/readonly', 'data.deidentified')
    """
    cut = resource.rfind("/")
    if cut <= 0:
        cut = resource.rfind(".")
    return resource[:cut] if cut > 0 else resource


def destinations(resource: str, payload: Any, readings: Iterable[str] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Where an action sends things (email addresses and domains, URL hosts, IBANs, named recipients):
    (primary, every). Primary destinations are where it goes, from its resource (each of its `readings`: a URL
    normalized reads `https:/host/...`, which names no host, and `https://evil.example/../x.example/` names
    x.example, so the host a client sends to is found only in the form as given) and recipient arguments; every
    one adds those mentioned anywhere in its payload, such as a link in a message body.

    >>> primary, every = destinations("mail.send/a@x.example", {"body": "see https://evil.example/x"})
    >>> primary, every[len(primary):]
    (('email:a@x.example', 'domain:x.example'), ('host:evil.example',))
    """
    primary: dict[str, None] = {}
    for text in dict.fromkeys((resource, *readings)):  # the resource is one of its readings: scan it once
        _scan(text, primary)
    if isinstance(payload, dict):
        _recipients(payload, primary)
    every = dict(primary)
    for text in payload_texts(payload):
        _scan(text, every)
    return tuple(map(_bounded, primary)), tuple(map(_bounded, every))


MAX_DESTINATION_CHARS = 256


def _bounded(destination: str) -> str:
    """A destination as profiles remember it: one longer than MAX_DESTINATION_CHARS by its kind and a digest, so
    the agent's set of destinations (up to MAX_REMEMBERED of them) stays small however long the names an action
    sends to (a recipient argument of a megabyte was kept whole, for every action)."""
    if len(destination) <= MAX_DESTINATION_CHARS:
        return destination
    kind, _, value = destination.partition(":")
    return f"{kind}:sha256:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()}"


def named_destinations(task: str, dests: Iterable[str]) -> frozenset[str]:
    """The destinations among `dests` that `task`, the instruction the agent carries out, names: an address,
    host or IBAN written in it (with an address, its domain), or a recipient's name as a whole word.

    >>> sorted(named_destinations("Refund GB29NWBK60161331926819 and tell Bob", ["iban:GB29NWBK60161331926819",
    ...        "recipient:bob", "recipient:bobby", "host:evil.example"]))
    ['iban:GB29NWBK60161331926819', 'recipient:bob']
    """
    typed, lowered = _task_destinations(task)

    def names(d: str) -> bool:
        kind, _, value = d.partition(":")
        if kind == "recipient":
            return bool(value) and re.search(rf"(?<!\w){re.escape(value)}(?!\w)", lowered) is not None
        return d in typed

    return frozenset(d for d in dests if names(d))


@functools.lru_cache(maxsize=256)  # an agent's run checks many actions under one task
def _task_destinations(task: str) -> tuple[frozenset[str], str]:
    found: dict[str, None] = {}
    _scan(task, found)
    return frozenset(found), task.lower()


def _scan(text: str, found: dict[str, None]) -> None:
    if "@" in text:
        for m in emails(text):
            address = m.group().lower()
            found[f"email:{address}"] = None
            found[f"domain:{address.rpartition('@')[2]}"] = None
    if "://" in text:
        for m in _HOST.finditer(text):
            found[f"host:{_host(m.group(1))}"] = None
    if "." in text and _ENDS_IN_TLD.search(text):
        for m in _BARE_HOST.finditer(text):
            found[f"host:{_host(m.group(1))}"] = None
    for m in _IBAN.finditer(text):
        found[f"iban:{m.group()}"] = None


def _host(name: str) -> str:
    """A host as one destination however it is written: `EVIL.example.` (the DNS root's dot) and `www.evil.example`
    are evil.example, so neither passes as new where evil.example was denied."""
    return name.lower().rstrip(".").removeprefix("www.")


def _recipients(payload: dict[str, Any], found: dict[str, None]) -> None:
    stack: list[Any] = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if str(key).lower() in _RECIPIENT_KEYS:
                    for one in item if isinstance(item, list | tuple) else (item,):
                        if isinstance(one, str | int) and not isinstance(one, bool):
                            # A URL, address or IBAN argument is that destination; a bare name is a recipient.
                            typed: dict[str, None] = {}
                            _scan(str(one), typed)
                            found.update(typed or {f"recipient:{str(one).lower()}": None})
                elif isinstance(item, dict | list):
                    stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)


def amounts(action_type: ActionType, payload: Any) -> tuple[tuple[str, float], ...]:
    """The quantity arguments of a payload (any depth), as (name, log10 of the magnitude): the name is the
    action type and the key, so a transfer's amounts are not judged by an invoice query's. Zero, booleans,
    non-finite numbers and numbers written as strings are left out.

    >>> amounts(ActionType.API_CALL, {"tool": "pay", "args": {"iban": "X", "amount": 1000, "items": [{"qty": 0.1}]}})
    (('api_call/amount', 3.0), ('api_call/qty', -1.0))
    """
    if not isinstance(payload, dict):
        return ()
    found: list[tuple[str, float]] = []
    stack: list[Any] = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, dict | list | tuple):
                    stack.append(item)
                # An int is finite however large (math.isfinite would convert it to a float, and overflow).
                elif (
                    isinstance(item, int | float)
                    and not isinstance(item, bool)
                    and item
                    and (isinstance(item, int) or math.isfinite(item))
                ):
                    name = str(key).lower()
                    if name in _AMOUNT_KEYS:
                        found.append((f"{action_type.value}/{name}", math.log10(abs(item))))
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return tuple(sorted(found))


def amount_deviation(profile: AgentProfile, found: tuple[tuple[str, float], ...]) -> float:
    """How far the action's amounts lie outside the agent's range for each, in [0, 1] (see AMOUNT_DECADES_TO_FULL).

    >>> p = AgentProfile("a"); p.amounts["api_call/amount"] = [3, 1.0, 3.0]  # three uses, from 10 to 1,000
    >>> [amount_deviation(p, (("api_call/amount", x),)) for x in (2.0, 4.0, -2.0)]
    [0.0, 0.5, 1.0]
    """
    worst = 0.0
    for name, x in found:
        seen = profile.amounts.get(name)
        if seen is not None and seen[0] >= MIN_AMOUNTS:
            worst = max(worst, seen[1] - x, x - seen[2])
    return min(1.0, worst / AMOUNT_DECADES_TO_FULL)


def rule_parts(reasons: Sequence[Reason]) -> tuple[float, float, float]:
    """(action type, resource, payload) severities from the rule scorer's reasons."""
    action = resource = 0.0
    payload: list[float] = []
    for r in reasons:
        if r.code == "action_type":
            action = r.weight
        elif r.code.startswith("resource_"):
            resource = max(resource, r.weight)
        elif r.code.startswith("payload_"):
            payload.append(r.weight)
    return action, resource, noisy_or(payload)


def maturity(profile: AgentProfile) -> float:
    """How much the agent's baseline counts: 0 for a new agent, 1 after BASELINE_ACTIONS allowed actions."""
    return min(1.0, profile.actions / BASELINE_ACTIONS)


def feature_vector(
    profile: AgentProfile,
    *,
    ts: float,
    action_type: ActionType,
    resource: str,
    prefix: str,
    dests: tuple[str, ...],
    rule_reasons: Sequence[Reason],
    payload_bytes: int,
    action_amounts: tuple[tuple[str, float], ...] = (),
    named: frozenset[str] = frozenset(),
    prior_discount: float = 0.0,
) -> list[float]:
    """The FEATURES of one action, in order, measured against `profile` as it was before the action.
    Destinations in `named` (those the agent's task names, see `named_destinations`) do not count as new. The
    rule priors (action type and resource severities) count `1 - prior_discount` times, as in the risk score: for
    a habit (see risk.scoring.behavior.HABIT_DISCOUNT), so the models weigh them as the score does."""
    action_sev, resource_sev, payload_sev = rule_parts(rule_reasons)
    action_sev *= 1.0 - prior_discount
    resource_sev *= 1.0 - prior_discount
    value = action_type.value
    n = profile.actions
    seen_dests, denied_dests = profile.destinations, profile.denied_destinations
    new_dest = float(any(d not in seen_dests and d not in named for d in dests))
    denied_dest = float(any(d in denied_dests for d in dests))

    # Time runs backwards when workers sharing a profile disagree on the clock, or a trace is out of order:
    # such an action counts as coming right after the profile's latest, never as a negative span.
    usual_per_active_minute = n / profile.active_minutes if profile.active_minutes else 1.0
    span_minutes = (max(ts - profile.first_ts, 0.0) / 60.0 + 1.0) if profile.first_ts is not None else 1.0
    long_run_per_minute = n / span_minutes if n else 0.0
    c1, c10, c60 = (count + 1 for count in profile.counts_since(ts, _RATE_WINDOWS))

    hours = profile.hour_counts
    total_hours = n + 24
    p_hour = (hours[int(ts // 3600) % 24] + 1) / total_hours
    p_peak = (max(hours) + 1) / total_hours

    gap = max(ts - profile.last_ts, 0.0) if profile.last_ts is not None else INTER_ARRIVAL_CAP

    prev = profile.prev_type
    if prev is None:
        seq_rarity = 1.0 - 1.0 / _N_TYPES
    else:
        seq_rarity = 1.0 - (profile.transitions.get((prev, value), 0) + 1) / (
            profile.transitions_from.get(prev, 0) + _N_TYPES
        )

    window = list(profile.recent_resources)
    distinct = len({*window, resource}) / (len(window) + 1)
    denied = profile.recent_denied
    errors = profile.recent_errors
    volume_hour = profile.volume_last_hour(ts)
    volume_usual = profile.volume_baseline * max(1, c60 - 1)

    return [
        action_sev,
        resource_sev,
        payload_sev,
        float(action_type in _WRITE),
        float(action_type in _DELETE or any(r.code in _DESTRUCTIVE for r in rule_reasons)),
        float(action_type in _EXEC),
        float(action_type is ActionType.PERMISSION_CHANGE),
        float(value not in profile.type_counts),
        float(resource not in profile.resources),
        float(prefix not in profile.prefixes and prefix not in profile.resources),
        new_dest,
        denied_dest,
        math.log(c1 / (usual_per_active_minute + 1.0)),
        math.log(c10 / (long_run_per_minute * 10.0 + 1.0)),
        math.log(c60 / (long_run_per_minute * 60.0 + 1.0)),
        math.log1p(min(gap, INTER_ARRIVAL_CAP)),
        1.0 - p_hour / p_peak,
        distinct,
        math.log1p(payload_bytes),
        seq_rarity,
        sum(denied) / len(denied) if denied else 0.0,
        sum(errors) / len(errors) if errors else 0.0,
        math.log((volume_hour + 1.0) / (volume_usual + 1.0)),
        amount_deviation(profile, action_amounts),
    ]
