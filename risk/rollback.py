"""Undoing what an agent did: file snapshots, database savepoints and compensations, run newest first.

Every allowed action may leave an `UndoStep`. Rolling an agent back runs the steps inside the window in
reverse order, once each: a step that was undone stays undone when rollback runs again, and a step that
failed is reported, never hidden.

A file's step outlives its process: beside its snapshot is a record of the step (`<snapshot>.step`, JSON),
so that after a crash or a restart a guard asked to roll the agent back takes over the steps the ended
process left (`adopt_snapshots`). Savepoints and compensations live and end with their process.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import fcntl
import itertools
import json
import logging
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    UNDONE = "undone"
    FAILED = "failed"
    IRREVERSIBLE = "irreversible"


_started = itertools.count()
# Steps taken over from ended processes come before every step of this one (their actions ran earlier):
# numbered down from -1, the newest first.
_adopted = itertools.count(-1, -1)


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
_UNSETTLED = object()  # a file undo whose action is not over yet
_UNSEEN = object()  # a file state not given: read the file now

log = logging.getLogger("risk")


class UndoLog:
    """The undo steps of every agent in this process, in the order their actions ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[str, list[UndoStep]] = {}  # per agent, in the order their actions started
        self._undoing: set[int] = set()  # ids of the steps a rollback under way has taken
        # Per agent, where the action counter stood when its last rollback began: a step of an action started
        # before that and registered after (its tool was still running) missed that rollback.
        self._rolled_back_at: dict[str, int] = {}

    def register(self, step: UndoStep, *, keep_since: float | None = None) -> bool:
        """Add `step`; with `keep_since`, forget the steps of every agent older than that (no rollback reaches
        them any more) and delete their snapshots, so a long run keeps neither growing. True if a rollback of
        the agent began while the step's action ran: it missed the step, which the caller should undo now."""
        with self._lock:
            bisect.insort(self._steps.setdefault(step.agent_id, []), step, key=lambda s: s.started)
            missed = step.started < self._rolled_back_at.get(step.agent_id, -1)
            expired: list[UndoStep] = []
            if keep_since is not None:
                for agent, steps in list(self._steps.items()):
                    kept = [s for s in steps if s.ts >= keep_since or id(s) in self._undoing]
                    if len(kept) < len(steps):
                        expired += [s for s in steps if s.ts < keep_since and id(s) not in self._undoing]
                        if kept:
                            self._steps[agent] = kept
                        else:
                            del self._steps[agent]
        for gone in expired:
            discard(gone)
        return missed

    def rollback(
        self, agent_id: str, since: float, on_step: Callable[[UndoStep], None], *, only: UndoStep | None = None
    ) -> RollbackReport:
        """Undo `agent_id`'s pending steps newer than `since` (or just `only`), newest first; `on_step` sees each
        result.

        A step is taken by one rollback at a time: one running alongside (a reviewer's and a ROLLBACK-mode
        trip, say) leaves it to the first, so no undo runs twice."""
        with self._lock:
            if only is None:
                self._rolled_back_at[agent_id] = next(_started)
            candidates = self._steps.get(agent_id, []) if only is None else [only]
            steps = [s for s in candidates if s.ts >= since and s.status in _RETRYABLE and id(s) not in self._undoing]
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
                        discard(step)
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


