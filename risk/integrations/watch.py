"""Zero-code interception: inside `with guard.watch():` the file, process, socket and SQLite work Python does
becomes guarded actions, through the interpreter's audit hooks (PEP 578).

One audit hook is added to the process the first time a watch starts; Python cannot remove it, so it costs
one context-variable read per audit event while no watch is active. A context variable scopes the watch:
the code inside the `with` block and the asyncio tasks it starts are watched; other threads and code outside
are not. A denied action raises the guard's `GuardDenied` (not an `OSError`, so code that falls back on I/O
errors does not swallow it) before it happens.

What is not intercepted, on purpose:

- the guard's own work (audit writes, snapshots, logging, model loading): the watch is switched off while
  it decides, and an event whose innermost code outside the standard and installed libraries is the guard's
  (`risk`, but not `risk.integrations`) is the guard at work, even when called from inside a watch;
- reads of Python modules (`.py`, `.pyc`, extension modules) under `sys.prefix`, `sys.base_prefix`,
  `sys.exec_prefix` or `sys.base_exec_prefix`, so imports and tracebacks need no policy entry, and the
  import system's own bytecode-cache writes in `__pycache__` folders there;
- `os.devnull`, which holds nothing to read and keeps nothing written;
- in-memory SQLite databases (an `ATTACH` of a file, or a `VACUUM INTO` one, on a connection opened in a
  watch is checked as a connection to that file is);
- the steps of a `shutil.rmtree`, which is checked once for the whole tree, and the `os.posix_spawn` that
  `subprocess` makes for a command it already checked.

>>> import os, tempfile
>>> from risk import ActionType, Guard, GuardDenied
>>> home = tempfile.mkdtemp()
>>> guard = Guard(allowed_action_types=[ActionType.FILE_READ], model=None, online=False,
...               audit=f"sqlite:///{home}/audit.db", home=home)
>>> with guard.watch(agent_id="assistant"):
...     try:
...         open(f"{home}/notes.txt", "w")
...     except GuardDenied as denied:
...         print(denied.decision.outcome.value, denied.decision.reasons[0].code)
blocked action_type_not_allowed
>>> os.path.exists(f"{home}/notes.txt")
False
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import os
import shlex
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.machinery import all_suffixes
from pathlib import Path
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from risk.actions import ActionType, Decision, Outcome, Reason
from risk.errors import ActionDenied, GuardDenied
from risk.resources import MAX_RESOURCE_LENGTH
from risk.rollback import SnapshotUndo, link_undo, snapshot_file, snapshot_tree

if TYPE_CHECKING:
    from risk.guard import Guard

log = logging.getLogger("risk")

Undo = tuple[Callable[[], None] | None, str]

_current: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("risk_watch", default=None)

# Opening with any of these flags can change the file: a write.
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_PREFIXES = tuple({os.path.join(p, "") for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)})
_REAL_PREFIXES = tuple({os.path.join(os.path.realpath(p), "") for p in _PREFIXES})
_MODULE_SUFFIXES = tuple({*all_suffixes(), ".pyc"})
_RISK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")
_INTEGRATIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")
_LIBRARY = (*_PREFIXES, "<frozen ")


def _codes(*functions: Any) -> frozenset[CodeType]:
    return frozenset(f.__code__ for f in functions if f is not None)


# Events raised from these functions carry out an action already checked as a whole: the steps of a tree
# removal (relative names under directory descriptors), and the spawn subprocess makes for a checked Popen.
_DELEGATED = _codes(
    shutil.rmtree,
    getattr(shutil, "_rmtree_safe_fd", None),
    getattr(shutil, "_rmtree_unsafe", None),
    getattr(subprocess.Popen, "_posix_spawn", None),
)
# The import system writes bytecode caches through this function.
_IMPORT_SYSTEM = sys.modules.get("_frozen_importlib_external")
_WRITE_BYTECODE = _codes(getattr(_IMPORT_SYSTEM, "_write_atomic", None))
# The import system's own bytecode writes go through SourceFileLoader.set_data; py_compile and compileall call
# _write_atomic directly, with any file name.
_SET_DATA = _codes(getattr(getattr(_IMPORT_SYSTEM, "SourceFileLoader", None), "set_data", None))


@contextmanager
def watch(guard: Guard, agent_id: str | None = None, *, session_id: str | None = None) -> Iterator[Watch]:
    """Check the file, process, socket and SQLite work done in this context as actions of `agent_id`."""
    install()
    active = Watch(guard, agent_id, session_id)
    token = _current.set(active)
    _open_watches.append(active)
    try:
        yield active
    finally:
        _open_watches.remove(active)
        _current.reset(token)
        for undo in active.unsettled.values():  # the files as the block left them: a later change is kept
            undo.settle()


_install_lock = threading.Lock()
_installed = False
# Every watch open in this process, in any thread, latest last (list appends and removals hold the GIL: no lock,
# which a fork could leave held in the child).
_open_watches: list[Watch] = []


def install() -> None:
    """Add the audit hook to this process, once: Python offers no way to remove it."""
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_audit_hook)
            _check_multiprocessing_spawns()
            _authorize_sqlite_connections()
            os.register_at_fork(after_in_child=_watch_forked_child)
            _installed = True


def _watch_forked_child() -> None:
    """In a child forked while a watch is open anywhere in the parent, put a watch in the one thread the child
    has, so its actions are denied (`forked_process`) like those of a child forked inside the watch: a fork-method
    `multiprocessing.Pool` replaces a dead worker from a thread of its own, which carries no watch, and that
    worker ran unwatched."""
    if _current.get() is None and _open_watches:
        _current.set(_open_watches[-1])


def _check_multiprocessing_spawns() -> None:
    """Make multiprocessing's new interpreters (the spawn and forkserver start methods, its resource tracker)
    a checked process spawn.

    They start through `_posixsubprocess.fork_exec`, which raises no audit event, from
    `multiprocessing.util.spawnv_passfds`, which multiprocessing calls through its module: wrapping that
    function is the one place a watch can see them start.
    """
    import multiprocessing.util as util

    spawn = util.spawnv_passfds
    if getattr(spawn, "_risk_checked", False):
        return

    def spawnv_passfds(path: Any, args: Any, passfds: Any) -> Any:
        active = _current.get()
        if active is not None:
            active.intercept("multiprocessing.spawnv_passfds", (path, args), sys._getframe(1))
        return spawn(path, args, passfds)

    spawnv_passfds._risk_checked = True  # type: ignore[attr-defined]
    util.spawnv_passfds = spawnv_passfds


# Set while the wrapper _authorize_sqlite_connections puts in place opens a connection.
_connecting: contextvars.ContextVar[bool] = contextvars.ContextVar("risk_sqlite_connecting", default=False)
# Frames of the watch's own wrappers, which stand between an event and the code that called for it.
_WRAPPERS: set[CodeType] = set()


def _authorize_sqlite_connections() -> None:
    """Give the SQLite connections opened in a watch the authorizer that checks their ATTACH statements.

    The `sqlite3.connect/handle` event comes before the connection can take an authorizer, so `sqlite3.connect`
    (and `sqlite3.dbapi2.connect`, the same function) is wrapped to set it once the connection is made; a
    connection made otherwise inside a watch is denied (see Watch._on_sqlite_handle).
    """
    import sqlite3.dbapi2 as dbapi2

    connect: Callable[..., sqlite3.Connection] = sqlite3.connect
    if getattr(connect, "_risk_checked", False):
        return

    def authorized_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        token = _connecting.set(True)
        try:
            connection = connect(*args, **kwargs)
        finally:
            _connecting.reset(token)
        if _current.get() is not None and not _guard_at_work(sys._getframe(1)):
            connection.set_authorizer(_authorize_attach)
        return connection

    authorized_connect._risk_checked = True  # type: ignore[attr-defined]
    _WRAPPERS.add(authorized_connect.__code__)
    authorized_connect.__doc__ = connect.__doc__
    sqlite3.connect = dbapi2.connect = authorized_connect  # type: ignore[assignment]


class Watch:
    """One active watch: the guard that decides, the agent it speaks for, and the names its lookups resolved."""

    def __init__(self, guard: Guard, agent_id: str | None, session_id: str | None) -> None:
        self.guard = guard
        self.agent_id = agent_id
        self.session_id = session_id
        self.pid = os.getpid()
        # Address -> host name, from lookups this watch allowed: a connection to it is checked under the name.
        self._names: dict[str, str] = {}
        # Per file, the undo of the block's latest action on it: settled when the next one begins, or the block ends.
        self.unsettled: dict[Path, SnapshotUndo] = {}

    def intercept(self, event: str, args: tuple[Any, ...], caller: FrameType) -> None:
        """Check the action behind one audit event; raise the guard's denial to stop it."""
        if (caller.f_code in _DELEGATED and event != "shutil.rmtree") or _guard_at_work(caller):
            return
        token = _current.set(None)  # the guard's own file, socket and SQLite work must not come back here
        try:
            _HANDLERS[event](self, args, caller)
        finally:
            _current.reset(token)

    # ---- deciding ------------------------------------------------------------------------------

    def _check(self, atype: ActionType, resource: str, payload: dict[str, Any] | None) -> Decision:
        if os.getpid() != self.pid:
            # A forked child shares the parent's audit connection, which must not cross a fork: deny. What needs
            # no check (a module read, os.devnull) goes on, so the child can start and report its errors.
            raise self._refuse(atype, resource, "forked_process", _FORKED)
        if len(resource) > MAX_RESOURCE_LENGTH:
            message = f"the resource is {len(resource)} characters long, over the limit of {MAX_RESOURCE_LENGTH}"
            raise self._refuse(atype, resource, "resource_too_long", message)
        decision = self.guard.check(atype, resource, payload, agent_id=self.agent_id, session_id=self.session_id)
        if not decision.allowed:
            raise GuardDenied.for_decision(decision)
        return decision

    def _check_file(self, atype: ActionType, path: str, payload: dict[str, Any] | None) -> Decision:
        """Check an action of a type the guard does not resolve symlinks for (a permission change, a database) on
        the file `path` names, and on the file it leads to: a link the agent made to a blocked file was judged by
        its own name, so chmod and sqlite3.connect through it reached the file."""
        decision = self._check(atype, path, payload)
        real = os.path.realpath(path)
        return decision if real == path else self._check(atype, real, {**(payload or {}), "through": path})

    def _refuse(self, atype: ActionType, resource: str, code: str, message: str) -> ActionDenied:
        """A denial of an action the guard cannot be asked about; logged, since no audit record can say why."""
        shown = resource if len(resource) <= 200 else resource[:200] + "..."
        log.error("watch denied %s on %r: %s", atype.value, shown, message)
        agent = self.agent_id or self.guard.agent_id
        reasons = (Reason(code, message, 1.0, True),)
        return ActionDenied(Decision(os.urandom(16).hex(), agent, False, Outcome.BLOCKED, 1.0, reasons, atype, shown))

    def _keep(self, decision: Decision, undo: Undo) -> None:
        """Register how to undo an allowed action for rollback."""
        if isinstance(undo[0], SnapshotUndo):  # an earlier action on the file is over once another begins
            earlier = self.unsettled.pop(undo[0].target, None)
            if earlier is not None:
                earlier.settle()
            self.unsettled[undo[0].target] = undo[0]
        self.guard.register_undo(decision.action_id, undo[0], undo[1], agent_id=decision.agent_id)

    def _irreversible(self, decision: Decision) -> None:
        self._keep(decision, (None, f"{decision.action_type.value} on {decision.resource} has no undo"))

    @property
    def _snapshots(self) -> Path:
        return self.guard.home / "snapshots"

    # ---- files ---------------------------------------------------------------------------------

    def _on_open(self, args: tuple[Any, ...], caller: FrameType) -> None:
        target, mode, flags = args
        if isinstance(target, int):  # an open descriptor: its file was checked when it was opened
            return
        path = _path(target)
        # Without flags, judge by the mode; with neither, assume a write (the stricter reading).
        writes = (
            bool(flags & _WRITE_FLAGS) if isinstance(flags, int) else not mode or bool(set(str(mode)) & set("wax+"))
        )
        if path == os.devnull or (_library_module(path) if not writes else _bytecode_cache(path, caller)):
            return
        # No payload: the action type says all the flags do, and the rules would only scan it.
        if not writes:
            self._check(ActionType.FILE_READ, path, None)
            return
        decision = self._check(ActionType.FILE_WRITE, path, None)
        self._keep(decision, _file_undo(path, self._snapshots))

    def _on_remove(self, args: tuple[Any, ...], caller: FrameType) -> None:
        path = _path(args[0], args[1])
        decision = self._check(ActionType.FILE_DELETE, path, {"event": "os.remove"})
        # Removing a link removes the link, not its target: the undo puts the link back.
        self._keep(decision, link_undo(path) if os.path.islink(path) else _file_undo(path, self._snapshots))

    def _on_rmdir(self, args: tuple[Any, ...], caller: FrameType) -> None:
        path = _path(args[0], args[1])
        decision = self._check(ActionType.FILE_DELETE, path, {"event": "os.rmdir"})
        self._keep(decision, (lambda: os.makedirs(path, exist_ok=True), f"recreate the folder {path}"))

    def _on_rmtree(self, args: tuple[Any, ...], caller: FrameType) -> None:
        path = _path(args[0], args[1])
        decision = self._check(ActionType.FILE_DELETE, path, {"event": "shutil.rmtree"})
        self._keep(decision, snapshot_tree(path, self._snapshots))

    def _on_rename(self, args: tuple[Any, ...], caller: FrameType) -> None:
        source, target = _path(args[0], args[2]), _path(args[1], args[3])
        if _bytecode_cache(source, caller) and _bytecode_cache(target, caller):
            return
        payload = {"event": "os.rename", "source": source, "target": target}
        # Both names change: the source disappears and the target gets its contents.
        self._check(ActionType.FILE_WRITE, source, payload)
        decision = self._check(ActionType.FILE_WRITE, target, payload)
        # An earlier action on the source is over: noted as it left the file, which the rename's undo brings
        # back (a write then a rename was undone as if someone had changed the file since).
        earlier = self.unsettled.pop(Path(os.path.realpath(source)), None)
        if earlier is not None:
            earlier.settle()
        self._keep(decision, _rename_undo(source, target, self._snapshots))

    def _on_truncate(self, args: tuple[Any, ...], caller: FrameType) -> None:
        if isinstance(args[0], int):  # ftruncate: the descriptor was checked as a write when it was opened
            return
        path = _path(args[0])
        decision = self._check(ActionType.FILE_WRITE, path, {"event": "os.truncate", "length": args[1]})
        self._keep(decision, _file_undo(path, self._snapshots))

    def _on_link(self, args: tuple[Any, ...], caller: FrameType) -> None:
        source, link = _path(args[0], args[2]), _path(args[1], args[3])
        payload = {"event": "os.link", "source": source, "link": link}
        self._check(ActionType.FILE_READ, source, payload)  # a hard link is another way in to the source
        decision = self._check(ActionType.FILE_WRITE, link, payload)
        self._keep(decision, _file_undo(link, self._snapshots))

    def _on_symlink(self, args: tuple[Any, ...], caller: FrameType) -> None:
        link = _path(args[1], args[2])
        decision = self._check(ActionType.FILE_WRITE, link, {"event": "os.symlink", "points_to": _text(args[0])})
        self._keep(decision, _file_undo(link, self._snapshots))

    def _on_chmod(self, args: tuple[Any, ...], caller: FrameType) -> None:
        path = _path(args[0], args[2])
        decision = self._check_file(ActionType.PERMISSION_CHANGE, path, {"event": "os.chmod", "mode": oct(args[1])})
        self._keep(decision, _permission_undo(path))

    def _on_chown(self, args: tuple[Any, ...], caller: FrameType) -> None:
        path = _path(args[0], args[3])
        payload = {"event": "os.chown", "uid": args[1], "gid": args[2]}
        decision = self._check_file(ActionType.PERMISSION_CHANGE, path, payload)
        self._keep(decision, _permission_undo(path))

    # ---- processes -----------------------------------------------------------------------------

    def _spawn(self, event: str, program: Any, argv: Any, cwd: Any = None, env: Any = None) -> None:
        """Check a new program as its command line: the program that runs, then its arguments. The environment
        variables it is given that this process lacks or has otherwise go in the payload, for the rules and the
        trail: `git status` with GIT_CONFIG_* (or LD_PRELOAD, PATH) runs what they say, and its record said only
        `git status`."""
        command = [_text(program), *(_text(a) for a in list(argv)[1:])]
        payload: dict[str, Any] = {"event": event, "argv": command, "cwd": _text(cwd) if cwd is not None else None}
        if isinstance(env, Mapping):
            given = {_text(k): _text(v) for k, v in env.items()}
            payload["env"] = {k: v for k, v in sorted(given.items()) if os.environ.get(k) != v} or None
        self._irreversible(self._check(ActionType.PROCESS_SPAWN, shlex.join(command), payload))

    def _on_popen(self, args: tuple[Any, ...], caller: FrameType) -> None:
        executable, argv, cwd, env = args
        self._spawn("subprocess.Popen", executable, argv, cwd, env)

    def _on_system(self, args: tuple[Any, ...], caller: FrameType) -> None:
        # os.system runs its command through the shell: the same command line as Popen(..., shell=True).
        self._spawn("os.system", "/bin/sh", ["/bin/sh", "-c", args[0]])

    def _on_exec(self, args: tuple[Any, ...], caller: FrameType) -> None:
        self._spawn(event="os.exec", program=args[0], argv=args[1], env=args[2] if len(args) > 2 else None)

    def _on_posix_spawn(self, args: tuple[Any, ...], caller: FrameType) -> None:
        self._spawn(event="os.posix_spawn", program=args[0], argv=args[1], env=args[2] if len(args) > 2 else None)

    def _on_multiprocessing_spawn(self, args: tuple[Any, ...], caller: FrameType) -> None:
        self._spawn(event="multiprocessing.spawnv_passfds", program=args[0], argv=args[1])

    # ---- network -------------------------------------------------------------------------------

    def _on_connect(self, args: tuple[Any, ...], caller: FrameType) -> None:
        sock, address = args
        self._irreversible(self._check_destination("socket.connect", sock, address))

    def _on_sendto(self, args: tuple[Any, ...], caller: FrameType) -> None:
        sock, address = args
        self._irreversible(self._check_destination("socket.sendto", sock, address))

    def _on_sendmsg(self, args: tuple[Any, ...], caller: FrameType) -> None:
        sock, address = args
        if address is None:  # to the connected peer, checked when the socket connected
            return
        self._irreversible(self._check_destination("socket.sendmsg", sock, address))

    def _on_gethostbyname(self, args: tuple[Any, ...], caller: FrameType) -> None:
        # gethostbyname and gethostbyname_ex: the name itself goes out to DNS, a channel of its own.
        name = _text(args[0])
        self._check(ActionType.NETWORK_REQUEST, name, {"event": "socket.gethostbyname"})
        if not _is_address(name):
            self._remember(name, None)

    def _on_gethostbyaddr(self, args: tuple[Any, ...], caller: FrameType) -> None:
        # A reverse lookup, but it takes a host name too, which is looked up first.
        self._check(ActionType.NETWORK_REQUEST, _text(args[0]), {"event": "socket.gethostbyaddr"})

    def _on_getnameinfo(self, args: tuple[Any, ...], caller: FrameType) -> None:
        sockaddr = args[0]
        host, port = (
            (sockaddr[0], sockaddr[1]) if isinstance(sockaddr, tuple) and len(sockaddr) >= 2 else (sockaddr, None)
        )
        self._check(ActionType.NETWORK_REQUEST, _host_port(_text(host), port), {"event": "socket.getnameinfo"})

    def _on_getaddrinfo(self, args: tuple[Any, ...], caller: FrameType) -> None:
        host, port, family, kind, proto = args
        if host is None:  # the local wildcard or loopback address: no lookup leaves the machine
            return
        name = _text(host)
        self._check(ActionType.NETWORK_REQUEST, _host_port(name, port), {"event": "socket.getaddrinfo"})
        if _is_address(name):
            return
        self._remember(name, port, family, kind, proto)

    def _remember(self, name: str, port: Any, family: int = 0, kind: int = 0, proto: int = 0) -> None:
        """Resolve `name` here too (the watch is off), so connections to its addresses are checked under it."""
        try:
            found = socket.getaddrinfo(name, port, family, kind, proto)
        except OSError:
            return  # the lookup itself will fail the same way
        for *_, sockaddr in found:
            self._names[_reached(str(sockaddr[0]))] = name

    def _check_destination(self, event: str, sock: socket.socket, address: Any) -> Decision:
        """Check a connection or datagram to `address`, `host:port` for an IP socket.

        An address is read as the C library reads it, so `127.1`, `2130706433`, `0x7f.1` and (IPv4-mapped)
        `::ffff:127.0.0.1` are all 127.0.0.1: checked as written, each reached a blocked 127.0.0.1. It is checked
        under the name a lookup in this watch resolved to it, if any, and must not be blocked itself either: a
        blocked address was reached through a name that resolves to it (`localhost`). A name the program gives
        the socket itself is checked, then resolved here to see the addresses it leads to. The payload's
        `address` is the address connected to, `written` the host as the program wrote it where that differs,
        and `name` (in the check of an address) the name the connection was made through."""
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
            return self._check(ActionType.NETWORK_REQUEST, _socket_destination(sock, address), {"event": event})
        written, port = _text(address[0]), address[1]
        payload: dict[str, Any] = {"event": event}
        ip = _numeric_address(written, sock.family)
        if ip is None:  # a name the socket resolves itself, without an event
            decision = self._check(ActionType.NETWORK_REQUEST, _host_port(written, port), payload)
            self._check_addresses(self._addresses(written, sock.family), written, port, payload)
            return decision
        payload["address"] = _host_port(ip, port)
        if ip != written:
            payload["written"] = _host_port(written, port)
        name = self._names.get(ip)
        if name is None:
            return self._check(ActionType.NETWORK_REQUEST, _host_port(ip, port), payload)
        self._check_addresses([ip], name, port, payload)
        return self._check(ActionType.NETWORK_REQUEST, _host_port(name, port), payload)

    def _check_addresses(self, addresses: list[str], name: str, port: Any, payload: dict[str, Any]) -> None:
        """Check those of the addresses a connection through `name` reaches that the policy blocks (the allow-list
        speaks of the name), so a blocked address is denied, and recorded under the address."""
        for ip in addresses:
            if self.guard.blocks(destination := _host_port(ip, port)):
                self._check(ActionType.NETWORK_REQUEST, destination, {**payload, "name": _host_port(name, port)})

    def _addresses(self, name: str, family: int) -> list[str]:
        """The addresses `name` resolves to, as the socket resolves it; a name that no longer resolves is denied,
        since where the connection goes cannot be told."""
        try:
            found = socket.getaddrinfo(name, None, family)
        except (OSError, UnicodeError) as exc:
            message = f"{name} did not resolve again to see where the connection goes: {exc}"
            raise self._refuse(ActionType.NETWORK_REQUEST, name, "address_unknown", message) from None
        return list(dict.fromkeys(_reached(str(sockaddr[0])) for *_, sockaddr in found))

    # ---- SQLite --------------------------------------------------------------------------------

    def _on_sqlite_connect(self, args: tuple[Any, ...], caller: FrameType) -> None:
        self._check_database(_text(args[0]), "sqlite3.connect")

    def _on_sqlite_handle(self, args: tuple[Any, ...], caller: FrameType) -> None:
        # SQL statements raise no audit event; the authorizer sqlite3.connect gives the connection sees each ATTACH.
        if not _connecting.get():
            message = "a SQLite connection not made by sqlite3.connect gets no check of the files it attaches"
            raise self._refuse(ActionType.DATABASE_WRITE, _text(type(args[0]).__name__), "sqlite_unwatched", message)

    def _on_sqlite_attach(self, args: tuple[Any, ...], caller: FrameType) -> None:
        if args[0] is None:  # a bound parameter or an expression: SQLite tells the authorizer no name
            message = "ATTACH names its database by a parameter or an expression, which SQLite does not show"
            raise self._refuse(ActionType.DATABASE_WRITE, "ATTACH", "database_unnamed", message)
        self._check_database(_text(args[0]), "sqlite3.attach")

    def _check_database(self, database: str, event: str) -> None:
        """Check opening the database `database` names (a path or a `file:` URI), by a connection or an ATTACH:
        as a write, since SQL statements raise no audit event, or as a query for a `mode=ro` URI. An in-memory
        database is no action."""
        query: dict[str, list[str]] = {}
        if database.startswith("file:"):
            parts = urlsplit(database)
            database, query = unquote(parts.path), parse_qs(parts.query)
        if database in ("", ":memory:") or query.get("mode") == ["memory"]:
            return
        # SQL statements raise no audit event: a connection that may write is checked as a write.
        atype = ActionType.DATABASE_QUERY if query.get("mode") == ["ro"] else ActionType.DATABASE_WRITE
        decision = self._check_file(atype, _path(database), {"event": event})
        if atype is ActionType.DATABASE_WRITE:
            self._irreversible(decision)

    def _on_sqlite_extension(self, args: tuple[Any, ...], caller: FrameType) -> None:
        library = _text(args[1])
        resource = _path(library) if os.sep in library else library
        self._irreversible(self._check(ActionType.CODE_EXECUTION, resource, {"event": "sqlite3.load_extension"}))


