"""Behavioral scoring: profile -> features -> batch and online models -> calibrated severities and reasons.

The guard asks `assess` before deciding, tells `observe` what it decided, and hands `learn` the actions
whose tools reported success. Each model's severity is scaled by the agent's maturity (how much of a
baseline it has), so a brand-new agent is judged by the rules alone and its novelty is not held
against it; see the README's "Cold start".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from risk.actions import ActionType, Reason
from risk.features import (
    FEATURES,
    amounts,
    destinations,
    feature_vector,
    maturity,
    model_input,
    named_destinations,
    resource_prefix,
)
from risk.profiles import ActionSeen, AgentProfile, MemoryProfiles, Probe, ProfileStore, habit_key
from risk.resources import Readings
from risk.scoring.model import BehaviorModel
from risk.scoring.online import OnlineScorer
from risk.scoring.rules import PRIOR_CODES, noisy_or

REASON_FLOOR = 0.05  # behavioral severities below this are noise, not reasons

# Novelty that matters when an action changes or sends something: (feature, severity, reason text).
# A read of something new is how agents work; a first payment to an unseen account is how fraud looks.
NOVELTY_RULES: tuple[tuple[str, float, str], ...] = (
    ("new_destination", 0.60, "sends to a destination this agent never used"),
    ("denied_destination", 0.70, "sends to a destination of an action the guard denied before"),
    ("new_action_type", 0.30, "first time this agent takes this kind of action"),
    ("new_prefix", 0.20, "first time this agent touches this folder, schema or service"),
    ("amount_deviation", 0.60, "an amount far outside the range this agent has used"),
)
_NOVELTY_INDEX = tuple((FEATURES.index(name), severity, message) for name, severity, message in NOVELTY_RULES)
READ_ONLY = frozenset({ActionType.FILE_READ, ActionType.DATABASE_QUERY})


def novelty(x: Sequence[float], action_type: ActionType) -> list[Reason]:
    """The novelty rules that fire for a side-effecting action with features `x` (before maturity).

    >>> x = [0.0] * len(FEATURES); x[FEATURES.index("new_destination")] = 1.0
    >>> [(r.code, r.weight) for r in novelty(x, ActionType.API_CALL)], novelty(x, ActionType.FILE_READ)
    ([('new_destination', 0.6)], [])
    """
    if action_type in READ_ONLY:
        return []
    return [Reason(FEATURES[i], message, severity * x[i]) for i, severity, message in _NOVELTY_INDEX if x[i] > 0]


# How much less the priors (rule action type and resource severities) count for a habit of a mature agent: an action
# type it ran on the same resource before, unflagged. A devops agent's daily deploy to production is what that agent
# is for: at full prior, each scored 0.58 and paused it at the threshold 0.5. Halved, not removed: the same resource
# can see another command (`kubectl scale --all --replicas=0`, which no payload rule knows), and only the prior
# still weighs it. See the README's "Habits" for what halving and removing did on synthetic data.
HABIT_DISCOUNT = 0.5


def habituated(rule_score: float, rule_reasons: Sequence[Reason], discount: float) -> float:
    """The rule score with the priors among `rule_reasons` counted `1 - discount` times (0: `rule_score`).

    >>> from risk.scoring.rules import RuleScorer
    >>> score, reasons = RuleScorer().score(ActionType.PROCESS_SPAWN, "k8s/prod/deployments", {})
    >>> round(score, 4), round(habituated(score, reasons, 0.5), 4)
    (0.5775, 0.3194)
    """
    if not discount:
        return rule_score
    return noisy_or([r.weight * (1.0 - discount) if r.code in PRIOR_CODES else r.weight for r in rule_reasons])


def combined(rule_score: float, severities: Sequence[float]) -> float:
    """The risk score: the rule score with the behavioral severities folded in by noisy-OR (none: unchanged).

    >>> combined(0.5, [0.5]), combined(0.3, [0.0])
    (0.75, 0.3)
    """
    return noisy_or([rule_score, *severities]) if any(severities) else rule_score


PENDING_LIMIT = 10_000  # feature rows kept for actions whose outcome has not been reported yet


@dataclass(frozen=True, slots=True)
class Assessment:
    severities: tuple[float, ...]
    reasons: tuple[Reason, ...]
    features: tuple[float, ...]
    maturity: float  # how much the agent's baseline counted (see risk.features.maturity)
    prefix: str
    unseen_primary: tuple[str, ...]  # where the action itself goes that the agent never went before
    destinations: tuple[str, ...]
    amounts: tuple[tuple[str, float], ...] = ()  # its quantity arguments (see risk.features.amounts)
    habit: str = ""  # its habit_key: what the agent's profile remembers if it runs unflagged
    prior_discount: float = 0.0  # how much less the rule priors count: a habit (see HABIT_DISCOUNT)
    suspect: tuple[str, ...] = ()  # its destinations where a denied action of the agent tried to go
    primary: tuple[str, ...] = ()  # where the action itself goes (see risk.features.destinations)


class BehaviorScorer:
    """How unlike itself an agent is behaving, from a batch model, an online model, or both."""

    def __init__(
        self,
        model: BehaviorModel | None,
        online: OnlineScorer | None,
        profiles: ProfileStore | None = None,
    ) -> None:
        if model is not None and not model.scores_these_features:
            raise ValueError(f"model {model.model_version} was trained on other features; retrain it")
        self.model = model
        self.online = online
        self.profiles: ProfileStore = profiles if profiles is not None else MemoryProfiles()
        self._pending: OrderedDict[str, tuple[float, ...]] = OrderedDict()

    @property
    def version(self) -> str:
        parts = [self.model.model_version] if self.model else []
        if self.online:
            parts.append(f"online-hst{self.online.n_trees}x{self.online.height}")
        return "+".join(parts)

    def assess(
        self,
        agent_id: str,
        *,
        ts: float,
        action_type: ActionType,
        resource: str | Readings,
        payload: Any,
        payload_bytes: int,
        rule_reasons: Sequence[Reason],
        task: str | None = None,
    ) -> Assessment:
        """How the action looks against the agent's profile. `task` is the instruction the agent is carrying out,
        as its principal gave it: a destination it names is not new to the agent, nor blamed if the action is
        flagged, since the principal asked for it (see `risk.features.named_destinations`). `resource` is the
        normalized resource, or better all its readings (`risk.resources.readings`, symlinks resolved for a
        file): destinations are read from each, and a habit is the same action type on a resource that reads
        alike every way, so neither a link the agent used every day pointed at patient records, nor
        `https://evil.example/../` before the agent's usual host, is the habit of the path it resembles."""
        read = resource if isinstance(resource, Readings) else Readings(resource, (resource,), False)
        resource = read.canonical
        prefix = resource_prefix(resource)
        primary, dests = destinations(resource, payload, read.all)
        quantities = amounts(action_type, payload)
        named = named_destinations(task, dests) if task else frozenset()
        habit = habit_key(action_type.value, read.identity)

        def measure(profile: AgentProfile) -> tuple[list[float], float, tuple[str, ...], tuple[str, ...], float]:
            weight = maturity(profile)
            discount = HABIT_DISCOUNT * weight if habit in profile.habits else 0.0
            x = feature_vector(
                profile,
                ts=ts,
                action_type=action_type,
                resource=resource,
                prefix=prefix,
                dests=dests,
                rule_reasons=rule_reasons,
                payload_bytes=payload_bytes,
                action_amounts=quantities,
                named=named,
                prior_discount=discount,
            )
            unseen = tuple(d for d in dests if d not in profile.destinations)
            return x, weight, unseen, tuple(d for d in dests if d in profile.denied_destinations), discount

        x, weight, unseen, suspect, discount = self.profiles.read(
            agent_id, Probe(resource, prefix, dests, habit), measure
        )
        new = set(unseen)
        unseen_primary = tuple(d for d in primary if d in new and d not in named)
        severities, reasons = [], []
        if waived := [d for d in unseen if d in named]:
            reasons.append(Reason("named_by_task", f"new destinations the task names: {', '.join(waived)}"))
        if discount:
            why = f"this agent ran {action_type.value} on this resource before, unflagged: "
            reasons.append(Reason("habitual", why + f"the action type and resource rules count {1 - discount:.0%}"))
        if weight > 0:
            found = [Reason(r.code, _named(r.message, r.code, suspect, primary), r.weight * weight)
                     for r in novelty(x, action_type)]  # fmt: skip
            if found:
                severities.append(noisy_or([r.weight for r in found]))
                reasons += [r for r in found if r.weight >= REASON_FLOOR]
        seen = model_input(x)
        if self.model is not None and weight > 0:
            s = self.model.severity(seen) * weight
            severities.append(s)
            if s >= REASON_FLOOR:
                reasons.append(Reason("behavior_model", _message("unusual for this agent", self.model, seen, s), s))
        if self.online is not None and weight > 0:
            s = self.online.severity(seen) * weight
            severities.append(s)
            if s >= REASON_FLOOR:
                reasons.append(Reason("behavior_online", f"the streaming model finds this unusual ({s:.2f})", s))
        return Assessment(
            tuple(severities),
            tuple(reasons),
            tuple(x),
            weight,
            prefix,
            unseen_primary,
            dests,
            quantities,
            habit,
            discount,
            suspect,
            primary,
        )

    def observe(
        self, agent_id: str, action_id: str, ts: float, action_type: ActionType, resource: str,
        assessment: Assessment, allowed: bool, *, flagged: bool = False, blame: bool = False, approved: bool = False,
    ) -> None:  # fmt: skip
        """Fold a decision into the agent's profile. Every decision counts toward the denial rate, a denied or
        `flagged` one (not simply allowed: denied, or alerted and run) as a denial. An allowed action shapes the
        baseline, but a flagged one not with its new destinations, its amounts, nor as a habit; `blame` (denied or
        flagged for what the action itself is) marks those destinations as suspect, and no action teaches a suspect
        destination but one that ran by a reviewer's one-time approval (`approved`) and goes there: the reviewer
        vouched for where it goes. Such an action makes no habit, though: the approval was for that payload, once. The
        features of an allowed, unflagged action wait for its outcome, to be learned by the online model."""
        denied = flagged or not allowed
        seen = None
        vouched: tuple[str, ...] = ()
        if allowed:  # it ran
            # Where a denied action went stays suspect (not learned) until a reviewer approves an action going there
            # (the reason the reviewer saw named it); one its payload only mentions, as a link in a message, not.
            if approved and not flagged:
                goes = set(assessment.primary)
                vouched = tuple(d for d in assessment.suspect if d in goes)
            still_suspect = set(assessment.suspect).difference(vouched)
            sent = () if flagged else tuple(d for d in assessment.destinations if d not in still_suspect)
            sent_amounts = () if flagged else assessment.amounts
            habit = "" if flagged or approved else assessment.habit
            seen = ActionSeen(ts, action_type.value, resource, assessment.prefix, sent, sent_amounts, habit)
        # Blame only where the flagged action tried to go, and only places the agent never used.
        blamed = assessment.unseen_primary if blame else ()
        self.profiles.record(agent_id, denied=denied, blamed=blamed, action=seen, cleared=vouched)
        if not denied and self.online is not None:
            self._pending[action_id] = assessment.features
            if len(self._pending) > PENDING_LIMIT:
                self._pending.popitem(last=False)

    def outcome(self, agent_id: str, action_id: str, ts: float, *, success: bool, volume: float) -> None:
        """A tool reported how an allowed action went; a success is learned by the online model."""
        self.profiles.record_outcome(agent_id, ts, not success, volume)
        x = self._pending.pop(action_id, None)
        if success and x is not None and self.online is not None:
            self.online.learn(model_input(x))


NAMED_SUSPECTS = 5  # suspect destinations a reason names; a mail to thousands must not put them all in each record


def _named(message: str, code: str, suspect: Sequence[str], primary: Sequence[str]) -> str:
    """A novelty reason's message; denied_destination's names the suspect destinations, so a reviewer approving
    the action knows which of them the approval vouches for (those it goes to)."""
    if code != "denied_destination" or not suspect:
        return message
    goes = set(primary)
    shown = [f"{d} ({'where it goes' if d in goes else 'in its payload'})" for d in suspect[:NAMED_SUSPECTS]]
    more = f" and {len(suspect) - NAMED_SUSPECTS} more" if len(suspect) > NAMED_SUSPECTS else ""
    return f"{message}: {', '.join(shown)}{more}"


def _message(what: str, model: BehaviorModel, x: Sequence[float], severity: float) -> str:
    rare = model.explain(x)
    if not rare:
        return f"{what} ({severity:.2f})"
    detail = ", ".join(f"{name}={value:.2f} (benign: {share:.1%} at or above)" for name, value, share in rare)
    return f"{what} ({severity:.2f}): {detail}"