class SnapshotUndo:
    """The undo of a file action: put back a copy kept under the snapshots folder (or remove the file the action
    made, or copy back a folder it removed). `settle` notes the file as the action left it; the undo then
    refuses (raises FileChanged) if the file changed since, so a rollback never throws away, or brings back
    over, what someone else wrote after. `discard` deletes the copy and its record, once the step is undone or
    past every rollback's window.

    Everything the undo needs is `plan` (JSON: see `_restorer`) and the snapshot at `stem`; `keep` writes the
    plan, with the step, to the record at `stem.step`, for a process that takes the step over (`adopt_snapshots`).
    """

    def __init__(self, plan: dict[str, Any], stem: Path, *, before: Any = _UNSEEN, left: Any = _UNSETTLED) -> None:
        self.plan = plan
        self.stem = stem
        self.target = Path(plan["target"])
        self.copy = stem if plan["kind"] != "remove" else None
        # The folder the undo acts in, by identity (none for a folder's copy, put back where it was).
        self._folder = _Folder(Path(plan["folder"][0]), tuple(plan["folder"][1:])) if "folder" in plan else None
        self._restore = _restorer(plan, stem, self._folder)
        self._before = _file_state(self.target) if before is _UNSEEN else before  # what the undo puts back
        self._left = left
        self._step: UndoStep | None = None  # the step whose record is kept
        self._discarded = False

    @property
    def record(self) -> Path:
        return self.stem.with_name(f"{self.stem.name}.step")

    def keep(self, step: UndoStep) -> None:
        """Write the record of `step` (whose undo this is), once; `settle` writes it again."""
        if self._step is None:
            self._step = step
            self._write_record()

    def settle(self) -> None:
        """Note the file as it is now, once: the first call is when the action was over."""
        if self._left is _UNSETTLED:
            self._left = _file_state(self.target)
            if self._step is not None:
                self._write_record()

    def __call__(self) -> None:
        if self._folder is not None:  # a moved or replaced folder is the first thing to say
            with self._folder.opened():
                pass
        # As the action left it, as this undo would leave it, or as the last undo of the file left it (that of a
        # later or overlapping action on it, such as a watched write inside a guarded tool): anything else is a
        # change someone made since, which the undo would lose.
        now = _file_state(self.target)
        with _UNDONE_LOCK:
            undone = _UNDONE.get(self.target, _UNSETTLED)
        if self._left is not _UNSETTLED and now not in (self._left, self._before, undone):
            raise FileChanged(f"{self.target} changed after the action: left as it is, not to lose that change")
        self._restore()
        with _UNDONE_LOCK:
            _UNDONE[self.target] = _file_state(self.target)

    def discard(self) -> None:
        self._discarded = True  # a settle after (the watch block ending) writes no record again
        with contextlib.suppress(FileNotFoundError):
            self.record.unlink()
        if self.copy is not None:
            _remove_copy(self.copy)

    def _write_record(self) -> None:
        """Write the record; one that cannot be written is logged: the step still works in this process."""
        step = self._step
        if step is None or self._discarded:
            return
        kept = {
            "agent_id": step.agent_id,
            "action_id": step.action_id,
            "ts": float(step.ts),
            "started": step.started,
            "description": step.description,
            "plan": self.plan,
            "before": self._before,
            "left": "unsettled" if self._left is _UNSETTLED else self._left,
        }
        data = json.dumps(kept).encode()
        try:
            fd = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                # Over what was there, padded with spaces to its length, in one write that a crash of the process
                # cannot cut in two. Not truncated, nor written beside and renamed over: ext4 then flushes the
                # file to disk at close, which made the record cost ten times as much.
                os.pwrite(fd, data.ljust(os.fstat(fd).st_size), 0)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("the undo of %s is not kept beyond this process: %s", step.action_id, exc)


def _remove_copy(copy: Path) -> None:
    """Delete a snapshot: a file's copy, or a folder's (the watch's undo of an rmtree)."""
    if copy.is_dir() and not copy.is_symlink():
        shutil.rmtree(copy, ignore_errors=True)
    else:
        copy.unlink(missing_ok=True)


_UNDONE: dict[Path, tuple[int, int] | None] = {}  # each file an undo put back, as it left it
_UNDONE_LOCK = threading.Lock()


def _file_state(path: Path) -> tuple[int, int] | None:
    """Size and modification time, or None for no file: what a later write changes, and a restore brings back
    (it keeps the snapshot's times), so a file restored by another rollback reads as it was."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_size, found.st_mtime_ns


class FileChanged(OSError):
    """A file an undo would restore or remove was changed after the action it undoes."""


def settle(undo: Callable[[], None] | None) -> None:
    """Note a file undo's file as its action left it (see SnapshotUndo); other undos have nothing to note."""
    if isinstance(undo, SnapshotUndo):
        undo.settle()


def keep(step: UndoStep) -> None:
    """Keep the record of a file undo's step beside its snapshot, so the step outlives this process (see
    `adopt_snapshots`); other undos live only in it."""
    if isinstance(step.undo, SnapshotUndo):
        step.undo.keep(step)


def discard(step: UndoStep) -> None:
    """Delete the snapshot a step keeps, if any: for a step of an action that will not run."""
    if isinstance(step.undo, SnapshotUndo):
        with contextlib.suppress(OSError):
            step.undo.discard()