_FORKED = "a forked child of a watched process cannot reach its guard safely; start programs with subprocess"

_HANDLERS: dict[str, Callable[[Watch, tuple[Any, ...], FrameType], None]] = {
    "open": Watch._on_open,
    "os.remove": Watch._on_remove,  # os.unlink raises it too
    "os.rmdir": Watch._on_rmdir,
    "shutil.rmtree": Watch._on_rmtree,
    "os.rename": Watch._on_rename,  # os.replace raises it too
    "os.truncate": Watch._on_truncate,
    "os.link": Watch._on_link,
    "os.symlink": Watch._on_symlink,
    "os.chmod": Watch._on_chmod,
    "os.chown": Watch._on_chown,
    "subprocess.Popen": Watch._on_popen,
    "os.system": Watch._on_system,
    "os.exec": Watch._on_exec,
    "os.posix_spawn": Watch._on_posix_spawn,  # os.posix_spawnp raises it too
    "socket.connect": Watch._on_connect,  # connect_ex too
    "socket.sendto": Watch._on_sendto,
    "socket.sendmsg": Watch._on_sendmsg,
    "socket.getaddrinfo": Watch._on_getaddrinfo,
    "socket.gethostbyname": Watch._on_gethostbyname,  # gethostbyname_ex too
    "socket.gethostbyaddr": Watch._on_gethostbyaddr,
    "socket.getnameinfo": Watch._on_getnameinfo,
    "multiprocessing.spawnv_passfds": Watch._on_multiprocessing_spawn,  # called by the wrapper install() puts in place
    "sqlite3.connect": Watch._on_sqlite_connect,
    "sqlite3.connect/handle": Watch._on_sqlite_handle,
    "sqlite3.attach": Watch._on_sqlite_attach,  # not an audit event: raised by _authorize_attach
    "sqlite3.load_extension": Watch._on_sqlite_extension,
}


