"""agent-risk: runtime governance and risk scoring for AI agents.

>>> from risk import Guard, ActionType, KillSwitchMode
"""

from risk.actions import ActionType, AgentStatus, Decision, KillSwitchMode, Outcome, Reason
from risk.errors import (
    ActionDenied,
    AgentPaused,
    AgentTerminated,
    AuditError,
    AuditIntegrityError,
    GuardDenied,
    PolicyError,
    RetentionError,
    RiskError,
    StateError,
)
from risk.guard import Guard
from risk.policy import Policy
from risk.rollback import RollbackReport, StepStatus

__all__ = [
    "ActionDenied",
    "ActionType",
    "AgentPaused",
    "AgentStatus",
    "AgentTerminated",
    "AuditError",
    "AuditIntegrityError",
    "Decision",
    "Guard",
    "GuardDenied",
    "KillSwitchMode",
    "Outcome",
    "Policy",
    "PolicyError",
    "Reason",
    "RetentionError",
    "RiskError",
    "RollbackReport",
    "StateError",
    "StepStatus",
]
__version__ = "0.1.0"