def snapshot_file(path: str | os.PathLike[str], snapshot_dir: Path) -> tuple[Callable[[], None] | None, str]:
    """Keep a copy of the file `path` reaches now and return an undo that puts it back, with a description.

    `path` is resolved as the OS opens it, now: against the working directory and through every symlink (a
    write through a link changes its target, which is what is restored). A file that does not exist yet is
    undone by deleting it; a directory cannot be snapshotted (None). The copy is readable by this user alone.

    The undo acts inside the folder the file was in when the copy was made, and fails (so the rollback reports
    it) if that folder was moved or replaced since, by a symlink say: it never writes or deletes elsewhere. It
    writes the contents to a new file of a random name there, with the file's owner, mode and times, and renames
    it over the file: a planted link cannot redirect the write, and a crash leaves no half-written file.
    """
    target = Path(os.path.realpath(path))
    if target.is_dir():
        return None, f"directory {target} (not snapshotted)"
    try:
        folder = os.stat(target.parent)
    except OSError as exc:
        return None, f"{target}: its folder cannot be read ({exc.strerror}; not snapshotted)"
    plan: dict[str, Any] = {
        "target": str(target),
        "folder": [str(target.parent), folder.st_dev, folder.st_ino],
    }
    if not target.exists():
        plan["kind"] = "remove"
        return SnapshotUndo(plan, new_copy(snapshot_dir)), f"remove {target}, which did not exist before"
    before = os.stat(target)
    copy = new_copy(snapshot_dir)
    try:
        with target.open("rb") as source, os.fdopen(os.open(copy, _NEW_FILE, 0o600), "wb") as kept:
            shutil.copyfileobj(source, kept)
    except BaseException:  # a full disk, say: a partial copy restores nothing, and would fill it for good
        copy.unlink(missing_ok=True)
        raise
    plan.update(
        kind="file",
        owner=[before.st_uid, before.st_gid],
        mode=stat.S_IMODE(before.st_mode),
        times=[before.st_atime_ns, before.st_mtime_ns],
    )
    return SnapshotUndo(plan, copy), f"restore {target} to its earlier contents"


def snapshot_tree(path: str, snapshot_dir: Path) -> tuple[Callable[[], None] | None, str]:
    """Keep a copy of the folder `path` and everything in it, and return an undo that copies it back."""
    if os.path.islink(path) or not os.path.isdir(path):
        return None, f"{path} is not a folder (rmtree removes nothing)"
    copy = new_copy(snapshot_dir)
    shutil.copytree(path, copy, symlinks=True)
    return SnapshotUndo({"kind": "tree", "target": path}, copy), f"restore the folder {path} and everything in it"