def _audit_hook(
    event: str,
    args: tuple[Any, ...],
    _active: Callable[[], Watch | None] = _current.get,
    _watched: frozenset[str] = frozenset(_HANDLERS),
) -> None:
    """Called by the interpreter for every audit event in the process; returns at once when no watch is on."""
    active = _active()
    if active is not None and event in _watched:
        active.intercept(event, args, sys._getframe(1))


def _authorize_attach(action: int, name: str | None, *_: Any) -> int:
    """The SQLite authorizer of the connections opened in a watch: an ATTACH opens a database file (VACUUM INTO
    writes its file through one), checked as a connection to it is, by the watch active where the statement
    runs; an in-memory or `mode=ro` connection, not checked as a write, wrote files so. A denied statement fails
    with SQLite's `not authorized` (`authorization denied` for VACUUM INTO)."""
    active = _current.get() if action == sqlite3.SQLITE_ATTACH else None
    if active is None:
        return sqlite3.SQLITE_OK
    try:
        active.intercept("sqlite3.attach", (name,), sys._getframe(1))
    except GuardDenied:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


# ---- which events are whose ----------------------------------------------------------------------


def _guard_at_work(frame: FrameType | None) -> bool:
    """Whether the innermost code outside the standard and installed libraries is the guard's own."""
    while frame is not None:
        if frame.f_code in _WRAPPERS:  # the watch's own wrapper: whose work it is, its caller says
            frame = frame.f_back
            continue
        filename = frame.f_code.co_filename
        if filename.startswith(_RISK_DIR):
            return not filename.startswith(_INTEGRATIONS_DIR)
        if not filename.startswith(_LIBRARY):
            return False
        frame = frame.f_back
    return False


