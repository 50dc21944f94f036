"""Persistent worker processes that run a function with a hard wall-clock timeout.

Why: math-verify's own timeout is `signal.alarm`, which only works on a process's main thread,
and rollout workers are threaded Ray actors; and a pathological sympy simplification can run for
minutes or eat gigabytes. So the work runs in a separate process, on that process's main thread,
and a call that overruns its deadline kills the worker.

Workers are forked from a warm spare, the zygote: one fresh interpreter started with
`subprocess` (no `fork` of a threaded actor, and none of multiprocessing's re-import of the
caller's `__main__`) that imports `preload` once and then only forks. A forked worker is ready
in milliseconds, with every module already imported, so a killed worker is replaced at once from
the zygote and the next call finds it ready (before, each replacement imported sympy again: seconds,
which the next call paid). Calls talk pickles over a socket pair; the zygote takes a socket per
fork over its control socket (`SCM_RIGHTS`).

The deadline of a call (`timeout` seconds) starts when a ready worker takes the call and covers
only the call's own work: waiting for a pool slot (more than `size` overlapping calls) or for a
worker to start (the zygote's first start, or its restart after it died) is never charged to it.
A call times out (`WorkerTimeout`) when no answer came by the deadline — the worker is then killed —
and also when an answer came but was read after the deadline (a busy caller thread), so every call
that returns a value returned it in time. Each process has an address-space limit, so a memory
blow-up is a MemoryError in the worker, not the actor's death. Workers die with the zygote
(`PR_SET_PDEATHSIG`); the zygote ends within a second of its caller's process, which it checks:
that signal follows the thread that started a process, and a zygote may be started by a thread
that ends soon after (the rollout worker's warm-up thread).

Does not defend against: a caller that never calls (the zygote's start-up is paid by the first
call, or by `warm_up`), or a machine so loaded that a fork takes longer than a call's timeout.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

STARTUP_TIMEOUT = 120.0  # seconds for the zygote to import its preload (sympy is slow on 2 cores)
PATH_ENV = "ZEROTH_WORKER_PATH"


class WorkerTimeout(Exception):
    """The call overran its wall-clock limit (its worker was killed if it had not answered)."""


class WorkerError(Exception):
    """The function raised in the worker (its type and message are the message), or the worker died."""


# The zygote's first lines: take the caller's import path, appended (put first, as PYTHONPATH
# would, a project folder named like a standard module, `operator/`, would shadow it), then serve.
BOOTSTRAP = f"""
import json, os, sys
sys.path.extend(p for p in json.loads(os.environ.pop({PATH_ENV!r})) if p not in sys.path)
from {__name__} import zygote
zygote(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
"""

FORK, KILL = b"F", b"K"


def zygote(fd: int, memory_bytes: int, parent: int, preload: list[str]) -> None:
    """The zygote's main loop: import `preload` (`module`, or `module:function` to import and call),
    say ready, then fork workers and kill them on request.

    Only the zygote reaps its workers, and only those it was asked to kill, so a pid the caller
    asks to kill is never a reused one (a worker that died on its own stays a zombie until then).
    It returns once its parent is gone (checked every second), and with it its workers die."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    for name in preload:
        module, _, function = name.partition(":")
        imported = importlib.import_module(module)
        if function:
            getattr(imported, function)()  # warms first-use caches once, for every fork
    control = socket.socket(fileno=fd)
    control.send(b"ready")
    dying: set[int] = set()
    while True:
        readable, _, _ = select.select([control], [], [], 0.5 if dying else 1.0)
        if os.getppid() != parent:
            return
        for pid in list(dying):
            if os.waitpid(pid, os.WNOHANG)[0]:
                dying.discard(pid)
        if not readable:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            return
        if not message:
            return  # the caller closed the pool
        op, pid = message[:1], int.from_bytes(message[1:5], "little")
        if op == FORK and fds:
            child = os.fork()
            if child == 0:
                _worker_main(control, fds[0])
            os.close(fds[0])
            control.send(child.to_bytes(4, "little"))
        elif op == KILL:
            try:
                os.kill(pid, signal.SIGKILL)
                dying.add(pid)
            except ProcessLookupError:
                pass


def _worker_main(control: socket.socket, fd: int) -> None:
    # In the forked child: never return into the zygote's loop, never run its atexit handlers.
    try:
        control.close()
        _die_with_parent(os.getppid())
        serve(Connection(fd))
    finally:
        os._exit(0)


def serve(conn: Connection) -> None:
    """A worker's main loop: say ready, then run calls until the pipe closes."""
    conn.send("ready")
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
            reply = ("error", f"{type(exc).__name__}: {exc}"[:500])
        conn.send(reply)


def _die_with_parent(parent: int) -> None:
    # A worker deep in a sympy computation would outlive a crashed caller until it finished.
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the worker still exits at its next read of the closed pipe
    if os.getppid() != parent:
        os._exit(0)  # the parent died before the prctl


class _Zygote:
    """The warm spare every worker is forked from."""

    def __init__(self, memory_bytes: int, preload: tuple[str, ...]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, **{PATH_ENV: json.dumps([p for p in sys.path if isinstance(p, str)])})
        # -P and cwd="/": nothing shadows the standard library while the zygote starts.
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-c", BOOTSTRAP,
             str(theirs.fileno()), str(memory_bytes), str(os.getpid()), *preload],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd="/", env=env,
        )  # fmt: skip
        theirs.close()
        self.control = ours
        self.lock = threading.Lock()
        self.ready = False

    def wait_ready(self) -> None:
        with self.lock:
            if self.ready:
                return
            readable, _, _ = select.select([self.control], [], [], STARTUP_TIMEOUT)
            if not readable or self.control.recv(16) != b"ready":
                raise WorkerError("worker did not start")
            self.ready = True

    def fork(self) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            with self.lock:
                socket.send_fds(self.control, [FORK], [theirs.fileno()])
                reply = self.control.recv(4)
        except OSError:
            reply = b""  # the zygote died since it was last seen alive
        finally:
            theirs.close()
        if len(reply) != 4:
            ours.close()
            raise WorkerError("the zygote died")
        return _Worker(Connection(ours.detach()), int.from_bytes(reply, "little"), self)

    def kill(self, pid: int) -> None:
        try:
            with self.lock:
                self.control.send(KILL + pid.to_bytes(4, "little"))
        except OSError:
            pass  # the zygote is gone, and its workers died with it

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.control.close()


