"""Exceptions a user of the SDK may catch. Each message says what to do next."""

from __future__ import annotations

from risk.actions import Decision, Outcome


class RiskError(Exception):
    """Base class of every error raised by agent-risk."""


class GuardDenied(RiskError):
    """A guarded tool call was not allowed to run. `decision` says why."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(f"{decision.action_type.value} on {decision.resource!r} {decision.explain()}")

    @classmethod
    def for_decision(cls, decision: Decision) -> GuardDenied:
        """The exception a denied `decision` raises: AgentTerminated, AgentPaused (also after a rollback) or
        ActionDenied, whichever says what the agent may do next."""
        if decision.outcome is Outcome.TERMINATED:
            return AgentTerminated(decision)
        if decision.outcome in (Outcome.PAUSED, Outcome.ROLLED_BACK):
            return AgentPaused(decision)
        return ActionDenied(decision)


class ActionDenied(GuardDenied):
    """The action broke the policy or scored above the risk threshold; the agent may go on."""


class AgentPaused(GuardDenied):
    """The agent is paused; a reviewer must `approve` or `resume` it before it acts again."""


class AgentTerminated(GuardDenied):
    """The agent was terminated; only `reset` revives it."""


class PolicyError(RiskError, ValueError):
    """A policy (keyword arguments or a file) is invalid. The message names the field."""


class AuditError(RiskError):
    """The audit trail could not be written or read."""


class AuditRecordError(AuditError):
    """One record cannot be stored for what it holds (a NUL PostgreSQL text refuses, an unpaired surrogate),
    while the store itself works."""


class AuditIntegrityError(AuditError):
    """The audit trail does not verify: a record was edited, deleted, reordered or truncated."""


class RetentionError(AuditError):
    """A purge would delete records younger than the retention period."""


class StateError(RiskError):
    """A kill-switch transition that is not allowed, such as resuming a terminated agent."""
