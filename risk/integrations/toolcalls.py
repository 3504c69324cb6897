"""How a tool call becomes a governed action: a guard check before it runs, its outcome after.

The MCP gateway and the framework integrations share it. A `ToolMap` (see `risk.integrations.tool_map`)
says what action type a call is and which resources it touches; each resource is checked, with the payload
`{"tool": name, "args": arguments}` so the rules also read the arguments, and the first denial refuses the
whole call. File writes and deletes are snapshotted before an allowed call runs, for rollback.

>>> import tempfile
>>> from risk import ActionType, Guard
>>> guard = Guard(blocked_resources=["/etc/*"], audit=f"sqlite:///{tempfile.mkdtemp()}/audit.db", model=None)
>>> governor = ToolGovernor(guard, ToolMap.from_config({"read_file": (ActionType.FILE_READ, "path")}))
>>> governor.check("read_file", {"path": "/etc/shadow"}).allowed
False
>>> call = governor.check("read_file", {"path": "notes.txt"})
>>> call.allowed
True
>>> governor.finish(call, error=None)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from risk.actions import Decision
from risk.errors import GuardDenied
from risk.guard import Guard
from risk.integrations.tool_map import ToolMap
from risk.rollback import UndoStep, discard

log = logging.getLogger("risk")


@dataclass(frozen=True, slots=True)
class GovernedCall:
    """The verdict on one tool call.

    An allowed call has one decision per resource it touches, each with its undo; a refused one has the
    decision that refused it, or none when the call could not be checked at all.
    """

    tool: str
    message: str
    decisions: tuple[Decision, ...] = ()
    undos: tuple[UndoStep, ...] = field(default=(), repr=False)  # one per decision, made before the call runs

    @property
    def decision(self) -> Decision | None:
        """The decision that settled the call: its denial, or the last of its allowances."""
        return self.decisions[-1] if self.decisions else None

    @property
    def allowed(self) -> bool:
        return self.decision is not None and self.decision.allowed

    @property
    def stops_run(self) -> bool:
        """True when the agent was paused, rolled back or terminated: its run must end here."""
        return self.decision is not None and self.decision.outcome.stops

    def denial(self) -> GuardDenied:
        """The exception that ends a run (AgentPaused or AgentTerminated); only for a decided, denied call."""
        if self.decision is None or self.decision.allowed:
            raise ValueError(f"the call to {self.tool} was not denied by a decision")
        return GuardDenied.for_decision(self.decision)


class ToolGovernor:
    """Checks tool calls with a guard, as `tools` maps them, and records their outcomes."""

    def __init__(
        self, guard: Guard, tools: ToolMap, *, agent_id: str | None = None, session_id: str | None = None
    ) -> None:
        self.guard = guard
        self.tools = tools
        self.agent_id = agent_id
        self.session_id = session_id

    def check(self, tool: str, args: Mapping[str, Any]) -> GovernedCall:
        """Ask the guard about one call, resource by resource; never raises for a denial.

        Stops at the first denial: with PAUSE, every later check would only repeat it.
        """
        try:
            call = self.tools.resolve(tool, args)
        except ValueError as exc:  # the arguments name no resource to check, so nothing may run
            log.warning("not running %s: %s", tool, exc)
            return GovernedCall(tool, f"denied: {exc}")
        allowed: list[Decision] = []
        for resource in call.resources:
            try:
                decision = self.guard.check(  # the user's task comes from the caller's Guard.working_on block
                    call.action_type, resource, call.payload, agent_id=self.agent_id, session_id=self.session_id
                )
            except ValueError as exc:  # not a resource at all (empty, too long)
                return self._refuse(allowed, GovernedCall(tool, f"denied: tool {tool!r}: {exc}"))
            if not decision.allowed:
                return self._refuse(allowed, GovernedCall(tool, f"{tool}: {decision.explain()}", (decision,)))
            allowed.append(decision)
        undos: list[UndoStep] = []
        try:
            for d in allowed:
                undos.append(self.guard.undo_step(d, *self.guard.prepare_undo(call.action_type, d)))
        except OSError as exc:  # no way back (a snapshot the disk had no room for): the call may not run
            for made in undos:
                discard(made)
            return self._refuse(allowed, GovernedCall(tool, f"denied: {tool}: its undo could not be prepared: {exc}"))
        return GovernedCall(tool, "; ".join(d.explain() for d in allowed), tuple(allowed), tuple(undos))

    def abandon(self, call: GovernedCall, why: str) -> None:
        """Record that an allowed call will not run after all (`why`), and delete its snapshots: kept, a rollback
        would put back the files as they were at this check, over what others wrote since."""
        for step in call.undos:
            discard(step)
        self._refuse(call.decisions if call.allowed else (), GovernedCall(call.tool, why))

    def finish(self, call: GovernedCall, *, error: str | None, size: int | None = None, over: bool = True) -> None:
        """Record what an allowed call did (`error` None for success, `size` its answer's bytes if known)
        and keep its undos for rollback (undone at once if the agent was rolled back while the call ran).
        `over=False` when the call may still be running (see `Guard.keep_undo`)."""
        if not call.allowed:
            return
        for decision, step in zip(call.decisions, call.undos, strict=True):
            self.guard.keep_undo(step, functools.partial(
                self.guard.record_outcome, decision.action_id, success=error is None, error=error, bytes=size,
                agent_id=decision.agent_id,
            ), over=over)  # fmt: skip

    def _refuse(self, allowed: Sequence[Decision], refusal: GovernedCall) -> GovernedCall:
        """The refusal, after recording that the resources allowed before it were not touched after all."""
        for d in allowed:
            self.guard.record_outcome(
                d.action_id, success=False, error=f"not run: {refusal.message}", agent_id=d.agent_id
            )
        return refusal
