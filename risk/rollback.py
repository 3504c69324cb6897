"""Undoing what an agent did: file snapshots, database savepoints and compensations, run newest first.

Every allowed action may leave an `UndoStep`. Rolling an agent back runs the steps inside the window in
reverse order, once each: a step that was undone stays undone when rollback runs again, and a step that
failed is reported, never hidden.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    UNDONE = "undone"
    FAILED = "failed"
    IRREVERSIBLE = "irreversible"


_started = itertools.count()


@dataclass
class UndoStep:
    action_id: str
    agent_id: str
    ts: float
    description: str
    undo: Callable[[], None] | None
    status: StepStatus = StepStatus.PENDING
    error: str = ""
    # Steps are undone in the reverse of the order their actions started, whenever each was registered: a tool
    # registers its step once it returns, and of two that overlap, the one started first may return last.
    started: int = field(default_factory=lambda: next(_started))


@dataclass(frozen=True, slots=True)
class StepResult:
    action_id: str
    description: str
    status: StepStatus
    error: str = ""


@dataclass(frozen=True, slots=True)
class RollbackReport:
    """What one rollback did, step by step. `complete` is False if anything could not be undone."""

    agent_id: str
    steps: tuple[StepResult, ...] = field(default_factory=tuple)

    @property
    def complete(self) -> bool:
        return all(s.status is StepStatus.UNDONE for s in self.steps)

    @property
    def not_undone(self) -> tuple[StepResult, ...]:
        return tuple(s for s in self.steps if s.status is not StepStatus.UNDONE)


_RETRYABLE = frozenset({StepStatus.PENDING, StepStatus.FAILED})


class UndoLog:
    """The undo steps of every agent in this process, in the order their actions ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[str, list[UndoStep]] = {}  # per agent, in the order their actions started
        self._undoing: set[int] = set()  # ids of the steps a rollback under way has taken

    def register(self, step: UndoStep) -> None:
        with self._lock:
            bisect.insort(self._steps.setdefault(step.agent_id, []), step, key=lambda s: s.started)

    def rollback(self, agent_id: str, since: float, on_step: Callable[[UndoStep], None]) -> RollbackReport:
        """Undo `agent_id`'s pending steps newer than `since`, newest first; `on_step` sees each result.

        A step is taken by one rollback at a time: one running alongside (a reviewer's and a ROLLBACK-mode
        trip, say) leaves it to the first, so no undo runs twice."""
        with self._lock:
            steps = [
                s for s in self._steps.get(agent_id, [])
                if s.ts >= since and s.status in _RETRYABLE and id(s) not in self._undoing
            ]  # fmt: skip
            self._undoing.update(map(id, steps))
        results = []
        try:
            for step in reversed(steps):
                if step.undo is None:
                    step.status = StepStatus.IRREVERSIBLE
                    step.error = "no undo was recorded for this action"
                else:
                    try:
                        step.undo()
                        step.status, step.error = StepStatus.UNDONE, ""
                    except Exception as exc:  # an undo that fails is reported, and the others still run
                        step.status, step.error = StepStatus.FAILED, f"{type(exc).__name__}: {exc}"
                results.append(StepResult(step.action_id, step.description, step.status, step.error))
                on_step(step)
        finally:
            with self._lock:
                self._undoing.difference_update(map(id, steps))
                # Undone and irreversible steps are finished; a failed one is tried again by the next rollback.
                self._steps[agent_id] = [s for s in self._steps.get(agent_id, []) if s.status in _RETRYABLE]
        return RollbackReport(agent_id, tuple(results))


def snapshot_file(path: str | os.PathLike[str], snapshot_dir: Path) -> tuple[Callable[[], None] | None, str]:
    """Keep a copy of `path` as it is now and return an undo that puts it back, with a description.

    A file that does not exist yet is undone by deleting it; a directory cannot be snapshotted (None).
    """
    target = Path(path)
    if target.is_dir():
        return None, f"directory {target} (not snapshotted)"
    if not target.exists():

        def remove() -> None:
            target.unlink(missing_ok=True)

        return remove, f"remove {target}, which did not exist before"
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    copy = snapshot_dir / uuid.uuid4().hex
    shutil.copy2(target, copy)

    def restore() -> None:
        # Copy then rename, so a crash mid-restore never leaves a half-written file.
        staging = target.with_name(f".{target.name}.risk-restore")
        shutil.copy2(copy, staging)
        os.replace(staging, target)

    return restore, f"restore {target} to its earlier contents"


def savepoint(connection: Any, name: str) -> Callable[[], None]:
    """Open a savepoint on a DB-API connection (SQLite, PostgreSQL, MySQL) and return the undo that rolls
    back to it. Work committed past the savepoint can no longer be undone: the undo then fails and says so."""
    quoted = '"' + name.replace('"', "") + '"'
    _execute(connection, f"SAVEPOINT {quoted}")

    def rollback_to() -> None:
        _execute(connection, f"ROLLBACK TO SAVEPOINT {quoted}")
        _execute(connection, f"RELEASE SAVEPOINT {quoted}")

    return rollback_to


def _execute(connection: Any, sql: str) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()