def _restorer(plan: dict[str, Any], copy: Path, folder: _Folder | None) -> Callable[[], None]:
    """What puts back the file (or folder) `plan` describes, from the copy at `copy`, acting inside `folder`.
    `plan` holds, by its kind: `remove` (the action made the file: delete it), `file` (restore the copy, with
    the owner, mode and times of the file then) or `tree` (copy the folder back); `target`, and for a file the
    folder it was in (its path, device and inode)."""
    target = Path(plan["target"])
    if folder is None:  # a tree

        def copy_back() -> None:
            shutil.copytree(copy, target, symlinks=True, dirs_exist_ok=True)

        return copy_back
    if plan["kind"] == "remove":

        def remove() -> None:
            with folder.opened() as fd, contextlib.suppress(FileNotFoundError):
                os.unlink(target.name, dir_fd=fd)

        return remove
    uid, gid = plan["owner"]
    mode = plan["mode"]
    atime_ns, mtime_ns = plan["times"]

    def fill(out: Any) -> None:
        """Give the open file `out` the snapshot's contents, owner and mode."""
        with copy.open("rb") as source:
            shutil.copyfileobj(source, out)
        out.flush()
        with contextlib.suppress(PermissionError):  # only root gives a file to another owner
            os.fchown(out.fileno(), uid, gid)
        os.fchmod(out.fileno(), mode)  # after the owner: chown drops setuid

    def restore() -> None:
        with folder.opened() as fd:
            with contextlib.suppress(FileNotFoundError):
                now = os.stat(target.name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISREG(now.st_mode) and now.st_nlink > 1:
                    # A file with other names (hard links): rewritten in place, or the other names would keep
                    # the agent's contents. Not atomic, as no rename can keep the links.
                    with os.fdopen(os.open(target.name, _EXISTING_FILE, dir_fd=fd), "wb") as out:
                        fill(out)
                    os.utime(target.name, ns=(atime_ns, mtime_ns), dir_fd=fd)
                    return
            staging = f".risk-{uuid.uuid4().hex[:12]}"  # short: a long file name leaves room for it
            try:
                with os.fdopen(os.open(staging, _NEW_FILE, 0o600, dir_fd=fd), "wb") as out:
                    fill(out)
                os.utime(staging, ns=(atime_ns, mtime_ns), dir_fd=fd)
                os.replace(staging, target.name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(staging, dir_fd=fd)
                raise

    return restore


def new_copy(snapshot_dir: Path) -> Path:
    """A path for a new snapshot in `snapshot_dir` (made if need be, readable by this user only), named after this
    process's claim on the folder (see `sweep_snapshots`)."""
    with _claims_lock:
        claim = _claims.get(snapshot_dir)
        if claim is None or claim[0] != os.getpid():  # a forked child makes a claim of its own
            claim = _claims[snapshot_dir] = (os.getpid(), _claim(snapshot_dir))
    return snapshot_dir / f"{claim[1]}-{uuid.uuid4().hex}"


def _private_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # made by an earlier version, or by hand, open to others
        folder.chmod(0o700)


def _owners(snapshot_dir: Path) -> Path:
    return snapshot_dir.with_name(f"{snapshot_dir.name}-owners")


def _claim(snapshot_dir: Path) -> str:
    """A new token, whose file among the owners of `snapshot_dir` this process holds locked for as long as it
    lives: its snapshots are named after it. The file is locked before it gets its name, so no sweep ever finds
    it unlocked."""
    _private_folder(snapshot_dir)
    owners = _owners(snapshot_dir)
    _private_folder(owners)
    token = uuid.uuid4().hex[:16]
    fd = os.open(owners / f".{token}", _NEW_FILE, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # released by the OS when the process ends, however it ends
    os.rename(owners / f".{token}", owners / token)
    _held.append(fd)  # open for the life of the process
    return token


_claims: dict[Path, tuple[int, str]] = {}  # snapshot folder -> (pid, token) of this process's claim on it
_claims_lock = threading.Lock()
_held: list[int] = []


def sweep_snapshots(snapshot_dir: Path, keep_since: float) -> None:
    """Delete the snapshots in `snapshot_dir` that processes which ended left, except those of steps newer than
    `keep_since`, which a rollback of their agent takes over (`adopt_snapshots`): the rest no rollback reaches,
    and they are copies of what the agents changed (records, secrets), kept nowhere else's retention. A
    snapshot of a live process, and one made by a version that named none (no `-` in its name), stay."""
    names, ended = _left_by_ended(snapshot_dir)
    kept = {name[: -len(".step")] for name, step in _records(snapshot_dir, names, ended) if step["ts"] >= keep_since}
    for name in names:
        token, dash, _ = name.partition("-")
        if dash and token in ended and name.partition(".")[0] not in kept:
            with contextlib.suppress(OSError):
                _remove_copy(snapshot_dir / name)
    owners = _owners(snapshot_dir)
    for token in ended:  # last, so a sweep cut short finds the rest of its snapshots next time
        with contextlib.suppress(OSError):
            (owners / token).unlink()


def adopt_snapshots(snapshot_dir: Path, agent_id: str, since: float) -> list[UndoStep]:
    """The file undo steps of `agent_id` newer than `since` that processes which ended (a crash, a restart)
    left in `snapshot_dir`, made this process's: their snapshots and records are renamed after its claim, so a
    sweep keeps them while it lives, and of two processes taking them over at once only one gets each."""
    names, ended = _left_by_ended(snapshot_dir)
    found = [(n, s) for n, s in _records(snapshot_dir, names, ended) if s["agent_id"] == agent_id and s["ts"] >= since]
    found.sort(key=lambda f: (f[1]["ts"], f[1]["started"]), reverse=True)  # newest first: numbered down from -1
    steps: list[UndoStep] = []
    for name, kept in found:
        old = snapshot_dir / name[: -len(".step")]
        stem = new_copy(snapshot_dir)
        try:  # the snapshot first, as the claim (a sweep keeps it by its record, renamed after)
            if kept["plan"]["kind"] != "remove":
                os.rename(old, stem)
            os.rename(snapshot_dir / name, stem.with_name(f"{stem.name}.step"))
            undo = SnapshotUndo(
                kept["plan"], stem, before=_state(kept["before"]),
                left=_UNSETTLED if kept["left"] == "unsettled" else _state(kept["left"]),
            )  # fmt: skip
        except (OSError, KeyError, TypeError, ValueError) as exc:  # another process took it, or a bad record
            log.warning("undo record %s not taken over: %s", name, exc)
            continue
        step = UndoStep(kept["action_id"], agent_id, kept["ts"], kept["description"], undo, started=next(_adopted))
        keep(step)
        steps.append(step)
    return steps


def _left_by_ended(snapshot_dir: Path) -> tuple[list[str], set[str]]:
    """The names in `snapshot_dir`, and the tokens in them of processes that ended."""
    owners = _owners(snapshot_dir)
    try:  # the snapshots first: a claim made after the listing of its snapshot is then listed too
        names, claims = os.listdir(snapshot_dir), set(os.listdir(owners))
    except FileNotFoundError:
        return [], set()
    ended: set[str] = set()
    for token in claims:
        try:
            fd = os.open(owners / token, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process lives (this one's own claim included)
            pass
        else:
            ended.add(token)
        finally:
            os.close(fd)
    # A snapshot whose owner is gone was being swept, or taken over, when that stopped: its process had ended.
    ended.update(token for token, dash, _ in (name.partition("-") for name in names) if dash and token not in claims)
    return names, ended


def _records(snapshot_dir: Path, names: list[str], ended: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The undo records among `names` left by the `ended` processes that can be read."""
    for name in names:
        if name.endswith(".step") and name.partition("-")[0] in ended:
            try:
                step = json.loads((snapshot_dir / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(step, dict) and all(isinstance(step.get(k), t) for k, t in _RECORD_FIELDS.items()):
                yield name, step


_RECORD_FIELDS = {"agent_id": str, "action_id": str, "ts": float, "started": int, "description": str, "plan": dict}


def _state(kept: Any) -> tuple[int, int] | None:
    """A file state (see `_file_state`) as a record keeps it."""
    return None if kept is None else (int(kept[0]), int(kept[1]))


def link_undo(path: str | os.PathLike[str]) -> tuple[Callable[[], None] | None, str]:
    """The undo of removing the symbolic link `path` (not what it points to): put the link back, in the folder
    it was in (see snapshot_file), unless something took its name since, which is left as it is."""
    # The folder as the OS reaches it (through its links, `..` after them), and the link's own name in it.
    where = Path(os.path.realpath(os.path.dirname(os.fspath(path)))) / os.path.basename(os.fspath(path))
    points_to = os.readlink(where)
    try:
        folder = _Folder(where.parent)
    except OSError as exc:
        return None, f"{where}: its folder cannot be read ({exc.strerror}; the link is not kept)"

    def relink() -> None:
        with folder.opened() as fd:
            if os.path.lexists(folder.path / where.name):
                raise FileChanged(f"{where} was made again after the link was removed: left as it is")
            os.symlink(points_to, where.name, dir_fd=fd)

    return relink, f"put back the link {where} -> {points_to}"


# A file made new, never one that exists already or a link planted under its name; an existing one, not a link.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
_EXISTING_FILE = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW


class FolderChanged(OSError):
    """The folder an undo acts in is no longer the one its snapshot was taken in."""


class _Folder:
    """A folder by identity (device and inode, as it is now unless given), so an undo can tell that it was moved
    or replaced."""

    def __init__(self, path: Path, identity: tuple[int, int] | None = None) -> None:
        self.path = path
        if identity is None:
            found = os.stat(path)
            identity = (found.st_dev, found.st_ino)
        self._identity = identity

    @contextlib.contextmanager
    def opened(self) -> Iterator[int]:
        """A descriptor of the folder, if it is still the same one: what the undo does, it does relative to it."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            found = os.fstat(fd)
            if (found.st_dev, found.st_ino) != self._identity:
                raise FolderChanged(f"{self.path} is no longer the folder it was (moved, or replaced by a link)")
            yield fd
        finally:
            os.close(fd)


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