def _library_module(path: str) -> bool:
    """A Python module of the interpreter or its installed packages: reading it is an import or a traceback.
    Judged by the file the path reaches: `sys.prefix/../../secret.py`, or a link there to any file, is not one."""
    if not path.endswith(_MODULE_SUFFIXES):
        return False
    real = os.path.realpath(path)
    return real.startswith(_REAL_PREFIXES) and real.endswith(_MODULE_SUFFIXES)


def _bytecode_cache(path: str, caller: FrameType) -> bool:
    """The import system writing a bytecode cache (or its temporary file) under the interpreter's folders: from
    SourceFileLoader.set_data (py_compile, which writes any file name it is given, is not it), where the path
    really leads."""
    if caller.f_code not in _WRITE_BYTECODE or caller.f_back is None or caller.f_back.f_code not in _SET_DATA:
        return False
    folder, name = os.path.split(os.path.realpath(path))
    return folder.startswith(_REAL_PREFIXES) and os.path.basename(folder) == "__pycache__" and ".pyc" in name


# ---- names ---------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, (str, bytes, os.PathLike)):
        return os.fsdecode(value)
    return str(value)


def _path(target: Any, dir_fd: Any = None) -> str:
    """The absolute path an event names, resolving a descriptor or a name relative to a directory descriptor."""
    if isinstance(target, int):
        return _descriptor_path(target)
    name = _text(target)
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(name):
        name = os.path.join(_descriptor_path(dir_fd), name)
    # Made absolute, never normalized: os.path.abspath would collapse `link/..` before the link is followed,
    # where the OS follows it first, so the policy and the snapshot saw another file than the one written.
    return name if os.path.isabs(name) else os.path.join(os.getcwd(), name)


