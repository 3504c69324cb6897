"""The kill switch: the per-agent state machine (running, paused, terminated) and what each mode does.

    running --PAUSE/ROLLBACK--> paused --approve/resume--> running
    running/paused --TERMINATE--> terminated --reset--> running

Every transition is handed to `record` (the audit trail) with the actor who made it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from risk.actions import AgentStatus, KillSwitchMode, Outcome, Reason
from risk.errors import StateError
from risk.state import AgentState, StateStore

MODE_OUTCOME: dict[KillSwitchMode, Outcome] = {
    KillSwitchMode.ALERT: Outcome.ALERTED,
    KillSwitchMode.BLOCK: Outcome.BLOCKED,
    KillSwitchMode.PAUSE: Outcome.PAUSED,
    KillSwitchMode.ROLLBACK: Outcome.ROLLED_BACK,
    KillSwitchMode.TERMINATE: Outcome.TERMINATED,
}

Recorder = Callable[[str, dict[str, Any]], None]


class KillSwitch:
    """Reads and moves each agent's status through a StateStore, recording every move."""

    def __init__(self, state: StateStore, record: Recorder) -> None:
        self._state = state
        self._record = record

    def status(self, agent_id: str) -> AgentState:
        return self._state.get_state(agent_id)

    def gate(self, agent_id: str) -> tuple[Outcome, Reason] | None:
        """Why a stopped agent may not act, or None when it is running."""
        state = self._state.get_state(agent_id)
        if state.status is AgentStatus.TERMINATED:
            return Outcome.TERMINATED, Reason("agent_terminated", f"agent is terminated: {state.reason}", 1.0, True)
        if state.status is AgentStatus.PAUSED:
            return Outcome.PAUSED, Reason("agent_paused", f"agent is paused: {state.reason}", 1.0, True)
        return None

    def pause(self, agent_id: str, *, actor: str, reason: str, action_id: str | None, fingerprint: str | None) -> None:
        if self._state.get_state(agent_id).status is AgentStatus.TERMINATED:
            return  # terminated outranks paused
        self._move(agent_id, AgentState(AgentStatus.PAUSED, reason, actor, action_id, fingerprint), actor)

    def terminate(self, agent_id: str, *, actor: str, reason: str) -> None:
        self._move(agent_id, AgentState(AgentStatus.TERMINATED, reason, actor), actor)

    def approve(self, agent_id: str, *, actor: str) -> str | None:
        """Resume a paused agent and let the action that paused it run once; returns that action's id."""
        state = self._require(agent_id, AgentStatus.PAUSED, "approve")
        if state.pending_fingerprint is not None:
            self._state.grant_approval(agent_id, state.pending_fingerprint)
        self._move(
            agent_id, AgentState(AgentStatus.RUNNING, "approved", actor), actor, approved=state.pending_action_id
        )
        return state.pending_action_id

    def resume(self, agent_id: str, *, actor: str) -> None:
        """Resume a paused agent without approving the action that paused it."""
        self._require(agent_id, AgentStatus.PAUSED, "resume")
        self._move(agent_id, AgentState(AgentStatus.RUNNING, "resumed", actor), actor)

    def reset(self, agent_id: str, *, actor: str) -> None:
        """Revive a terminated (or paused) agent: the only way back from TERMINATE."""
        self._move(agent_id, AgentState(AgentStatus.RUNNING, "reset", actor), actor)

    def _require(self, agent_id: str, status: AgentStatus, verb: str) -> AgentState:
        state = self._state.get_state(agent_id)
        if state.status is not status:
            hint = " use reset() to revive a terminated agent" if state.status is AgentStatus.TERMINATED else ""
            raise StateError(f"cannot {verb} agent {agent_id!r}: it is {state.status.value}, not {status.value};{hint}")
        return state

    def _move(self, agent_id: str, new: AgentState, actor: str, **detail: Any) -> None:
        old = self._state.get_state(agent_id)
        self._state.set_state(agent_id, new)
        self._record(
            agent_id,
            {
                "kind": "killswitch",
                "actor": actor,
                "outcome": new.status.value,
                "action_id": new.pending_action_id,
                "detail": {"from": old.status.value, "to": new.status.value, "reason": new.reason, **detail},
            },
        )
