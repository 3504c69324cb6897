"""The service's request and response bodies: the typed edge between HTTP and `risk`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from risk.actions import MAX_AMOUNT, MAX_PAYLOAD_DEPTH, MAX_TASK_LENGTH, ActionType, Outcome, nesting
from risk.tenants import AGENT_PATTERN

AGENT_REGEX = f"^{AGENT_PATTERN.pattern}$"
AGENT_RULE = "1-128 letters, digits or . _ : @ + = -, starting with a letter or digit; unique per tenant"

AgentId = Annotated[str, Field(pattern=AGENT_REGEX, description=AGENT_RULE, examples=["claims-analyst"])]


def no_nul(value: str) -> str:
    """`value` if it has no NUL character: PostgreSQL cannot hold one in a text column, and a key, an id, a
    filter or a note with one is a client's mistake (422), not a store outage (503)."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\x00)")
    return value


# Names, keys, ids, filters and notes: text without NUL. What an action is about (its resource, payload) and
# error messages may hold any character; the audit trail stores them escaped.
Text = Annotated[str, AfterValidator(no_nul)]


class Strict(BaseModel):
    """A request body: no field it does not name. Its booleans and counts are declared strict (StrictBool,
    StrictInt) too, so "yes", "5" or 5.0 is refused rather than read as true or 5: what a client sent is
    what the audit trail records."""

    model_config = ConfigDict(extra="forbid")


class CheckRequest(Strict):
    agent_id: AgentId
    action_type: ActionType
    resource: str = Field(min_length=1, max_length=4096, examples=["data.deidentified.claims"])
    payload: Any = Field(default=None, description=f"any JSON, nested at most {MAX_PAYLOAD_DEPTH} levels")
    session_id: Text | None = Field(default=None, max_length=256)
    task: str | None = Field(
        default=None,
        max_length=MAX_TASK_LENGTH,
        description="the instruction the agent carries out, as its user gave it (never text read from a tool): "
        "a destination it names does not count as new for the agent",
    )
    idempotency_key: Text | None = Field(
        default=None, min_length=1, max_length=128, description="a repeated key returns the first decision"
    )

    @field_validator("payload")
    @classmethod
    def _shallow(cls, value: Any) -> Any:
        if nesting(value) > MAX_PAYLOAD_DEPTH:
            raise ValueError(f"payload is nested more than {MAX_PAYLOAD_DEPTH} levels deep")
        return value


class BatchRequest(Strict):
    actions: list[CheckRequest] = Field(min_length=1, max_length=1000)


class ReasonOut(BaseModel):
    code: str
    message: str
    weight: StrictFloat  # strict: a client's spool reports reasons too
    violation: StrictBool


class DecisionOut(BaseModel):
    action_id: str
    agent_id: str
    allowed: bool
    outcome: Outcome
    risk_score: float
    reasons: list[ReasonOut]
    action_type: ActionType
    resource: str
    normalized_resource: str


class BatchOut(BaseModel):
    decisions: list[DecisionOut]


class OutcomeRequest(Strict):
    action_id: Text = Field(min_length=1, max_length=64)
    success: StrictBool
    error: str | None = Field(default=None, max_length=4096)
    rows: StrictInt | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    bytes: StrictInt | None = Field(default=None, ge=0, le=MAX_AMOUNT)


