"""The kill switch: the per-agent state machine (running, paused, terminated) and what each mode does.

    running --PAUSE/ROLLBACK--> paused --approve/resume--> running
    running/paused --TERMINATE--> terminated --reset--> running

Every transition is handed to `record` (the audit trail) with the actor who made it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from risk.actions import AgentStatus, KillSwitchMode, Outcome, Reason
from risk.errors import AuditError, StateError
from risk.state import AgentState, StateStore

MODE_OUTCOME: dict[KillSwitchMode, Outcome] = {
    KillSwitchMode.ALERT: Outcome.ALERTED,
    KillSwitchMode.BLOCK: Outcome.BLOCKED,
    KillSwitchMode.PAUSE: Outcome.PAUSED,
    KillSwitchMode.ROLLBACK: Outcome.ROLLED_BACK,
    KillSwitchMode.TERMINATE: Outcome.TERMINATED,
}


class Recorder(Protocol):
    def __call__(self, agent_id: str, fields: dict[str, Any], *, strict: bool = False) -> None:
        """Record a move; with `strict`, raise AuditError if it cannot be recorded."""


MOVE_ATTEMPTS = 100  # compare-and-set retries; each loses only to another worker's completed move
# A move and its record are made under the agent's lock (striped by store and agent, for every guard of the
# process), or two moves in between each other's set and record (a terminate and a reset) put the trail's last
# word for the agent at odds with its status. Moves are rare; a lock is held for one set and one append.
_MOVE_LOCKS = tuple(threading.Lock() for _ in range(64))


class KillSwitch:
    """Reads and moves each agent's status through a StateStore, recording every move."""

    def __init__(self, state: StateStore, record: Recorder) -> None:
        self._state = state
        self._record = record

    def status(self, agent_id: str) -> AgentState:
        return self._state.get_state(agent_id)

    @staticmethod
    def gate(state: AgentState) -> tuple[Outcome, Reason] | None:
        """Why an agent in `state` may not act, or None when it is running."""
        if state.status is AgentStatus.TERMINATED:
            return Outcome.TERMINATED, Reason("agent_terminated", f"agent is terminated: {state.reason}", 1.0, True)
        if state.status is AgentStatus.PAUSED:
            return Outcome.PAUSED, Reason("agent_paused", f"agent is paused: {state.reason}", 1.0, True)
        return None

    def pause(self, agent_id: str, *, actor: str, reason: str, action_id: str | None, fingerprint: str | None) -> None:
        """Pause a running agent. One already paused keeps the action that paused it first; terminated
        outranks paused."""

        def pause(old: AgentState) -> AgentState | None:
            if old.status is not AgentStatus.RUNNING:
                return None
            return AgentState(AgentStatus.PAUSED, reason, actor, action_id, fingerprint)

        self._move(agent_id, pause, actor)

    def terminate(self, agent_id: str, *, actor: str, reason: str) -> None:
        self._move(agent_id, lambda old: AgentState(AgentStatus.TERMINATED, reason, actor), actor)

    def approve(self, agent_id: str, *, actor: str) -> str | None:
        """Resume a paused agent and let the action that paused it run once; returns that action's id.

        The grant is part of the running state the move sets, so it exists exactly while that state does: of
        two reviewers approving at once, one wins and the other gets a StateError; a later pause, resume or
        reset replaces it, and the action's next check uses it up (`use_approval`), whatever it needs it for.
        """
        old = self._move(agent_id, _from_paused(agent_id, "approve", actor, grant=True), actor, releasing=True)
        return old.pending_action_id

    def use_approval(self, agent_id: str, state: AgentState) -> bool:
        """Use up the approval in `state` (as just read); False if the state changed meanwhile (another worker
        used it, or the agent was paused again)."""
        return self._state.replace_state(agent_id, state, replace(state, approved_fingerprint=None))

    def resume(self, agent_id: str, *, actor: str) -> None:
        """Resume a paused agent without approving the action that paused it."""
        self._move(agent_id, _from_paused(agent_id, "resume", actor, grant=False), actor, releasing=True)

    def reset(self, agent_id: str, *, actor: str) -> None:
        """Revive a terminated (or paused) agent: the only way back from TERMINATE."""
        self._move(agent_id, lambda old: AgentState(AgentStatus.RUNNING, "reset", actor), actor, releasing=True)

    def _move(
        self, agent_id: str, step: Callable[[AgentState], AgentState | None], actor: str, *, releasing: bool = False
    ) -> AgentState:
        """Apply `step` to the agent's current state as one compare-and-set, retried while other workers move
        the same agent, and record the move. Returns the state moved from (`step` returning None: no move).

        A move that stops an agent stands even if it cannot be recorded (stopping is the safe side). One that
        `releases` it (approve, resume, reset) is undone if it cannot be recorded, and raises AuditError: an
        agent must not be let act again by a decision the trail does not show."""
        with _MOVE_LOCKS[hash((id(self._state), agent_id)) % len(_MOVE_LOCKS)]:  # per store and agent
            return self._move_now(agent_id, step, actor, releasing=releasing)

    def _move_now(
        self, agent_id: str, step: Callable[[AgentState], AgentState | None], actor: str, *, releasing: bool
    ) -> AgentState:
        for _ in range(MOVE_ATTEMPTS):
            old = self._state.get_state(agent_id)
            new = step(old)
            if new is None:
                return old
            if self._state.replace_state(agent_id, old, new):
                detail: dict[str, str | None] = {"from": old.status.value, "to": new.status.value, "reason": new.reason}
                if new.approved_fingerprint is not None:
                    detail["approved"] = old.pending_action_id
                fields = {
                    "kind": "killswitch",
                    "actor": actor,
                    "outcome": new.status.value,
                    "action_id": new.pending_action_id,
                    "detail": detail,
                }
                try:
                    self._record(agent_id, fields, strict=releasing)
                except AuditError as exc:
                    if not self._state.replace_state(agent_id, new, old):
                        raise AuditError(f"{exc}; the agent was moved by someone else since") from exc
                    raise AuditError(f"{exc}; so agent {agent_id!r} was not {new.reason}") from exc
                return old
        raise StateError(f"the state of agent {agent_id!r} kept changing under {MOVE_ATTEMPTS} attempts to move it")


def _from_paused(agent_id: str, verb: str, actor: str, *, grant: bool) -> Callable[[AgentState], AgentState]:
    """The move of a reviewer's `verb` (approve, resume): only a paused agent may make it; with `grant`, the
    action that paused it may run once."""

    def move(old: AgentState) -> AgentState:
        if old.status is not AgentStatus.PAUSED:
            hint = " use reset() to revive a terminated agent" if old.status is AgentStatus.TERMINATED else ""
            raise StateError(f"cannot {verb} agent {agent_id!r}: it is {old.status.value}, not paused;{hint}")
        approved = old.pending_fingerprint if grant else None
        return AgentState(AgentStatus.RUNNING, f"{verb}d", actor, approved_fingerprint=approved)

    return move