class _Worker:
    def __init__(self, conn: Connection, pid: int, parent: _Zygote) -> None:
        self.conn, self.pid, self.parent = conn, pid, parent
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            if not self.conn.poll(STARTUP_TIMEOUT) or self.conn.recv() != "ready":
                raise WorkerError("worker did not start")
            self.ready = True

    def call(self, fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
        """`fn(*args)`; the deadline starts here, with a ready worker."""
        deadline = time.perf_counter() + timeout
        self.conn.send((fn, args))
        if not self.conn.poll(max(0.0, deadline - time.perf_counter())):
            raise WorkerTimeout(f"no answer within {timeout:g} s")
        status, value = self.conn.recv()
        if time.perf_counter() > deadline:
            raise _LateAnswer(f"answer read after {timeout:g} s")
        if status != "ok":
            raise WorkerError(value)
        return value

    def alive(self) -> bool:
        # An idle worker has nothing to say: a readable pipe is its EOF (or garbage), so it is done.
        try:
            return self.parent.alive() and not self.conn.poll(0)
        except OSError:
            return False

    def kill(self) -> None:
        self.parent.kill(self.pid)
        self.conn.close()


class _LateAnswer(WorkerTimeout):
    """An answer that came, but after the deadline: a timeout, but the worker is sound."""


class WorkerPool:
    """Up to `size` worker processes forked from one zygote, each with `memory_bytes` of address space."""

    def __init__(self, size: int = 2, memory_bytes: int = 4 << 30, preload: tuple[str, ...] = ()) -> None:
        self._memory_bytes = memory_bytes
        self._preload = preload
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._zygote: _Zygote | None = None
        self.started = 0  # workers started so far; tests and metrics read it
        self.zygotes = 0  # zygotes started so far (one, unless one died)
        self._closed = False
        atexit.register(self.close)

    def _zygote_ready(self) -> _Zygote:
        with self._lock:
            if self._closed:
                raise WorkerError("the worker pool is closed")
            if self._zygote is None or not self._zygote.alive():
                if self._zygote is not None:
                    self._zygote.close()
                self._zygote = _Zygote(self._memory_bytes, self._preload)
                self.zygotes += 1
            zygote = self._zygote
        zygote.wait_ready()  # only a first start (or a restart) waits here: seconds
        return zygote

    def _start(self) -> _Worker:
        worker = self._zygote_ready().fork()
        with self._lock:
            self.started += 1
        return worker

    def _ready_worker(self) -> _Worker:
        """An idle worker if one is alive, else a fresh one; ready, and never on a call's clock."""
        while True:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = self._start()
            elif not worker.alive():
                worker.kill()
                continue
            try:
                worker.wait_ready()
            except (WorkerError, EOFError, OSError):
                worker.kill()
                raise WorkerError("worker did not start") from None
            return worker

    def run(self, fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
        """`fn(*args)` in a worker, returning its value; WorkerTimeout or WorkerError otherwise.

        `fn` must be importable by the worker (a module-level function) and `args` must pickle.
        The `timeout` covers only the call's own work (see the module docstring).
        """
        with self._slots:
            worker = self._ready_worker()
            try:
                value = worker.call(fn, args, timeout)
            except (WorkerError, _LateAnswer):
                self._give_back(worker)
                raise
            except (EOFError, OSError) as exc:  # the worker died (killed, or out of memory in C code)
                self._replace(worker)
                raise WorkerError(f"worker died: {exc!r}") from None
            except BaseException:
                # Timed out or interrupted mid-call: its state is unknown, so it never serves again.
                self._replace(worker)
                raise
            self._give_back(worker)
            return value

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            zygote = self._zygote
        if zygote is None or not zygote.ready or not zygote.alive():
            return  # the zygote died: the next call starts a new one, off its clock
        try:
            replacement = zygote.fork()  # milliseconds: ready before the next call
        except (WorkerError, OSError):
            return
        with self._lock:
            self.started += 1
        self._give_back(replacement)

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def close(self) -> None:
        """Stop the zygote and with it every worker."""
        with self._lock:
            self._closed = True  # a warm-up still on its way starts no zygote after this
            idle, self._idle = self._idle, []
            zygote, self._zygote = self._zygote, None
        for worker in idle:
            worker.conn.close()
        if zygote is not None:
            zygote.close()

    def warm_up(self) -> None:
        """Start the zygote and a worker, so the first real call pays no imports. Best effort: a
        zygote that cannot start, or a pool closed while it starts (a worker stopped soon after it
        began), ends the warm-up quietly; the first real call starts it again and reports a failure."""
        try:
            self.run(_noop, (), STARTUP_TIMEOUT)
        except (WorkerError, OSError, ValueError):  # ValueError: a control socket closed under select
            pass


def _noop() -> None:
    return None