class ReportedRecord(Strict):
    """One record of a client's spool: a decision it made itself (fail-open), an outcome it could not send, or a
    rollback step it ran (undo steps live in the client's process)."""

    idempotency_key: Text = Field(min_length=1, max_length=128)
    kind: Literal["decision", "outcome", "rollback"]
    allowed: StrictBool | None = Field(
        default=None, description="a decision's verdict: true for fail-open (the default)"
    )
    ts: Text | None = Field(default=None, max_length=64)
    action_id: str = Field(pattern="^[0-9a-f]{1,64}$")
    agent_id: AgentId | None = None
    session_id: Text | None = Field(default=None, max_length=256)
    action_type: ActionType | None = None
    resource: str | None = Field(default=None, min_length=1, max_length=4096)
    payload_digest: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    task_digest: str | None = Field(default=None, pattern="^[0-9a-f]{64}$", description="SHA-256 of the check's task")
    reasons: list[ReasonOut] = Field(default_factory=list, max_length=32)
    error: str | None = Field(default=None, max_length=4096)
    success: StrictBool | None = None
    rows: StrictInt | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    bytes: StrictInt | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    outcome: Literal["pending", "undone", "failed", "irreversible"] | None = Field(
        default=None, description="a rollback step's result"
    )
    detail: dict[str, str | None] | None = Field(default=None, max_length=16, description="a rollback step's detail")

    @model_validator(mode="after")
    def _complete(self) -> ReportedRecord:
        if self.kind == "decision" and None in (self.agent_id, self.action_type, self.resource):
            raise ValueError("a decision record needs agent_id, action_type and resource")
        if self.kind == "outcome" and self.success is None:
            raise ValueError("an outcome record needs success")
        if self.kind == "rollback" and None in (self.agent_id, self.outcome):
            raise ValueError("a rollback record needs agent_id and outcome")
        return self


class ReportRequest(Strict):
    records: list[ReportedRecord] = Field(min_length=1, max_length=1000)


class ReportOut(BaseModel):
    accepted: int
    duplicates: int = Field(description="records the service already had (same idempotency key)")
    rejected: list[dict[str, str]] = Field(description="records it could not store, with the reason")


class OutcomeOut(BaseModel):
    action_id: str
    agent_id: str
    recorded: bool = True


class AgentOut(BaseModel):
    agent_id: str
    status: str
    reason: str
    actor: str
    pending_action_id: str | None


class TerminateRequest(Strict):
    reason: Text = Field(default="terminated by a reviewer", min_length=1, max_length=1000)


class ApproveOut(BaseModel):
    agent_id: str
    approved_action_id: str | None


class StepOut(BaseModel):
    action_id: str
    description: str
    status: str
    error: str


class RollbackOut(BaseModel):
    agent_id: str
    complete: bool
    steps: list[StepOut]


class ApprovalOut(BaseModel):
    agent_id: str
    reason: str
    paused_by: str
    pending_action_id: str | None
    decision: DecisionOut


class ApprovalsOut(BaseModel):
    approvals: list[ApprovalOut]


class AuditPage(BaseModel):
    records: list[dict[str, Any]]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class VerifyOut(BaseModel):
    ok: bool
    count: int
    head: str
    first_bad_seq: int | None
    problem: str | None


class HeadOut(BaseModel):
    count: int
    seq: int
    head: str


class PolicyOut(BaseModel):
    policy: dict[str, Any]
    policy_hash: str
    source: str = Field(description="agent, tenant, default (the service's) or embedded (the built-in default)")
    agents: list[str] = Field(default_factory=list, description="agents with a policy of their own")


class PolicyChangeOut(BaseModel):
    old_hash: str | None
    new_hash: str | None


class ModelsOut(BaseModel):
    active: str | None
    online: bool
    available: list[dict[str, Any]]


class ReloadOut(BaseModel):
    previous: str | None
    active: str | None


class KeyCreateRequest(Strict):
    role: str = Field(pattern="^(agent|reviewer|auditor|admin)$")
    note: Text = Field(default="", max_length=200)
    agents: list[Annotated[Text, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, min_length=1, max_length=100,
        description="agent ids (fnmatch patterns, case-sensitive) an agent key may act as; none: any of the tenant",
    )  # fmt: skip


class KeyOut(BaseModel):
    key_id: str
    tenant: str
    role: str
    created_at: str
    revoked_at: str | None
    note: str
    agents: list[str] | None = Field(default=None, description="the agent ids it is bound to; null: any")


class KeyCreatedOut(KeyOut):
    key: str = Field(description="the key itself; shown once, only its salted hash is stored")


class KeysOut(BaseModel):
    keys: list[KeyOut]


class Health(BaseModel):
    status: str
    stores: dict[str, str] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    detail: Any
