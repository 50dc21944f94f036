"""Every process a test starts is owned, killed on every way out, and counted at the end.

A test's processes do not stay in one process group: torchrun starts each rank in a session of its
own, Ray's processes detach, and the control plane's daemons are started by a script that exits.
What they all keep is the environment they inherit. So:

- while the session or a module runs, `ZEROTH_TEST_OWNER` in this process's environment names it,
  and every process started meanwhile, by anything, inherits the name;
- a test's own runs (started by the e2e helpers, or given `tag()`) carry the test's name instead:
  the name in the environment stays the module's, because a module's long-lived helpers (a worker
  pool, a Ray) may start processes lazily during any of its tests, and those are the module's;
- when a scope ends (pass, fail, error, pytest-timeout's alarm, Ctrl-C: its fixture's teardown
  runs on each), every process whose environment carries its name is SIGKILLed, wherever it sits
  in the process tree;
- at the end of the session, `leftovers()` lists every process still carrying the session's name,
  plus every live descendant of pytest (it is a child subreaper, so orphans come back to it even
  when their environment was replaced), and the session fails naming them.

Processes started with an environment of their own must be given `tag()` explicitly; the
descendant check catches them if they are not.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SESSION_VAR = "ZEROTH_TEST_SESSION"
OWNER_VAR = "ZEROTH_TEST_OWNER"
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    name: str
    cmdline: str

    def describe(self) -> str:
        ray = next((p.split("=", 1)[1] for p in self.cmdline.split() if p.startswith(("--session_name=", "--session-name="))), None)
        return f"pid {self.pid} ({self.name}{', Ray session ' + ray if ray else ''}): {self.cmdline[:200]}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone, or a kernel thread
        return b""


def processes() -> list[Proc]:
    """Every live (not zombie) process: pid, parent, name and command line."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read(entry / "stat").decode(errors="replace")
        if not stat:
            continue
        name, _, rest = stat[stat.index("(") + 1:].rpartition(")")
        fields = rest.split()
        if fields[0] in ("Z", "X"):  # exited, not yet reaped: holds no resources
            continue
        cmd = _read(entry / "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
        out.append(Proc(int(entry.name), int(fields[1]), name, cmd))
    return out


def carrying(var: str, value: str) -> list[Proc]:
    """Live processes whose environment has `var=value` (not this one)."""
    needle = f"{var}={value}".encode()
    me = os.getpid()
    return [p for p in processes() if p.pid != me and needle in _read(Path(f"/proc/{p.pid}/environ")).split(b"\0")]


def descendants(root: int | None = None, procs: list[Proc] | None = None) -> list[Proc]:
    """Live processes below `root` (default: this one) in the process tree (of `procs`, a snapshot)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[Proc]] = {}
    for p in processes() if procs is None else procs:
        children.setdefault(p.ppid, []).append(p)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def carrying_with_children(var: str, value: str) -> list[Proc]:
    """`carrying(var, value)` and every process below them, from one snapshot: a process that
    renames itself (setproctitle, as Ray's do) may overwrite the environment that /proc shows."""
    snapshot = processes()
    found = {p.pid: p for p in carrying(var, value)}
    for p in list(found.values()):
        found.update({d.pid: d for d in descendants(p.pid, snapshot)})
    return list(found.values())


def kill_all(procs_of, deadline: float = 30.0) -> list[Proc]:
    """SIGKILL what `procs_of()` lists until it lists nothing (a dying parent may fork once more),
    then waits until every one of them has exited (a killed process is still listed while the
    kernel tears it down); returns what was killed."""
    killed: dict[int, Proc] = {}
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = procs_of()
        if not found:
            break
        for p in found:
            killed.setdefault(p.pid, p)
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    while time.monotonic() < end and {p.pid for p in processes()} & killed.keys():
        time.sleep(0.1)
    return list(killed.values())


_test_owner: str | None = None


@contextmanager
def owned(scope: str, test: bool = False):
    """Processes started inside the block carry a new owner name, and are killed when it ends.
    For a module or the session the name goes in this process's environment (everything started
    inherits it); for a test (`test=True`) only into the environments `tag()` builds."""
    global _test_owner
    value = f"{scope}-{uuid.uuid4().hex[:8]}"
    if test:
        previous, _test_owner = _test_owner, value
    else:
        previous = os.environ.get(OWNER_VAR)
        os.environ[OWNER_VAR] = value
    try:
        yield value
    finally:
        if test:
            _test_owner = previous
        elif previous is None:
            os.environ.pop(OWNER_VAR, None)
        else:
            os.environ[OWNER_VAR] = previous
        kill_all(lambda: carrying_with_children(OWNER_VAR, value))


def current_owner() -> str | None:
    """The name `tag()` gives: the running test's, else the module's or the session's."""
    return _test_owner or os.environ.get(OWNER_VAR)


def tag(env: dict[str, str]) -> dict[str, str]:
    """`env` with this session's name and the current owner's (the running test's) added: for a
    test's own processes, and for a process given an environment of its own."""
    names = {SESSION_VAR: os.environ.get(SESSION_VAR), OWNER_VAR: current_owner()}
    return {**env, **{k: v for k, v in names.items() if v}}


def start_session() -> str:
    """Names this session in the environment and makes pytest a child subreaper."""
    value = uuid.uuid4().hex[:12]
    os.environ[SESSION_VAR] = value
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the environment check alone
        pass
    return value


def leftovers(session: str, grace: float = 10.0) -> list[Proc]:
    """What is still alive at the end of a session: its own processes, by name or by ancestry,
    that have not exited `grace` seconds later (a process may be on its way out when asked)."""
    def alive() -> dict[int, Proc]:
        found = {p.pid: p for p in carrying(SESSION_VAR, session)}
        found.update({p.pid: p for p in descendants()})
        return found

    found = alive()
    end = time.monotonic() + grace
    while found and time.monotonic() < end:
        time.sleep(0.2)
        found = {pid: p for pid, p in alive().items() if pid in found}
    return sorted(found.values(), key=lambda p: p.pid)