def _descriptor_path(fd: int) -> str:
    """What an open descriptor points to (Linux /proc); a name no policy pattern expects where that is unknown."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd:{fd}"


def _host_port(host: str, port: Any) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{_text(port)}"


def _socket_destination(sock: socket.socket, address: Any) -> str:
    """The resource a socket address of a family other than IP names: `unix:/path` (`unix:@name` abstract)."""
    if sock.family == getattr(socket, "AF_UNIX", None):
        path = _text(address)
        return "unix:" + (f"@{path[1:]}" if path.startswith("\0") else path)
    return f"{sock.family.name}:{address!r}"


def _numeric_address(host: str, family: int) -> str | None:
    """The address a connection to `host` reaches (`_reached`) when the C library reads it as a number, as a
    socket does: `127.1`, `2130706433` and `0x7f.1` are 127.0.0.1, and so are `0.0.0.0`, `0` and `""` (the
    socket module's name for the unspecified address). None for a host name."""
    if host in ("", "<broadcast>"):  # the socket module's own names for the wildcard and the broadcast address
        return "255.255.255.255" if host else _LOOPBACK["0.0.0.0" if family == socket.AF_INET else "::"]
    try:
        found = socket.getaddrinfo(host, None, family, 0, 0, socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    return _reached(str(found[0][4][0]))


# Where a connection to the unspecified address goes (Linux and the BSDs): checked as written, `0.0.0.0`
# reached a blocked 127.0.0.1.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _reached(ip: str) -> str:
    """The address a connection to `ip` reaches: an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is the IPv4
    address, the unspecified address this host's loopback address; any other is itself."""
    try:
        mapped = ipaddress.IPv6Address(ip).ipv4_mapped
    except ValueError:
        mapped = None
    ip = str(mapped) if mapped is not None else ip
    return _LOOPBACK.get(ip, ip)


def _is_address(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            continue
    return False


# ---- undo ----------------------------------------------------------------------------------------


def _file_undo(path: str, snapshot_dir: Path) -> Undo:
    """A snapshot of the file `path` reaches (through symlinks), or the removal of a file it creates."""
    real = os.path.realpath(path)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return snapshot_file(real, snapshot_dir)
    if not stat.S_ISREG(mode):  # a device or a pipe: copying it could block or never end
        return None, f"{path} is not a regular file (not snapshotted)"
    return snapshot_file(real, snapshot_dir)


def _rename_undo(source: str, target: str, snapshot_dir: Path) -> Undo:
    """Rename back, and give the target what it held before (a file, a symbolic link or an empty folder), if
    anything."""
    restore_target: Callable[[], None] | None = None
    if os.path.islink(target):  # the rename replaces the link itself, not what it points to
        restore_target, described = link_undo(target)
        if restore_target is None:
            return None, f"rename {target} back to {source}, but not {described}"
    elif os.path.isfile(target):
        restore_target, _ = snapshot_file(target, snapshot_dir)
    elif os.path.isdir(target):  # rename onto an empty folder replaces it

        def restore_target() -> None:
            os.makedirs(target, exist_ok=True)

    def undo() -> None:
        os.rename(target, source)
        if restore_target is not None:
            restore_target()

    return undo, f"rename {target} back to {source}"


def _permission_undo(path: str) -> Undo:
    try:
        before = os.stat(path)
    except OSError:
        return None, f"{path} could not be read before its permissions changed"

    def undo() -> None:
        os.chmod(path, stat.S_IMODE(before.st_mode))
        if (os.stat(path).st_uid, os.stat(path).st_gid) != (before.st_uid, before.st_gid):
            os.chown(path, before.st_uid, before.st_gid)

    return undo, f"restore the mode and owner of {path}"
